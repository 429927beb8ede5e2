"""`tempo-jax train` in two processes x 4 CPU devices (jax.distributed on 127.0.0.1, gloo) runs
the micro config's tempo_mixed method (2 SFT steps, critic warm-up, evaluation at steps 0 and 2,
2 steps where critic and policy both update) and ends where the single-process run on 8 devices
ends: the same checkpointed parameters and optimizer states, and the same metrics records (timings
aside), written by process 0 only.

Not bitwise: the FSDP gradient reductions run as gloo all-reduces across the two processes and as
in-process collectives on one, which add the 8 partial sums in different orders (float32 rounding,
~1e-7 relative). So what comes from sampling and grading (rollout lengths, accuracies, grader
counts, generation batches, stream positions) must match exactly, and so must SFT (each process
runs it unsharded on one device). Losses, entropies, values and parameters agree within float32
reduction noise (which they could not on different tokens): metrics rel 1e-5 (abs 1e-6 for
values that are ~0); parameters and Adam moments abs 2e-4. Adam divides by sqrt(v), so a
coordinate whose gradient is ~0 turns that noise into a visible update difference: after 2
policy updates at learning rate 1e-2 the parameters moved by up to 2e-2 and the runs differ by
up to 4.7e-5 (measured), while a missing or repeated update would differ by ~1e-2.
"""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from tempo_micro import metric_lines, micro_config
from two_processes import DISTRIBUTED_FLAGS, process_env, run_two_processes

from tempo_jax.tempo.loop import Trainer
from tempo_jax.train.checkpointing import Checkpointer

ROOT = pathlib.Path(__file__).resolve().parents[2]
MICRO = ROOT / "tests" / "tempo" / "tempo_micro.py"
METHOD = "tempo_mixed"
CHANGES = {"sft.steps": 2, "sft.batch_size": 8, "eval_every": 2}
# Metrics computed by the sharded networks (float32 reduction noise); every other key must match.
NETWORK_KEYS = ("policy/", "critic/", "warmup/loss", "warmup/value_mean", "warmup/grad_norm")
NETWORK_PARTS = ("/token_entropy", "/critic/")
PARAM_ATOL = 2e-4


def _train_two_processes(data_dir: str, workdir: pathlib.Path, logs: pathlib.Path) -> list[str]:
    """Runs `tempo-jax train` in two processes; their outputs."""
    command = [
        sys.executable,
        "-m",
        "tempo_jax.cli",
        "train",
        f"--config={MICRO}",
        f"--config.method={METHOD}",
        *(f"--config.{key}={value}" for key, value in CHANGES.items()),
        f"--config.data.dir={data_dir}",
        *DISTRIBUTED_FLAGS,
        f"--workdir={workdir}",
    ]
    return run_two_processes(command, logs)


def _checkpoint(workdir: pathlib.Path, step: int) -> tuple[dict[str, np.ndarray], dict]:
    """Every array of checkpoint `step` in `workdir` on the host, keyed by path, and metadata."""
    with Checkpointer(workdir, read_only=True) as ckpt:
        items, metadata = ckpt.restore(step)
    flat = {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(items)
    }
    return flat, metadata


def _assert_same_records(got: list[str], expected: list[str]) -> None:
    assert len(got) == len(expected)
    for got_line, expected_line in zip(got, expected, strict=True):
        a, b = json.loads(got_line), json.loads(expected_line)
        assert sorted(a) == sorted(b)
        for key, value in b.items():
            network = key.startswith(NETWORK_KEYS) or any(p in key for p in NETWORK_PARTS)
            if network and isinstance(value, float):
                assert a[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), key
            else:  # NaN (e.g. an AUROC with one class) equals NaN here
                assert a[key] == value or (a[key] != a[key] and value != value), key


@pytest.mark.slow
def test_two_processes_train_like_one(devices, tmp_path):
    data_dir = str(tmp_path / "data")
    single, multi = tmp_path / "single", tmp_path / "multi"
    trainer = Trainer(micro_config(data_dir, METHOD, **CHANGES), str(single))
    try:
        state = trainer.train()
    finally:
        trainer.close()
    assert state.step == 2 and state.critic is not None

    outputs = _train_two_processes(data_dir, multi, tmp_path)
    # Process 0 alone prints the end-of-run report; the other stays quiet.
    assert "metrics:" in outputs[0] and "metrics:" not in outputs[1]

    # Same records (timings aside), each written once: process 1 wrote nothing.
    for name in ("metrics.jsonl", "warmup_metrics.jsonl"):
        _assert_same_records(metric_lines(multi, name), metric_lines(single, name))
    assert [json.loads(line)["step"] for line in metric_lines(multi)] == [0, 1, 2]
    assert metric_lines(multi, "sft/metrics.jsonl") == metric_lines(single, "sft/metrics.jsonl")
    sft, _ = _checkpoint(multi / "sft", 2)
    reference_sft, _ = _checkpoint(single / "sft", 2)
    assert sft.keys() == reference_sft.keys()
    assert all(np.array_equal(sft[k], reference_sft[k]) for k in sft)

    expected, expected_meta = _checkpoint(single / "checkpoints", 2)
    got, got_meta = _checkpoint(multi / "checkpoints", 2)
    assert sorted(got) == sorted(expected)
    assert any("critic" in k for k in got) and any("policy" in k for k in got)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        np.testing.assert_allclose(got[key], value, rtol=0, atol=PARAM_ATOL, err_msg=key)
    # Both networks moved away from their initial values in the run.
    initial, _ = _checkpoint(single / "checkpoints", 0)
    for network in ("policy", "critic"):
        moved = [
            k
            for k in initial
            if k.startswith(f"['{network}']") and "params" in k and "opt_state" not in k
        ]
        assert moved and any(not np.array_equal(initial[k], got[k]) for k in moved), network
    assert got_meta["streams"] == expected_meta["streams"]
    assert got_meta["counters"] == expected_meta["counters"]


def test_cli_names_a_missing_distributed_field(tmp_path):
    # Two processes asked for, no coordinator: the CLI stops before building anything.
    env = process_env(0, 0)
    env.pop("JAX_COORDINATOR_ADDRESS")
    result = subprocess.run(
        [sys.executable, "-m", "tempo_jax.cli", "train", f"--config={MICRO}"]
        + [f"--config.data.dir={tmp_path / 'data'}", f"--workdir={tmp_path / 'run'}"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "parallel.distributed.coordinator_address is unset" in result.stderr
    assert not (tmp_path / "data").exists()
