"""Two processes x 4 CPU devices (jax.distributed, gloo, 127.0.0.1) run 2 policy steps and end
with the parameters of the single-process run on the same (2, 2, 2) mesh of 8 devices.

Tolerance 1e-5 absolute, as for the single-process meshes: cross-process all-reduces (gloo) may
add the partial sums in another order than in-process collectives.
"""

import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import train_multihost_worker as worker
import train_step_helpers as h
from flax import nnx

WORKER = pathlib.Path(worker.__file__).resolve()
ROOT = WORKER.parents[2]
# Only a hang guard (a failure, never a hang): the workers took 26-75 s on the 2-core machine
# at load averages up to 9.
TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # conftest gave this process 8 devices; each worker is one "host" with 4.
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + ["--xla_force_host_platform_device_count=4"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(WORKER.parent), env.get("PYTHONPATH", "")])
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    return env


def _run_two_processes(out_dir: pathlib.Path) -> None:
    """Runs both workers; fails (never hangs) if either errors or they exceed TIMEOUT_S."""
    port = _free_port()
    logs = [out_dir / f"worker_{i}.log" for i in range(2)]
    procs = []
    try:
        for pid, log in enumerate(logs):
            with open(log, "wb") as sink:  # a file, not a pipe: a full pipe would block a worker
                procs.append(
                    subprocess.Popen(
                        [sys.executable, str(WORKER), str(port), str(pid), str(out_dir)],
                        env=_worker_env(),
                        cwd=ROOT,
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + TIMEOUT_S
        while True:  # poll both: when one dies the other would wait for it until jax times out
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"multi-host workers did not finish within {TIMEOUT_S} s")
            time.sleep(0.2)
    finally:
        for proc in procs:  # never leave a worker behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    failures = [
        f"worker {i} exited {p.returncode}:\n{logs[i].read_text(errors='replace')[-3000:]}"
        for i, p in enumerate(procs)
        if p.returncode != 0
    ]
    assert not failures, "\n\n".join(failures)


@pytest.mark.slow
def test_two_processes_match_the_single_process_run(devices, tmp_path):
    _run_two_processes(tmp_path)
    results = [dict(np.load(tmp_path / f"process_{pid}.npz")) for pid in range(2)]
    # Each process loaded only its half of the rows.
    assert [tuple(r["rows"]) for r in results] == [(0, h.N // 2), (h.N // 2, h.N)]
    reference = h.run_steps("policy", worker.MESH)  # the same program on this process's 8 devices
    for i in range(2):
        flat = {
            ".".join(map(str, path)): value.get_value()
            for path, value in nnx.to_flat_state(reference["params"][i])
        }
        for r in results:
            got = {k.split("/params/")[1]: v for k, v in r.items() if k.startswith(f"{i}/params/")}
            assert sorted(got) == sorted(flat)
            assert max(float(np.max(np.abs(got[k] - flat[k]))) for k in flat) < 1e-5
            for name, value in reference["metrics"][i].items():
                got_metric = float(r[f"{i}/metrics/{name}"])
                assert got_metric == pytest.approx(value, rel=1e-4, abs=1e-6)
        np.testing.assert_array_equal(
            results[0][f"{i}/params/lm_head"], results[1][f"{i}/params/lm_head"]
        )
    assert h.max_abs_diff(reference["params"][1], h.to_numpy(h.split_model("policy")[1])) > 1e-3
    assert all(int(r["cache_size"]) == 1 for r in results)
