"""Fault tolerance of the TEMPO trainer: non-finite updates are skipped, counted and stop the run
with the last checkpoint intact; grader crashes and timeouts are counted and never hang it; an
unwritable or full workdir fails before training starts."""

import os
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tempo_fault_worker
from tempo_micro import host, micro_config, trees_equal

from tempo_jax.config.validation import ConfigError
from tempo_jax.rewards.grading_pool import GradingPool
from tempo_jax.tempo import build, phases
from tempo_jax.tempo.loop import Trainer, TrainingHalted
from tempo_jax.train.checkpointing import CheckpointDirectoryError
from tempo_jax.train.metric_writers import read_jsonl

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tempo_faults_data"))


class PoisonedTrainer(Trainer):
    """NaN advantages (hence a NaN loss and NaN gradients) in the policy update of the 1-based
    steps in `poison`; snapshots the policy after every step."""

    def __init__(self, *args, poison=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.poison = set(poison)
        self.poisoned_now = False
        self.policy_after = {}

    def _train_step(self, state):
        self.poisoned_now = state.step + 1 in self.poison
        state, metrics = super()._train_step(state)
        self.policy_after[state.step] = host(state.policy)
        return state, metrics


def test_nonfinite_updates_are_skipped_counted_and_halt_with_checkpoint_intact(
    data_dir, tmp_path, monkeypatch
):
    with pytest.raises(ConfigError, match=r"checkpoint\.max_consecutive_skips"):
        micro_config(data_dir, **{"checkpoint.max_consecutive_skips": 0})
    config = micro_config(
        data_dir, total_steps=6, save_every=1, **{"checkpoint.max_consecutive_skips": 2}
    )
    trainer = PoisonedTrainer(config, str(tmp_path), poison=(2, 4, 5))
    advantages = phases._advantages

    def poisoned_advantages(*args, **kwargs):
        adv, returns = advantages(*args, **kwargs)
        return (adv * jnp.nan if trainer.poisoned_now else adv), returns

    monkeypatch.setattr(phases, "_advantages", poisoned_advantages)
    try:
        with pytest.raises(TrainingHalted) as halted:
            trainer.train()
        message = str(halted.value)
        assert "stopping at step 5: 2 steps in a row" in message
        assert "max_consecutive_skips=2" in message
        assert f"{tmp_path}/checkpoints/3 (step 3), is intact" in message

        records = read_jsonl(str(tmp_path / "metrics.jsonl"))
        steps = [r for r in records if r["phase"] != "eval"]
        assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]
        assert [r["policy/skipped"] for r in steps] == [0, 1, 0, 1, 1]
        assert [r["nonfinite/consecutive"] for r in steps] == [0, 1, 0, 1, 2]
        assert [r["nonfinite/total"] for r in steps] == [0, 1, 1, 2, 3]
        assert all(np.isnan(r["policy/loss"]) for r in steps if r["policy/skipped"])
        # A skipped update leaves the policy (params, moments, step counter) as it was.
        after = trainer.policy_after
        assert trees_equal(after[2], after[1]) and trees_equal(after[5], after[3])
        assert not trees_equal(after[3], after[2])
        assert int(after[5].step) == 2  # optimizer updates applied: steps 1 and 3

        # Step 2's save waited for the clean step 3; nothing was saved during the last streak.
        assert trainer.checkpointer.all_steps() == [0, 1, 3]
        restored = trainer._restore()
        assert restored.step == 3 and restored.nonfinite_total == 1
        assert trees_equal(host(restored.policy), after[3])
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(host(restored.policy.params)))
    finally:
        trainer.close()


class FaultyPool(GradingPool):
    """A pool whose `fault_call`-th `run_tasks` call crashes the worker on its first task and
    hangs it (past the deadline) on its second."""

    fault_call = 1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "enable_test_hooks": True})
        self.calls = 0

    def run_tasks(self, tasks, timeout_s=None):
        if self.calls == self.fault_call and len(tasks) >= 2:
            tasks = [("_exit", None), ("_sleep", 600.0)] + list(tasks[2:])
        self.calls += 1
        return super().run_tasks(tasks, timeout_s)


def test_grader_crash_and_timeout_are_wrong_answers_counted_in_metrics(
    data_dir, tmp_path, monkeypatch
):
    # An E-step at every step after the first, grading its D_L rollouts.
    config = micro_config(data_dir, **{"tempo.recalibrate_every": 1, "grader.timeout_s": 1.5})
    # Right answers that no cheap check decides ("0+<truth>"): every labeled row goes to a
    # worker, and only a failed task makes it wrong.
    tempo_fault_worker.install("pool_graded", patch=monkeypatch.setattr)
    monkeypatch.setattr(build, "GradingPool", FaultyPool)
    start = time.monotonic()
    trainer = Trainer(config, str(tmp_path))
    try:
        trainer.train()
    finally:
        trainer.close()
    assert time.monotonic() - start < 120  # the 600 s task was cut at the 1.5 s deadline
    warmup = read_jsonl(str(tmp_path / "warmup_metrics.jsonl"))
    records = read_jsonl(str(tmp_path / "metrics.jsonl"))
    rows = config.data.prompts_per_step * config.rollout.n
    # Step 1 has no E-step (the critic was just warmed up), so it grades nothing.
    assert [r["grader/pool_tasks"] for r in warmup + records] == [rows, 0, rows]
    assert [r["grader/crashes"] for r in warmup + records] == [0, 0, 1]
    assert [r["grader/crashes_total"] for r in records] == [0, 1]
    assert records[1]["grader/timeouts"] >= 1 and records[1]["grader/timeouts_total"] >= 1
    # The crashed and the timed-out answer (and only they) were scored wrong.
    assert warmup[0]["warmup/labeled_accuracy"] == 1.0
    failed = records[1]["grader/crashes"] + records[1]["grader/timeouts"]
    assert records[1]["recalibrate/labeled_accuracy"] == (rows - failed) / rows < 1.0


def test_full_workdir_fails_before_anything_is_built(data_dir, tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr("tempo_jax.tempo.loop.build_run", lambda *a: built.append(a))
    config = micro_config(data_dir, **{"checkpoint.min_free_mb": 1 << 40})
    with pytest.raises(CheckpointDirectoryError, match="is nearly full"):
        Trainer(config, str(tmp_path))
    assert not built


def test_cli_unwritable_workdir_exits_1_with_a_clear_message(tmp_path):
    (tmp_path / "a_file").write_text("not a directory\n")
    workdir = tmp_path / "a_file" / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tempo_jax.cli",
            "train",
            f"--config={HERE / 'tempo_micro.py'}",
            f"--workdir={workdir}",
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)])),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"tempo-jax: error: workdir: checkpoint directory {workdir} cannot")
    assert "Traceback" not in proc.stderr
