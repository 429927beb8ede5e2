"""Multi-host: two processes x 4 CPU devices assemble global batches through jax.distributed."""

import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import parallel_multihost_worker as worker
import pytest

from tempo_jax import parallel

WORKER = pathlib.Path(worker.__file__).resolve()
ROOT = WORKER.parents[2]
TIMEOUT_S = 120


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
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    return env


def run_two_processes(
    out_dir: pathlib.Path, process_ids=(0, 1), worker: pathlib.Path = WORKER, args=()
) -> None:
    """Runs both workers (`worker PORT PROCESS_ID OUT_DIR *args`); fails (never hangs) if either
    errors or they exceed TIMEOUT_S."""
    port = _free_port()
    logs = [out_dir / f"worker_{i}.log" for i in range(len(process_ids))]
    procs = []
    try:
        for pid, log in zip(process_ids, logs, strict=True):
            with open(log, "wb") as sink:  # a file, not a pipe: a full pipe would block a worker
                procs.append(
                    subprocess.Popen(
                        [sys.executable, str(worker), str(port), str(pid), str(out_dir), *args],
                        env=_worker_env(),
                        cwd=ROOT,
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + TIMEOUT_S
        # Poll both: when one dies the other would wait for it until jax's own timeouts.
        while True:
            codes = [p.poll() for p in procs]  # poll every worker: any() would short-circuit
            if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"multi-host workers did not finish within {TIMEOUT_S} s")
            time.sleep(0.1)
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
def test_two_processes_build_the_same_global_batch(devices, tmp_path):
    run_two_processes(tmp_path)
    results = [dict(np.load(tmp_path / f"process_{pid}.npz")) for pid in range(2)]
    x, w = worker.full_batch(), worker.weight()
    for mesh_shape in worker.MESHES:
        key = "x".join(map(str, mesh_shape))
        # The single-process reference: same code on this process's 8 devices.
        rows, gathered, total, y, global_shape = worker.run(mesh_shape)
        assert rows == slice(0, worker.BATCH)
        np.testing.assert_array_equal(gathered, x)
        np.testing.assert_allclose(y, np.tanh(x @ w), rtol=1e-5, atol=1e-6)
        assert total == pytest.approx(float(x.sum()), abs=1e-4)
        row_ranges = [tuple(r[f"{key}/rows"]) for r in results]
        if mesh_shape == (1, 1, 8):  # batch replicated: each process loads every row
            assert row_ranges == [(0, 8), (0, 8)]
        else:  # each process loaded only its half
            assert row_ranges == [(0, 4), (4, 8)]
        for r in results:
            assert tuple(r[f"{key}/global_shape"]) == global_shape == x.shape
            np.testing.assert_array_equal(r[f"{key}/gathered"], x)
            assert float(r[f"{key}/total"]) == pytest.approx(total, abs=1e-4)
            np.testing.assert_allclose(r[f"{key}/y"], y, rtol=1e-6, atol=1e-6)


def test_single_process_initialize_is_a_no_op(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert parallel.initialize_distributed() is False
    assert parallel.initialize_distributed(parallel.get_config().distributed) is False
    assert parallel.initialize_distributed({"num_processes": 1}) is False


def test_distributed_config_from_environment_and_errors(monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    monkeypatch.setenv("JAX_LOCAL_DEVICE_IDS", "0,1")
    cfg = parallel.resolve_distributed_config(parallel.get_config().distributed)
    assert (cfg.coordinator_address, cfg.num_processes, cfg.process_id) == ("10.0.0.1:1234", 4, 3)
    assert cfg.local_device_ids == (0, 1)
    # Config fields win over the environment.
    assert parallel.resolve_distributed_config({"process_id": 1}).process_id == 1
    with pytest.raises(ValueError, match=r"distributed\.process_id must be in \[0, 4\)"):
        parallel.resolve_distributed_config({"process_id": 7})
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
    with pytest.raises(ValueError, match=r"distributed\.coordinator_address is unset"):
        parallel.initialize_distributed({"num_processes": 2, "process_id": 0})


def test_process_batch_rows_single_process(devices):
    mesh = parallel.make_mesh((2, 2, 2))
    sharding = parallel.batch_sharding(mesh)
    assert parallel.process_batch_slice(16, sharding) == slice(0, 16)
    np.testing.assert_array_equal(parallel.process_batch_rows(16, sharding), np.arange(16))
    with pytest.raises(ValueError, match="global batch size 6 is not divisible by the 4 batch"):
        parallel.process_batch_rows(6, sharding)
