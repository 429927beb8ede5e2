"""Checkpointer: exact round trips, resharding restores, keep-N, corruption and crash tolerance,
preemption, and workdir preflight. Runs on the 8 fake CPU devices of tests/conftest.py."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tempo_jax.train.checkpointing import (
    MANIFEST_NAME,
    METADATA_ITEM,
    CheckpointDirectoryError,
    Checkpointer,
    CheckpointError,
    CorruptCheckpointError,
    MissingItemError,
    check_writable,
    pytree_nbytes,
)
from tempo_jax.train.preemption import PreemptionGuard

_HERE = pathlib.Path(__file__).resolve().parent
_ROOT = _HERE.parent.parent
_WORKER = _HERE / "checkpoint_worker.py"
_spec = importlib.util.spec_from_file_location("checkpoint_worker", _WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

_LOGGER = "tempo_jax.train.checkpointing"
_AUTO = jax.sharding.AxisType.Auto


@pytest.fixture(scope="module")
def mesh222(devices):
    return jax.make_mesh((2, 2, 2), ("a", "b", "c"), axis_types=(_AUTO,) * 3)


@pytest.fixture(scope="module")
def mesh811(devices):
    return jax.make_mesh((8, 1, 1), ("a", "b", "c"), axis_types=(_AUTO,) * 3)


def _state(mesh, seed: int = 0):
    """Params of four dtypes (one a raw PRNG key) plus an Adam state, sharded on `mesh`."""
    rng = np.random.default_rng(seed)
    ns = lambda *spec: jax.NamedSharding(mesh, jax.P(*spec))
    params = {
        "w32": jax.device_put(rng.standard_normal((8, 16), np.float32), ns("a", "b")),
        "wbf16": jax.device_put(
            rng.standard_normal((4, 8)).astype(jnp.bfloat16), ns(None, ("b", "c"))
        ),
        "count": jax.device_put(rng.integers(-(2**31), 2**31 - 1, (8,), np.int32), ns("a")),
        "hash": jax.device_put(rng.integers(0, 2**32, (2, 4), np.uint32), ns()),
    }
    rng_key = jax.random.key_data(jax.random.key(seed + 1234))  # uint32[2]
    opt = optax.adam(1e-3).init({"w32": params["w32"], "wbf16": params["wbf16"]})
    return {"params": params, "rng": {"key": rng_key}, "opt": opt}


def _abstract(tree, sharding_fn):
    """ShapeDtypeStructs of `tree` with shardings from `sharding_fn(leaf)`."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_fn(x)), tree
    )


def _assert_bitwise_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


_METADATA = {
    "em": {"e_steps": 3, "m_steps": 12, "recalibrations": 0},
    "phase": "m_step",
    "iterators": {"labeled": [0, 17, 2], "unlabeled": [1, 5, 0]},
    "rng_key_data": [0, 4294967295],
    "config": {"lr": 1e-6, "use_kl": False, "name": None, "big": 2**62, "ks": (1, 2, 4, 8)},
    "history": [(0, "sft"), (10, "tempo")],
}


def _save(ckpt, step, items, metadata=None):
    return ckpt.save(step, items, dict(metadata or {"step": step}))


# ---------------------------------------------------------------------------------------------


def test_round_trip_bitwise_and_metadata_exact(tmp_path, mesh222):
    state = _state(mesh222)
    with Checkpointer(tmp_path / "ckpt", keep=2) as ckpt:
        path = ckpt.save(7, state, _METADATA)
        assert path == str(tmp_path / "ckpt" / "7")
        assert ckpt.last_save_blocking_seconds is not None
        ckpt.wait()
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
        )
        items, metadata = ckpt.restore(None, abstract)
    assert ckpt.restored_step == 7
    _assert_bitwise_equal(items, state)
    # optax's namedtuples come back as namedtuples (the abstract tree sets the structure).
    assert type(items["opt"][0]) is type(state["opt"][0])
    assert metadata == _METADATA
    assert type(metadata["em"]["m_steps"]) is int and metadata["config"]["big"] == 2**62
    assert type(metadata["config"]["lr"]) is float and metadata["config"]["use_kl"] is False
    assert (
        type(metadata["config"]["ks"]) is tuple and type(metadata["iterators"]["labeled"]) is list
    )
    assert sorted(os.listdir(path)) == sorted(
        ["_CHECKPOINT_METADATA", "commit_success.txt", MANIFEST_NAME, METADATA_ITEM]
        + ["params", "rng", "opt"]
    )


def test_restore_onto_other_meshes(tmp_path, mesh222, mesh811):
    state = _state(mesh222, seed=3)
    with Checkpointer(tmp_path, keep=1, async_save=False) as ckpt:
        ckpt.save(1, {"params": state["params"]}, {"step": 1})
        on_811 = _abstract(
            state["params"],
            lambda x: jax.NamedSharding(mesh811, jax.P("a") if x.shape[0] % 8 == 0 else jax.P()),
        )
        one_device = jax.sharding.SingleDeviceSharding(jax.devices()[5])
        on_one = _abstract(state["params"], lambda x: one_device)
        for abstract in (on_811, on_one):
            items, _ = ckpt.restore(1, {"params": abstract})
            _assert_bitwise_equal(items["params"], state["params"])
            for got, want in zip(
                jax.tree.leaves(items["params"]), jax.tree.leaves(abstract), strict=True
            ):
                assert got.sharding == want.sharding
        assert items["params"]["w32"].sharding.device_set == {jax.devices()[5]}
        # Host restore (abstract_items=None) for export / inspection.
        host, metadata = ckpt.restore(1)
        assert isinstance(host["params"]["w32"], np.ndarray) and metadata == {"step": 1}
        _assert_bitwise_equal(host["params"], state["params"])


def test_keep_last_n(tmp_path, mesh222):
    small = {"x": jnp.arange(4, dtype=jnp.int32)}
    with Checkpointer(tmp_path, keep=2) as ckpt:
        for step in range(5):
            _save(ckpt, step, {"s": jax.tree.map(lambda a, s=step: a + s, small)})
        ckpt.wait()
        assert ckpt.all_steps() == [3, 4]
        assert ckpt.latest_good_step() == 4
    assert sorted(os.listdir(tmp_path)) == ["3", "4"]
    with Checkpointer(tmp_path, keep=2) as ckpt:  # A restarted process sees the same.
        assert ckpt.all_steps() == [3, 4]
        items, metadata = ckpt.restore(3)
        assert metadata == {"step": 3} and np.asarray(items["s"]["x"]).tolist() == [3, 4, 5, 6]


def _largest_item_file(step_dir: pathlib.Path) -> pathlib.Path:
    files = [p for p in (step_dir / "params").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def _truncate(step_dir):
    target = _largest_item_file(step_dir)
    size = target.stat().st_size
    with open(target, "r+b") as f:
        f.truncate(size // 2)


def _delete_file(step_dir):
    _largest_item_file(step_dir).unlink()


def _break_metadata_json(step_dir):
    (step_dir / METADATA_ITEM / "metadata").write_text('{"step": 2, "em": {')


def _overwrite_same_size(step_dir):
    target = step_dir / "params" / "_METADATA"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "corrupt, reason",
    [
        (_truncate, "truncated"),
        (_delete_file, "missing file"),
        (_break_metadata_json, "metadata"),
        (_overwrite_same_size, "CRC-32"),
    ],
)
def test_corrupt_latest_is_skipped(tmp_path, mesh222, caplog, corrupt, reason):
    states = {step: _state(mesh222, seed=step) for step in (1, 2)}
    with Checkpointer(tmp_path, keep=3) as ckpt:
        for step, state in states.items():
            _save(ckpt, step, {"params": state["params"]})
    corrupt(tmp_path / "2")
    abstract = {"params": _abstract(states[1]["params"], lambda x: x.sharding)}
    with caplog.at_level(logging.WARNING, logger=_LOGGER), Checkpointer(tmp_path, keep=3) as ckpt:
        assert ckpt.latest_good_step() == 1
        assert ckpt.all_steps() == [1]
        items, metadata = ckpt.restore(None, abstract)
        assert ckpt.restored_step == 1 and metadata == {"step": 1}
        _assert_bitwise_equal(items["params"], states[1]["params"])
        with pytest.raises(CorruptCheckpointError, match=reason):
            ckpt.restore(2, abstract)
        # Resuming from step 1 re-runs step 2: the corrupt one is replaced, a good one never.
        _save(ckpt, 2, {"params": states[2]["params"]})
        ckpt.wait()
        assert ckpt.latest_good_step() == 2
        with pytest.raises(CheckpointError, match="good checkpoint at step 2"):
            _save(ckpt, 2, {"params": states[2]["params"]})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(tmp_path / "2") in w and reason in w for w in warnings), warnings


def test_half_written_tmp_dir_and_manifestless_checkpoint(tmp_path, mesh222, caplog):
    state = _state(mesh222)
    with Checkpointer(tmp_path, keep=3) as ckpt:
        _save(ckpt, 1, {"params": state["params"]})
        _save(ckpt, 2, {"params": state["params"]})
    # A save killed mid-write leaves only a tmp dir with some of the files.
    shutil.copytree(tmp_path / "2", tmp_path / "3.orbax-checkpoint-tmp")
    _truncate(tmp_path / "3.orbax-checkpoint-tmp")
    # A checkpoint without our manifest is verified by reading every array instead.
    (tmp_path / "2" / MANIFEST_NAME).unlink()
    _truncate(tmp_path / "2")
    with caplog.at_level(logging.WARNING, logger=_LOGGER), Checkpointer(tmp_path, keep=3) as ckpt:
        assert ckpt.latest_good_step() == 1
        _, metadata = ckpt.restore()
        assert metadata == {"step": 1}
    text = caplog.text
    assert "unfinished save" in text and "3.orbax-checkpoint-tmp" in text
    assert "reading arrays failed" in text and str(tmp_path / "2") in text
    assert not (tmp_path / "3.orbax-checkpoint-tmp").exists()  # Cleaned at start.


def test_restore_failure_past_verification(tmp_path, mesh222, caplog):
    """Damage the manifest cannot see: restore(None) falls back, and only then may a save replace
    the damaged step; a caller's wrong shapes fail every step and delete nothing."""
    states = {step: _state(mesh222, seed=step)["params"] for step in (1, 2)}
    with Checkpointer(tmp_path) as ckpt:
        for step, params in states.items():
            _save(ckpt, step, {"params": params})
    manifest_path = tmp_path / "2" / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    del manifest["files"]["params/_METADATA"]
    manifest_path.write_text(json.dumps(manifest))
    (tmp_path / "2" / "params" / "_METADATA").write_text("{broken")
    abstract = {"params": _abstract(states[1], lambda x: x.sharding)}
    wrong = {"params": jax.tree.map(lambda x: x.update(shape=(3, *x.shape)), abstract["params"])}
    with caplog.at_level(logging.WARNING, logger=_LOGGER), Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_good_step() == 2  # Passes the cheap check...
        with pytest.raises(CheckpointError, match="could be restored.*step 2.*step 1"):
            ckpt.restore(None, wrong)
        with pytest.raises(CheckpointError, match="good checkpoint at step 1"):
            _save(ckpt, 1, {"params": states[1]})  # ...so nothing was marked for deletion.
        items, _ = ckpt.restore(None, abstract)  # ...but its restore fails: fall back.
        assert ckpt.restored_step == 1
        _assert_bitwise_equal(items["params"], states[1])
        _save(ckpt, 2, {"params": states[2]})  # Re-running step 2 replaces the damaged one.
        items, metadata = ckpt.restore(None, abstract)
    assert ckpt.restored_step == 2 and metadata == {"step": 2}
    _assert_bitwise_equal(items["params"], states[2])
    assert f"{tmp_path / '2'} cannot be used, skipping it: restore failed" in caplog.text


def test_bad_inputs_fail_clearly(tmp_path, mesh222):
    with Checkpointer(tmp_path) as ckpt:
        x = {"x": jnp.zeros((2,))}
        with pytest.raises(TypeError, match=r"metadata\['pos'\]\[1\]: float32"):
            ckpt.save(0, {"s": x}, {"pos": (1, np.float32(2))})
        with pytest.raises(TypeError, match=r"metadata: key 3 is not a str"):
            ckpt.save(0, {"s": x}, {3: "x"})
        with pytest.raises(TypeError, match=r"metadata\['n'\]: int64"):
            ckpt.save(0, {"s": x}, {"n": np.int64(3)})
        with pytest.raises(ValueError, match="non-finite"):
            ckpt.save(0, {"s": x}, {"loss": float("nan")})
        with pytest.raises(ValueError, match="item name"):
            ckpt.save(0, {METADATA_ITEM: x}, {})
        with pytest.raises(FileNotFoundError, match="no checkpoint in"):
            ckpt.restore()
        ckpt.save(0, {"s": x}, {})
        with pytest.raises(ValueError, match=r"abstract_items\['s'\]\['x'\].*no sharding"):
            ckpt.restore(0, {"s": {"x": jax.ShapeDtypeStruct((2,), jnp.float32)}})
        sds = jax.ShapeDtypeStruct((2,), jnp.float32, sharding=x["x"].sharding)
        with pytest.raises(MissingItemError, match="no item"):
            ckpt.restore(0, {"policy": {"x": sds}})
        with pytest.raises(FileNotFoundError, match="finalized steps: \\[0\\]"):
            ckpt.restore(5, {"s": {"x": sds}})


def test_check_writable(tmp_path):
    assert check_writable(tmp_path / "new" / "dir", min_free_bytes=1) > 0
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointDirectoryError, match=f"{blocker / 'ckpt'}.*cannot be created"):
        check_writable(blocker / "ckpt")
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(CheckpointDirectoryError, match=f"{tmp_path}.*nearly full.*free"):
        check_writable(tmp_path, min_free_bytes=free * 1000)
    with pytest.raises(CheckpointDirectoryError):
        Checkpointer(blocker / "ckpt")
    assert pytree_nbytes({"a": jnp.zeros((4, 4), jnp.bfloat16), "b": np.zeros(3, np.int32)}) == 44


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_check_writable_read_only_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(CheckpointDirectoryError, match=f"{ro}.*not writable"):
            check_writable(ro)
    finally:
        ro.chmod(0o700)


def test_preemption_guard_in_process():
    before_term, before_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with PreemptionGuard() as guard:
        assert signal.getsignal(signal.SIGTERM) is not before_term
        assert not guard.should_stop() and not guard.agreed()
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not guard.should_stop() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert guard.should_stop() and guard.agreed() and guard.signal_name == "SIGTERM"
        message = guard.exit_message("after step 1", "/x/1")
        assert "SIGTERM after step 1; checkpoint saved to /x/1" in message
        with pytest.raises(KeyboardInterrupt):  # SIGINT after a stop request aborts for real.
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) is before_term
    assert signal.getsignal(signal.SIGINT) is before_int


# ---------------------------------------------------------------------- subprocess tests


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(_ROOT), env.get("PYTHONPATH", "")])
    return env


class _LineReader:
    """Collects a child's stdout lines in a thread so the parent can wait for one with a timeout."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(proc,), daemon=True)
        self._thread.start()

    def _run(self, proc):
        for line in proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, prefix: str, timeout: float, count: int = 1) -> str:
        """Returns the `count`-th line starting with `prefix`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                matches = [line for line in self.lines if line.startswith(prefix)]
                if len(matches) >= count:
                    return matches[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    raise AssertionError(f"no line starting {prefix!r}; got {self.lines}")
                self._cond.wait(left)

    def join(self):
        self._thread.join(timeout=30)


def _spawn(*args):
    return subprocess.Popen(
        [sys.executable, str(_WORKER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(),
        cwd=_ROOT,
    )


@pytest.mark.slow
def test_kill9_during_async_saves(tmp_path, caplog):
    """SIGKILL at random moments of a save-every-step loop: the newest good step always restores
    exactly, and it is never more than one save behind the last `save` that returned."""
    num_elements = 8 * 1024 * 1024  # 32 MiB of incompressible uint32 per checkpoint
    rng = random.Random(8)
    # (delay after the 2nd save returned, whether to then also wait until a save is in flight):
    # a purely random moment lands between saves about half the time.
    plan = [(rng.uniform(0.0, 0.4), True), (rng.uniform(0.0, 0.8), False)]
    plan.append((rng.uniform(0.2, 0.6), True))
    directory = tmp_path / "ckpt"
    mesh = jax.make_mesh((8,), ("data",), axis_types=(_AUTO,))
    sharding = jax.NamedSharding(mesh, jax.P("data"))
    saw_unfinished = 0
    for delay, mid_save in plan:
        proc = _spawn("loop", str(directory), str(num_elements))
        reader = _LineReader(proc)
        try:
            reader.wait_for("SAVED", timeout=60, count=2)  # So that one save is finalized.
            time.sleep(delay)
            deadline = time.monotonic() + 10
            while mid_save and time.monotonic() < deadline:
                if any(p.name.endswith(".orbax-checkpoint-tmp") for p in directory.iterdir()):
                    time.sleep(rng.uniform(0.0, 0.02))
                    break
                time.sleep(0.002)
            proc.kill()
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        reader.join()
        saved = [int(line.split()[1]) for line in reader.lines if line.startswith("SAVED")]
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=_LOGGER), Checkpointer(directory) as ckpt:
            saw_unfinished += "unfinished save" in caplog.text
            example = worker.step_content(0, num_elements)
            abstract = {"state": _abstract(example, lambda x: sharding)}
            items, metadata = ckpt.restore(None, abstract)
        step = ckpt.restored_step
        # save(s) returning means save s-1 was finalized (Orbax waits for the previous one).
        # (+1: the kill may land between a save finishing and its "SAVED" line being printed.)
        assert saved[-1] - 1 <= step <= saved[-1] + 1, (step, saved)
        assert metadata == {"step": step, "phase": "tempo", "em": {"m_steps": step * 2}}
        _assert_bitwise_equal(items["state"], worker.step_content(step, num_elements))
    assert saw_unfinished >= 1, "no kill landed during a save; the test proved nothing"


@pytest.mark.slow
def test_sigterm_finishes_step_saves_and_exits_zero(tmp_path):
    directory = tmp_path / "ckpt"
    proc = _spawn("sigterm", str(directory))
    reader = _LineReader(proc)
    try:
        reader.wait_for("READY", timeout=60)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    reader.join()
    assert rc == 0, reader.lines
    message = reader.wait_for("Stopped on SIGTERM", timeout=1)
    step = int(message.split("after step ")[1].split(";")[0])
    assert message.endswith(f"checkpoint saved to {directory / str(step)}")
    assert reader.wait_for("HANDLER_RESTORED", timeout=1) == "HANDLER_RESTORED True"
    with Checkpointer(directory) as ckpt:
        assert ckpt.latest_good_step() == step
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        sds = jax.ShapeDtypeStruct((8,), jnp.int32, sharding=sharding)
        items, metadata = ckpt.restore(None, {"state": {"a": sds, "b": sds}})
    assert metadata == {"step": step, "steps_done": step + 1}
    # The interrupted step was finished: both halves applied, step + 1 times.
    assert np.asarray(items["state"]["a"]).tolist() == [step + 1] * 8
    assert np.asarray(items["state"]["b"]).tolist() == [step + 1] * 8


@pytest.mark.slow
def test_multiprocess_stop_uses_jax_preemption_sync():
    """Two jax.distributed processes; SIGTERM to one: both stop at the same step and exit 0."""
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    procs = [_spawn("multiprocess", str(i), str(port)) for i in range(2)]
    readers = [_LineReader(p) for p in procs]
    try:
        readers[1].wait_for("READY", timeout=60)
        readers[0].wait_for("READY", timeout=60)
        procs[1].send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    for r in readers:
        r.join()
    assert codes == [0, 0], [r.lines for r in readers]
    stops = [r.wait_for("STOP", timeout=1) for r in readers]
    assert stops[0] == stops[1], stops
    for r in readers:
        assert r.wait_for("HANDLER_UNTOUCHED", timeout=1) == "HANDLER_UNTOUCHED True"
