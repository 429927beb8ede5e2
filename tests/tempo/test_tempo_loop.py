"""The TEMPO loop on a micro config: every method runs, the schedule's phases and the parameters
that change are the right ones, and unlabeled answers never reach training."""

import dataclasses
import math
import types

import jax
import numpy as np
import pytest
from tempo_micro import micro_config

from tempo_jax.config import methods
from tempo_jax.config.settings import RunSettings
from tempo_jax.config.validation import ConfigError
from tempo_jax.data import batch as data_batch
from tempo_jax.rewards.math import grade_batch
from tempo_jax.tempo import functions, phases
from tempo_jax.tempo.evaluation import evaluate
from tempo_jax.tempo.loop import Trainer
from tempo_jax.tempo.phases import Timer, mini_batches
from tempo_jax.train.metric_writers import read_jsonl


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tempo_data"))


def params_of(state):
    return jax.tree.map(np.asarray, state.params) if state is not None else None


def tree_equal(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(x, y), a, b)))


def assert_calls_planned(trainer, planned=None):
    """Every function and shape the run compiled is one `planned_calls` names (so that
    `tempo-jax compile` measures what the loop runs); `planned` defaults to the run config's."""
    run = trainer.run
    planned = planned or functions.planned_calls(run.config, run.sampler.row_shards)
    assert set(run.functions.compiled) <= {c.key for c in planned}
    sampled = {(c.prompts, c.samples) for c in planned if c.function in functions.SAMPLERS}
    assert {(b, n) for b, n, _ in run.sampler.compiled_shapes} <= sampled


def run_steps(config, workdir):
    trainer = Trainer(config, str(workdir))
    try:
        return trainer, trainer.train()
    finally:
        trainer.close()


def check_method_run(method, trainer, state, workdir, steps):
    """What every method's run must show after `steps` steps of the micro config."""
    assert_calls_planned(trainer)
    assert state.step == steps
    records = read_jsonl(str(workdir / "metrics.jsonl"))
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    for r in records:
        assert math.isfinite(r["policy/loss"]) and math.isfinite(r["policy/grad_norm"])
        assert r["policy/skipped"] == 0
        assert r["timing/rollout_s"] > 0 and r["timing/policy_s"] > 0
    uses_critic = methods.get_method(method).uses_critic
    assert (state.critic is not None) == uses_critic
    assert (workdir / "summary.txt").exists() and (workdir / "eval_curves.png").exists() is False
    if method in ("ttrl", "empo", "intuitor"):
        assert all("policy/self_reward" in r or "policy/self_certainty" in r for r in records)


# These methods' runs are the tests below (the micro config, with the hidden answers replaced
# for the oracles; checked by `check_method_run` there too), so that each run is built once.
CHECKED_BELOW = ("tempo", "tempo_frozen", "tempo_mixed", "oracle", "tempo_oracle")


@pytest.mark.parametrize("method", sorted(set(methods.METHODS) - set(CHECKED_BELOW)))
def test_every_method_runs_two_steps(method, data_dir, tmp_path):
    # rlvr's DAPO filter needs mixed outcomes in a group; an untrained micro policy is always
    # wrong, so its groups are all filtered: it must fail with the clear error instead.
    assert set(CHECKED_BELOW) <= set(methods.METHODS)
    config = micro_config(data_dir, method)
    if method == "rlvr":
        with pytest.raises(RuntimeError, match="max_generation_batches"):
            run_steps(
                micro_config(data_dir, method, **{"rollout.max_generation_batches": 2}), tmp_path
            )
        return
    trainer, state = run_steps(config, tmp_path)
    check_method_run(method, trainer, state, tmp_path, 2)


class RecordingTrainer(Trainer):
    """Snapshots both networks around every phase."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.snapshots = []  # (phase, policy_before, policy_after, critic_before, critic_after)

    def _recalibrate(self, state, step, timer, metrics):
        p0, c0 = params_of(state.policy), params_of(state.critic)
        out = super()._recalibrate(state, step, timer, metrics)
        self.snapshots.append(
            ("recalibrate", p0, params_of(state.policy), c0, params_of(state.critic))
        )
        return out

    def _train_step(self, state):
        p0, c0 = params_of(state.policy), params_of(state.critic)
        n_before = len(self.snapshots)
        state, metrics = super()._train_step(state)
        if metrics["phase"] == "refine":
            assert len(self.snapshots) == n_before
            self.snapshots.append(
                ("refine", p0, params_of(state.policy), c0, params_of(state.critic))
            )
        return state, metrics


def test_phased_tempo_schedule_and_which_network_changes(data_dir, tmp_path):
    config = micro_config(data_dir, "tempo", total_steps=3)
    trainer = RecordingTrainer(config, str(tmp_path))
    try:
        state = trainer.train()
    finally:
        trainer.close()
    check_method_run("tempo", trainer, state, tmp_path, 3)
    phases_seen = [r["phase"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))]
    # recalibrate_every=2, warmed-up critic: step 0 refine, step 1 refine, step 2 E then M.
    assert phases_seen == ["refine", "refine", "recalibrate+refine"]
    kinds = [s[0] for s in trainer.snapshots]
    assert kinds == ["refine", "refine", "recalibrate"]
    for kind, p0, p1, c0, c1 in trainer.snapshots:
        if kind == "refine":
            assert tree_equal(c0, c1), "critic changed during an M-step"
            assert not tree_equal(p0, p1), "policy did not change during an M-step"
        else:
            assert tree_equal(p0, p1), "policy changed during an E-step"
            assert not tree_equal(c0, c1), "critic did not change during an E-step"


def test_frozen_critic_never_changes_after_warmup(data_dir, tmp_path):
    config = micro_config(data_dir, "tempo_frozen", total_steps=3)
    trainer = RecordingTrainer(config, str(tmp_path))
    try:
        state = trainer.train()
    finally:
        trainer.close()
    check_method_run("tempo_frozen", trainer, state, tmp_path, 3)
    assert [r["phase"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))] == ["refine"] * 3
    assert all(tree_equal(c0, c1) for _, _, _, c0, c1 in trainer.snapshots)


def test_unlabeled_answers_never_reach_training(data_dir, tmp_path, monkeypatch):
    config = micro_config(data_dir, "tempo_mixed", **{"data.labeled_fraction": 0.5})
    trainer, clean = run_steps(config, tmp_path / "clean")
    check_method_run("tempo_mixed", trainer, clean, tmp_path / "clean", 2)
    original = data_batch.HiddenAnswers.__init__

    def corrupted(self, answers):
        original(self, [None if a is None else (f"corrupted-{i}",) for i, a in enumerate(answers)])

    monkeypatch.setattr(data_batch.HiddenAnswers, "__init__", corrupted)
    _, dirty = run_steps(config, tmp_path / "dirty")
    assert tree_equal(params_of(clean.policy), params_of(dirty.policy))
    assert tree_equal(params_of(clean.critic), params_of(dirty.critic))
    clean_m = read_jsonl(str(tmp_path / "clean" / "metrics.jsonl"))
    dirty_m = read_jsonl(str(tmp_path / "dirty" / "metrics.jsonl"))
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("timing/")} for r in rs]  # noqa: E731
    assert strip(clean_m) == strip(dirty_m)


@pytest.mark.parametrize("method", ["oracle", "tempo_oracle"])
def test_only_the_oracle_reads_hidden_answers(method, data_dir, tmp_path, monkeypatch):
    assert [m.name for m in methods.METHODS.values() if m.reads_hidden_answers] == [
        "oracle",
        "tempo_oracle",
        "tempo_mixed_oracle",
    ]
    ttrl_run = types.SimpleNamespace(method=methods.get_method("ttrl"))
    with pytest.raises(ValueError, match="'ttrl' may not read D_U's hidden answers"):
        phases.grade_hidden(ttrl_run, None, "refine/a0/grade", None, None, Timer())
    # The oracle's M-step grades every rollout against its prompt's hidden answer: with the
    # hidden answers replaced, exactly the replacements reach the grader during training.
    original = data_batch.HiddenAnswers.__init__

    def corrupted(self, answers):
        original(self, [None if a is None else (f"corrupted-{i}",) for i, a in enumerate(answers)])

    graded = []

    def recording_grade_batch(texts, truths, **kwargs):
        graded.extend(t[0] for t in truths)
        return grade_batch(texts, truths, **kwargs)

    monkeypatch.setattr(data_batch.HiddenAnswers, "__init__", corrupted)
    monkeypatch.setattr(phases, "grade_batch", recording_grade_batch)
    config = micro_config(data_dir, method)
    trainer, state = run_steps(config, tmp_path)
    # Also this method's run for every method's checks (the replaced answers change rewards
    # only, which those checks do not read).
    check_method_run(method, trainer, state, tmp_path, 2)
    rows = config.data.prompts_per_step * config.rollout.n
    # tempo_oracle's critic warm-up grades D_L rollouts against D_L's own labels; only its
    # M-steps (one batch of rows each, no E-step in 2 steps) read the hidden answers.
    hidden = [t for t in graded if t.startswith("corrupted-")]
    assert len(hidden) == 2 * rows and len(graded) == rows * (2 + (method == "tempo_oracle"))
    for record in read_jsonl(str(tmp_path / "metrics.jsonl")):
        assert record["rollout/hidden_answer_accuracy"] == 0.0  # nothing equals "corrupted-i"


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("method", "nope", "config.method"),
        ("eval.num_problems", 0, "config.eval.num_problems"),
        ("eval.ks", (1, 4), "config.eval.ks"),
        ("rollout.top_p", 0.0, "config.rollout.top_p"),
        ("train.policy_optimizer.learning_rate", -1.0, "policy_optimizer.learning_rate"),
        ("tempo.advantage", "gae", "config.tempo.advantage"),
        ("data.prompts_per_update", 3, "config.data.prompts_per_update"),
        ("data.prompts_per_update", 8, "config.data.prompts_per_update"),
        ("model.attention", "flash", "config.model.attention"),
        ("rollout.max_rows_per_chunk", 1, "config.rollout.max_rows_per_chunk"),  # < n = 2
        ("train.length_buckets", (4, 16), "config.train.length_buckets"),  # 16 > L = 8
        ("tempo.whiten_scope", "rows", "config.tempo.whiten_scope"),
        ("tempo.oracle_flip_prob", 0.2, "config.tempo.oracle_flip_prob"),  # tempo has none
    ],
)
def test_invalid_config_names_the_field(data_dir, field, value, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        micro_config(data_dir, **{field: value})


def test_mini_batches_are_whole_interleaved_groups():
    # Groups in order of appearance 3, 0, 2, 1 (two rows each) -> mini-batches {3, 2} and {0, 1}.
    group_ids = np.array([3, 3, 0, 0, 2, 2, 1, 1])
    parts = mini_batches(group_ids, 2)
    assert [p.tolist() for p in parts] == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert [p.tolist() for p in mini_batches(group_ids, 1)] == [list(range(8))]
    with pytest.raises(ValueError, match="3 equal mini-batches"):
        mini_batches(group_ids, 3)
    with pytest.raises(ValueError, match=r"sizes \[1, 3\]"):
        mini_batches(np.array([0, 1, 1, 1]), 2)


def test_several_policy_updates_per_step_move_the_ratio_off_one(data_dir, tmp_path):
    # The authors' schedule: 8 prompts per step, 4 per update -> 2 optimizer updates per step,
    # advantages and old log-probs fixed at rollout time. The first update has every ratio at 1
    # (old log-probs are the current policy's), so it never clips; the second sees the policy
    # moved by a 1e-2 step, far outside GSPO's 3e-4 / 5e-4 band, so some of its tokens clip.
    changes = {
        "data.prompts_per_step": 8,
        "data.prompts_per_update": 4,
        "total_steps": 1,
        "tempo.critic_warmup_steps": 0,
    }
    _, state = run_steps(micro_config(data_dir, "tempo_mixed", **changes), tmp_path)
    assert int(state.policy.step) == 2  # optimizer updates, one per mini-batch
    (record,) = read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert record["policy/updates"] == 2 and record["policy/skipped"] == 0
    assert 0 < record["policy/clipfrac"] <= 0.5  # the mean of 0 (first) and the second's fraction


def test_evaluation_scores_exactly_the_requested_problems(data_dir, tmp_path):
    # 6 problems (more than the 4 prompts of a training batch) are sampled and scored as one
    # batch of 6 (padded to 8 prompts only for the 8 row shards at n = 1); asking for more than
    # a split holds (holdout 16, unlabeled 8 here: fewer shapes to compile than the default 32)
    # scores the whole split.
    config = micro_config(data_dir, "tempo_frozen", **{"data.num_unlabeled": 8})
    trainer = Trainer(config, str(tmp_path))
    planned = []
    try:
        state = trainer._fresh_state()
        config = trainer.run.config
        config.eval_every = 2  # what a run that evaluates plans
        for wanted, scored in ((6, 6), (100, 16)):
            config.eval.num_problems = wanted
            planned += functions.planned_calls(
                config, trainer.run.sampler.row_shards, eval_problems=(scored, min(wanted, 8))
            )
            # A Run's settings are built once: the changed config is another run's.
            run = dataclasses.replace(trainer.run, settings=RunSettings.from_config(config))
            out = evaluate(run, state.policy.params, state.critic.params, step=0, timer=Timer())
            assert out["eval/holdout/problems"] == scored
            assert out["eval/unlabeled/problems"] == min(wanted, 8)
            assert out["eval/holdout/pass@2"] >= out["eval/holdout/mean@2"]
        assert_calls_planned(trainer, planned)
        shapes = {(b, n) for b, n, _ in trainer.run.sampler.compiled_shapes}
        assert {(8, 2), (8, 1), (16, 2), (16, 1)} == shapes
    finally:
        trainer.close()
