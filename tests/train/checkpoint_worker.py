"""Subprocess for tests/train/test_checkpointing.py: a fake training loop that checkpoints.

    python checkpoint_worker.py loop DIR NUM_ELEMENTS
        Resumes after the newest good checkpoint in DIR and saves every step (async, keep=2) until
        killed; prints "SAVED <step>" each time `save` returns. The content of step s is
        `step_content(s, NUM_ELEMENTS)`, so the parent can check a restore bit for bit.

    python checkpoint_worker.py sigterm DIR
        Runs steps under a PreemptionGuard; prints "READY" after step 2. On SIGTERM it finishes
        the current step, saves, prints the exit message and exits 0.

    python checkpoint_worker.py multiprocess PROCESS_ID PORT
        One of two jax.distributed processes stepping at different speeds under a PreemptionGuard;
        prints "READY", then "STOP <step>" once JAX's preemption sync point is reached.

The environment (8 fake CPU devices, compilation cache) comes from tests/conftest.py via os.environ.
"""

from __future__ import annotations

import signal
import sys
import time

import numpy as np


def step_content(step: int, num_elements: int) -> dict[str, np.ndarray]:
    """Incompressible per-step arrays (so a save takes real time) plus the step as int32."""
    rng = np.random.default_rng(step)
    return {
        "big": rng.integers(0, 2**32, size=(8, num_elements // 8), dtype=np.uint32),
        "step": np.full((8,), step, np.int32),
    }


def _mesh():
    import jax

    return jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def _loop(directory: str, num_elements: int) -> None:
    import jax

    from tempo_jax.train.checkpointing import Checkpointer

    sharding = jax.NamedSharding(_mesh(), jax.P("data"))
    ckpt = Checkpointer(directory, keep=2)
    latest = ckpt.latest_good_step()
    start = 0 if latest is None else latest + 1
    for step in range(start, start + 500):
        items = {"state": jax.device_put(step_content(step, num_elements), sharding)}
        ckpt.save(step, items, {"step": step, "phase": "tempo", "em": {"m_steps": step * 2}})
        print(f"SAVED {step}", flush=True)
    ckpt.close()


def _sigterm(directory: str) -> None:
    import jax
    import jax.numpy as jnp

    from tempo_jax.train.checkpointing import Checkpointer
    from tempo_jax.train.preemption import PreemptionGuard

    sharding = jax.NamedSharding(_mesh(), jax.P("data"))
    state = {"a": jnp.zeros((8,), jnp.int32), "b": jnp.zeros((8,), jnp.int32)}
    state = jax.device_put(state, sharding)
    ckpt = Checkpointer(directory, keep=2)
    previous = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        for step in range(100_000):
            # A step in two halves with a pause between: a signal landing mid-step must not
            # produce a checkpoint where `a` and `b` disagree.
            state["a"] = state["a"] + 1
            time.sleep(0.01)
            state["b"] = state["b"] + 1
            if step == 2:
                print("READY", flush=True)
            if guard.should_stop():
                path = ckpt.save(step, {"state": state}, {"step": step, "steps_done": step + 1})
                ckpt.wait()
                print(guard.exit_message(f"after step {step}", path), flush=True)
                break
        else:
            raise SystemExit("never received a stop signal")
    ckpt.close()
    print(f"HANDLER_RESTORED {signal.getsignal(signal.SIGTERM) is previous}", flush=True)


def _multiprocess(process_id: int, port: int) -> None:
    import jax

    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id
    )
    from tempo_jax.train.preemption import PreemptionGuard

    before = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        # JAX's preemption notifier owns SIGTERM here; the guard must not replace it.
        print(f"HANDLER_UNTOUCHED {signal.getsignal(signal.SIGTERM) is before}", flush=True)
        for step in range(100_000):
            time.sleep(0.005 * (1 + process_id))  # Hosts at different speeds.
            if step == 5:
                print("READY", flush=True)
            if guard.should_stop():
                print(f"STOP {step}", flush=True)
                break
    jax.distributed.shutdown()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "loop":
        _loop(sys.argv[2], int(sys.argv[3]))
    elif mode == "sigterm":
        _sigterm(sys.argv[2])
    elif mode == "multiprocess":
        _multiprocess(int(sys.argv[2]), int(sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
