"""Multi-host: two processes x 4 CPU devices assemble global batches through jax.distributed."""

import pathlib
import sys

import numpy as np
import parallel_multihost_worker as worker
import pytest
from multihost_launch import free_port, host_env, run_hosts

from tempo_jax import parallel

WORKER = pathlib.Path(worker.__file__).resolve()
ROOT = WORKER.parents[2]
TIMEOUT_S = 120


def run_two_processes(
    out_dir: pathlib.Path, process_ids=(0, 1), worker: pathlib.Path = WORKER, args=()
) -> None:
    """Runs both workers (`worker PORT PROCESS_ID OUT_DIR *args`); fails (never hangs) if either
    errors or they exceed TIMEOUT_S."""
    port = free_port()
    run_hosts(
        [
            [sys.executable, str(worker), str(port), str(pid), str(out_dir), *args]
            for pid in process_ids
        ],
        [host_env() for _ in process_ids],
        [out_dir / f"worker_{i}.log" for i in range(len(process_ids))],
        TIMEOUT_S,
    )


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
