"""Exact resume of the TEMPO trainer: kill -9 after a checkpoint, kill -9 at seeded moments (in a
save, in a step, on a timer), SIGTERM / SIGINT, and a restore onto another device mesh.

Every interrupted run is a `tempo-jax train` subprocess (tempo_fault_worker.py injects the fault);
the run that finishes it resumes in this process and must end bitwise equal, parameters and
metrics.jsonl lines (timings aside), to one uninterrupted run of the same config.
"""

import glob
import os
import random
import shutil
import signal
import subprocess

import jax
import pytest
import tempo_fault_worker
from tempo_micro import (
    checkpoint_steps,
    host,
    metric_lines,
    micro_config,
    run_trainer,
    trees_equal,
)

from tempo_jax.tempo import phases
from tempo_jax.tempo.loop import Trainer
from tempo_jax.train.metric_writers import read_jsonl

TOTAL = 4
# Phased tempo (E-step every 2nd step), both networks, an eval every 2 steps (sampled only: a
# greedy pass would be one more executable per process), a checkpoint at every step, async saves
# (the default) so that kills land on saves in flight.
CHANGES = {
    "total_steps": TOTAL,
    "save_every": 1,
    "eval_every": 2,
    "eval.greedy": False,
    "checkpoint.async_save": True,
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tempo_resume_data"))


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """One uninterrupted run: (workdir, final policy state, final critic state, metric lines)."""
    workdir = tmp_path_factory.mktemp("reference")
    state = run_trainer(micro_config(data_dir, **CHANGES), workdir)
    assert state.step == TOTAL
    return workdir, host(state.policy), host(state.critic), metric_lines(workdir)


def run_cli(fault: str, workdir, data_dir) -> subprocess.CompletedProcess:
    """`tempo-jax train` on the micro config with `fault` injected (see tempo_fault_worker)."""
    return tempo_fault_worker.run_cli(fault, workdir, data_dir, CHANGES)


def good_steps(workdir) -> list[int]:
    return checkpoint_steps(os.path.join(workdir, "checkpoints"))


def resume_and_compare(reference, data_dir, workdir, capsys, expect_step: int | str | None):
    """Finishes the run in this process; asserts where it resumed (a regular checkpoint's step,
    the text after "resuming from ", or None: nowhere) and that it matches the reference."""
    capsys.readouterr()
    state = run_trainer(micro_config(data_dir, **CHANGES), workdir)
    err = capsys.readouterr().err
    if expect_step is None:
        assert "resuming from" not in err, err
    elif isinstance(expect_step, str):
        assert f"resuming from {expect_step}" in err, err
    else:
        assert f"resuming from {workdir}/checkpoints/{expect_step} (step {expect_step})" in err, err
    _, policy, critic, lines = reference
    assert trees_equal(host(state.policy), policy), "policy state differs from the reference"
    assert trees_equal(host(state.critic), critic), "critic state differs from the reference"
    assert metric_lines(workdir) == lines


def test_kill_9_after_k_steps_then_k_more_equals_2k_steps(reference, data_dir, tmp_path, capsys):
    k = TOTAL // 2
    proc = run_cli(f"kill_after_save:{k}", tmp_path, data_dir)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert max(good_steps(tmp_path)) == k
    assert [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))] == list(range(k + 1))
    resume_and_compare(reference, data_dir, tmp_path, capsys, expect_step=k)


def test_kill_9_at_seeded_moments_every_resume_succeeds(reference, data_dir, tmp_path, capsys):
    rng = random.Random(20260)
    resumed_from = []
    # 1) In a save: the J-th save of the process (save 1 is the warm-up checkpoint, step 0)
    # dies after writing its files, before the commit, so step J-1 is lost and J-2 is the newest.
    j = rng.randint(2, 3)
    proc = run_cli(f"kill_in_save:{j}", tmp_path, data_dir)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert glob.glob(str(tmp_path / "checkpoints" / f"{j - 1}.orbax-checkpoint-tmp*"))
    assert max(good_steps(tmp_path)) == j - 2
    # 2) On a timer started with the first step (>= 3 steps remain: they take longer than the
    # delay), 3) within a step.
    delay = rng.uniform(0.05, 0.4)
    for kind in ("timer", "step"):
        newest = max(good_steps(tmp_path))
        assert newest < TOTAL
        if kind == "timer":
            fault = f"kill_after_s:{delay:.2f}"
        else:
            fault = f"kill_in_step:{rng.randint(1, TOTAL - newest)}"
        proc = run_cli(fault, tmp_path, data_dir)
        assert proc.returncode == -signal.SIGKILL, (fault, proc.stderr[-3000:])
        assert f"resuming from {tmp_path}/checkpoints/{newest} (step {newest})" in proc.stderr
        if kind == "timer":
            assert "unfinished save" in proc.stderr  # the save killed in 1) is reported
        resumed_from.append(newest)
        # Only whole steps were logged, none past what the process reached.
        steps = [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))]
        assert steps == list(range(len(steps)))
    assert resumed_from == sorted(resumed_from)
    # 4) The newest checkpoint is damaged after the fact (a truncated array file): the resume
    # skips it for the one before, and redoing its step replaces it.
    steps = good_steps(tmp_path)
    files = sorted(
        (tmp_path / "checkpoints" / str(steps[-1]) / "policy").rglob("*"),
        key=lambda p: p.stat().st_size if p.is_file() else -1,
    )
    os.truncate(files[-1], files[-1].stat().st_size // 2)
    assert good_steps(tmp_path) == steps[:-1]
    resume_and_compare(
        reference, data_dir, tmp_path, capsys, expect_step=steps[-2] if len(steps) > 1 else None
    )
    assert good_steps(tmp_path)[-1] == TOTAL


def test_sigterm_and_sigint_save_and_exit_0_then_resume_exactly(
    reference, data_dir, tmp_path, capsys, monkeypatch
):
    proc = run_cli("sigterm_in_step:2", tmp_path, data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The signal arrived in the middle of step 2, before its policy update: the run stopped at
    # the next phase boundary (the update's old log-probs) and saved there, inside step 2.
    saved = f"{tmp_path}/in_step_checkpoints/0"
    assert (
        f"Stopped on SIGTERM in step 2 after policy/old_logprobs; checkpoint saved to {saved}"
        in proc.stderr
    )
    assert max(good_steps(tmp_path)) == 1
    assert [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))] == [0, 1]
    assert not (tmp_path / "summary.txt").exists()  # the report is written when the run ends

    # SIGINT (Ctrl-C) in this process, in the middle of the step it resumes: the step's first
    # unit that is not replayed (its policy update) is the next stop point.
    policy_update = phases.policy_update

    def update_with_ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return policy_update(*args, **kwargs)

    monkeypatch.setattr(phases, "policy_update", update_with_ctrl_c)
    handler = signal.getsignal(signal.SIGINT)
    state = run_trainer(micro_config(data_dir, **CHANGES), tmp_path)
    err = capsys.readouterr().err
    assert state.step == 1
    assert f"resuming from {saved} (inside step 2, 4 units done)" in err
    again = f"{tmp_path}/in_step_checkpoints/1"
    assert f"Stopped on SIGINT in step 2 after policy/update0; checkpoint saved to {again}" in err
    assert signal.getsignal(signal.SIGINT) is handler  # the guard gave the handler back
    assert not os.path.exists(saved)  # the newer in-step checkpoint replaced it
    monkeypatch.undo()
    resume_and_compare(
        reference, data_dir, tmp_path, capsys, expect_step=f"{again} (inside step 2, 5 units"
    )
    assert (tmp_path / "summary.txt").exists()
    assert not os.listdir(tmp_path / "in_step_checkpoints")  # superseded by step 2's, deleted


def test_restore_onto_another_mesh_gives_the_same_state(reference, data_dir, tmp_path):
    ref_dir, policy, critic, _ = reference
    shutil.copytree(ref_dir / "checkpoints", tmp_path / "checkpoints")
    # Saved over fsdp=8; restored over data=2 x fsdp=2 x tensor=2.
    config = micro_config(
        data_dir,
        **CHANGES,
        **{"parallel.mesh.data": 2, "parallel.mesh.fsdp": 2, "parallel.mesh.tensor": 2},
    )
    trainer = Trainer(config, str(tmp_path))
    try:
        assert dict(trainer.run.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
        state = trainer._restore()
        assert state.step == TOTAL
        assert trees_equal(host(state.policy), policy)
        assert trees_equal(host(state.critic), critic)
        specs = {
            tuple(leaf.sharding.spec)
            for leaf in jax.tree.leaves(state.policy.params)
            if leaf.ndim > 1
        }
        assert any("tensor" in str(spec) for spec in specs), specs
        for leaf in jax.tree.leaves((state.policy, state.critic)):
            assert leaf.sharding.mesh.shape == trainer.run.mesh.shape
    finally:
        trainer.close()
