"""Two processes x 4 CPU devices (jax.distributed, gloo, 127.0.0.1) run 2 policy steps and end
with the parameters of the single-process run on the same (2, 2, 2) mesh of 8 devices.

Tolerance 1e-5 absolute, as for the single-process meshes: cross-process all-reduces (gloo) may
add the partial sums in another order than in-process collectives.
"""

import pathlib
import sys

import numpy as np
import pytest
import train_multihost_worker as worker
import train_step_helpers as h
from flax import nnx
from multihost_launch import free_port, host_env, run_hosts

WORKER = pathlib.Path(worker.__file__).resolve()
ROOT = WORKER.parents[2]
# Only a hang guard (a failure, never a hang): the workers took 26-75 s on the 2-core machine
# at load averages up to 9.
TIMEOUT_S = 300


def _run_two_processes(out_dir: pathlib.Path) -> None:
    """Runs both workers; fails (never hangs) if either errors or they exceed TIMEOUT_S."""
    port = free_port()
    run_hosts(
        [[sys.executable, str(WORKER), str(port), str(pid), str(out_dir)] for pid in range(2)],
        [host_env(WORKER.parent) for _ in range(2)],
        [out_dir / f"worker_{i}.log" for i in range(2)],
        TIMEOUT_S,
    )


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
