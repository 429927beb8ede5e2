"""Preemption inside a step: SIGTERM at named phase boundaries (between rollout chunks, between
critic updates, between mini-batch policy updates, inside and between critic warm-up steps)
saves an in-step checkpoint within that step, and the resumed run ends bitwise equal to one
that never stopped: parameters, optimizer states, metrics.jsonl, warmup_metrics.jsonl and
TensorBoard (one value per step).

The signal comes from tempo_fault_worker's hooks at a journal unit's boundary (deterministic:
no timers). A step here is 8 prompts x 2 samples = 16 rows, sampled in 2 chunks of 8 rows,
graded, and used by 2 critic updates (E-step, every 2nd step) or 2 mini-batch policy updates
of 4 prompts. Labeled answers are graded by pool tasks (tempo_fault_worker's "pool_graded"), so
the grader counters of a resumed step must add the part done before the stop.
"""

import os

import pytest
import tempo_fault_worker
from tempo_micro import checkpoint_steps, host, metric_lines, micro_config, run_trainer, trees_equal

from tempo_jax.train import event_files
from tempo_jax.train.checkpointing import Checkpointer
from tempo_jax.train.metric_writers import read_jsonl

TOTAL = 3
# Steps 1 and 2: M-step only; step 3: E-step (2 critic updates) then M-step.
CHANGES = {
    "total_steps": TOTAL,
    "save_every": 1,
    "data.prompts_per_step": 8,
    "data.prompts_per_update": 4,
    "rollout.max_rows_per_chunk": 8,
    "tempo.critic_updates": 2,
    "tempo.critic_warmup_steps": 2,
}
WARMUP = "warmup_metrics.jsonl"
GRADED = "pool_graded"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("preempt_in_step_data"))


def run(data_dir, workdir, faults=GRADED):
    """The trainer in this process with `faults` injected while it runs."""
    with pytest.MonkeyPatch.context() as patched:
        tempo_fault_worker.install(faults, patch=patched.setattr)
        return run_trainer(micro_config(data_dir, **CHANGES), workdir)


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """One uninterrupted run: final policy and critic states, metrics and warm-up lines."""
    workdir = tmp_path_factory.mktemp("reference")
    state = run(data_dir, workdir)
    assert state.step == TOTAL
    warmup = read_jsonl(str(workdir / WARMUP))
    assert all(r["grader/pool_tasks"] == 16 for r in warmup)  # every labeled row, by a worker
    return (
        host(state.policy),
        host(state.critic),
        metric_lines(workdir),
        metric_lines(workdir, WARMUP),
    )


def stop_in_process(fault, data_dir, workdir, capsys) -> str:
    """Runs the trainer here with `fault` injected until it stops; its stderr."""
    capsys.readouterr()
    run(data_dir, workdir, f"{GRADED},{fault}")
    return capsys.readouterr().err


def in_step_progress(workdir, step: int) -> tuple[int, dict]:
    """(TTT steps done, progress metadata) of in-step checkpoint `step`, the only one."""
    with Checkpointer(workdir / "in_step_checkpoints", read_only=True) as ckpt:
        assert ckpt.all_steps() == [step]
        metadata = ckpt.metadata(step)
    return metadata["step"], metadata["progress"]


def regular_steps(workdir) -> list[int]:
    return checkpoint_steps(workdir / "checkpoints")


def finish_and_compare(reference, data_dir, workdir, capsys, resumed_from: str) -> None:
    capsys.readouterr()
    state = run(data_dir, workdir)
    assert f"resuming from {resumed_from}" in capsys.readouterr().err
    policy, critic, lines, warmup_lines = reference
    assert trees_equal(host(state.policy), policy), "policy state differs from the reference"
    assert trees_equal(host(state.critic), critic), "critic state differs from the reference"
    assert metric_lines(workdir) == lines
    assert metric_lines(workdir, WARMUP) == warmup_lines
    assert regular_steps(workdir)[-1] == TOTAL
    assert not os.listdir(workdir / "in_step_checkpoints")  # superseded and deleted
    tensorboard = event_files.scalars(str(workdir / "tensorboard"))
    assert [s for s, _ in tensorboard["policy/loss"]] == list(range(1, TOTAL + 1))


def test_sigterm_between_chunks_critic_updates_and_mini_batches_resumes_bitwise(
    reference, data_dir, tmp_path, capsys
):
    saved = f"{tmp_path}/in_step_checkpoints/0"
    # 1) SIGTERM between the two rollout chunks of step 2: the run saves inside step 2 (the
    # first chunk kept) and returns (test_tempo_resume runs the CLI: exit code 0).
    err = stop_in_process("sigterm_at:step 2@refine/a0/chunk0", data_dir, tmp_path, capsys)
    stopped = "Stopped on SIGTERM in step 2 after refine/a0/chunk0"
    assert f"{stopped}; checkpoint saved to {saved}" in err
    steps_done, progress = in_step_progress(tmp_path, 0)
    assert steps_done == 1 and [u["name"] for u in progress["units"]] == ["refine/a0/chunk0"]
    assert regular_steps(tmp_path) == [0, 1]  # nothing saved for step 2
    assert [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))] == [1]

    # 2) Resumed: step 2 continues from its second chunk; SIGTERM after step 3's first critic
    # update (E-step) stops inside step 3.
    err = stop_in_process("sigterm_at:step 3@critic/update0", data_dir, tmp_path, capsys)
    assert f"resuming from {saved} (inside step 2, 1 units done)" in err
    assert f"Stopped on SIGTERM in step 3 after critic/update0; checkpoint saved to {saved}" in err
    steps_done, progress = in_step_progress(tmp_path, 0)  # step 2's was deleted once step 2 ended
    names = [u["name"] for u in progress["units"]]
    assert steps_done == 2 and names[-2:] == ["critic/old_values", "critic/update0"]
    assert progress["grader_done"]["pool_tasks"] == 16  # the E-step's grading, before the stop
    assert regular_steps(tmp_path) == [0, 1, 2]

    # 3) Resumed: the E-step's second update, then SIGTERM between the M-step's two mini-batch
    # policy updates.
    err = stop_in_process("sigterm_at:step 3@policy/update0", data_dir, tmp_path, capsys)
    again = f"{tmp_path}/in_step_checkpoints/1"
    assert f"Stopped on SIGTERM in step 3 after policy/update0; checkpoint saved to {again}" in err
    _, progress = in_step_progress(tmp_path, 1)
    names = [u["name"] for u in progress["units"]]
    assert names.count("critic/update1") == 1 and names[-2:] == [
        "policy/old_logprobs",
        "policy/update0",
    ]
    assert [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))] == [1, 2]

    # 4) The last resume finishes step 3 with its second mini-batch.
    finish_and_compare(reference, data_dir, tmp_path, capsys, f"{again} (inside step 3, ")


def test_warmup_stopped_between_and_inside_its_steps_resumes_bitwise(
    reference, data_dir, tmp_path, capsys
):
    saved = f"{tmp_path}/in_step_checkpoints/0"
    # 1) Between warm-up steps 1 and 2: nothing of step 2 done, no regular checkpoint yet.
    err = stop_in_process("sigterm_after_warmup:1", data_dir, tmp_path, capsys)
    assert f"Stopped on SIGTERM before warm-up step 2; checkpoint saved to {saved}" in err
    _, progress = in_step_progress(tmp_path, 0)
    assert progress["in_warmup"] and progress["warmup_steps_done"] == 1 and not progress["units"]
    assert regular_steps(tmp_path) == []
    assert metric_lines(tmp_path, WARMUP) == reference[3][:1]

    # 2) Inside warm-up step 2, between its rollout chunks.
    fault = "sigterm_at:warm-up step 2@recalibrate/a0/chunk0"
    err = stop_in_process(fault, data_dir, tmp_path, capsys)
    assert f"resuming from {saved} (inside warm-up step 2, 0 units done)" in err
    again = f"{tmp_path}/in_step_checkpoints/1"
    stopped = "Stopped on SIGTERM in warm-up step 2 after recalibrate/a0/chunk0"
    assert f"{stopped}; checkpoint saved to {again}" in err
    assert metric_lines(tmp_path, WARMUP) == reference[3][:1]  # step 2's record not yet written

    # 3) The resumed run ends the warm-up and the three steps exactly as the reference did.
    finish_and_compare(reference, data_dir, tmp_path, capsys, f"{again} (inside warm-up step 2, 1")
