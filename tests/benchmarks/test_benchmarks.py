"""The benchmark scripts run end to end on a tiny shape and print the JSON they promise.

They are run as users run them (a new process, `python benchmarks/X.py`), so an API change that
breaks a benchmark fails here rather than when someone next measures. Timings are not asserted
(a shared CI machine); what the numbers are computed from is.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_benchmark(script: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    # One CPU device, as users run them; the suite's unoptimised XLA backend (conftest) kept,
    # as timings are not asserted and compiles are most of a tiny run.
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


TINY = ["--layers", "1", "--hidden", "32", "--heads", "2", "--kv_heads", "1", "--head_dim", "16"]


def test_train_step_benchmark_runs_the_same_update_on_both_sides():
    pytest.importorskip("transformers")
    out = run_benchmark(
        "train_step_vs_torch.py",
        *TINY,
        "--intermediate", "64", "--vocab", "96", "--rows", "2", "--prompt", "4",
        "--response", "6", "--vocab_chunk_size", "32", "--runs", "2", "--warmup", "1",
    )  # fmt: skip
    # Identical weights and batch: the first GSPO losses agree to float32 rounding.
    assert out["tempo_first_loss"] == pytest.approx(out["peer_first_loss"], rel=1e-4, abs=1e-6)
    assert out["tokens_per_step"] == 2 * (4 + 6)
    assert len(out["tempo_step_s_all"]) == len(out["peer_step_s_all"]) == 2
    assert out["ratio"] == pytest.approx(out["tempo_tokens_per_s"] / out["peer_tokens_per_s"])
    # step_gflop from the formula: 3 x (trunk + causal attention + LM head) forward FLOPs.
    layer = 32 * (2 * 32 + 2 * 16) + 3 * 32 * 64
    forward = 2 * layer * 20 + 2 * 2 * 2 * 2 * 16 * 10**2 / 2 + 2 * 96 * 32 * 2 * 6
    assert out["step_gflop"] == pytest.approx(3 * forward / 1e9, rel=1e-12)
    assert out["tempo_gflop_per_s"] == pytest.approx(out["step_gflop"] / out["tempo_step_s_median"])
    assert out["gemm_peak_gflop_per_s"] == max(out["gemm_gflop_per_s"].values()) > 0


def test_sampler_benchmark_compares_equal_greedy_outputs():
    pytest.importorskip("transformers")
    out = run_benchmark(
        "sampler_vs_hf.py",
        *TINY,
        "--intermediate", "64", "--vocab", "96", "--batch", "2", "--prompt", "4",
        "--new_tokens", "5", "--runs", "2", "--breakdown", "--peak_bandwidth_gbs", "100",
        "--max_rows_per_chunk", "1",
    )  # fmt: skip
    # Same weights, greedy, float32: both sides generate the same tokens (so time the same work).
    assert out["tokens_agree_fraction"] == 1.0
    assert out["tempo_tokens_per_s"] == pytest.approx(2 * 5 / out["tempo_seconds"])
    assert out["ratio"] == pytest.approx(out["tempo_tokens_per_s"] / out["peer_tokens_per_s"])
    assert 0 < out["roofline_fraction"] and out["decode_step_bytes"] > 0
    assert set(out["breakdown"]) and all(v > 0 for v in out["breakdown"].values())
    # Two one-row chunks sample what one call does.
    assert out["chunked_tokens_identical"] is True
    assert out["chunked_vs_unchunked"] == pytest.approx(
        out["chunked_tokens_per_s"] / out["tempo_tokens_per_s"]
    )
