"""The tempo_oracle controls' reward (flips of known within-question AUROC) and the faithfulness
options of the loop: the E-step group filter and the defaults README's "Controls" decided."""

import dataclasses
import json

import numpy as np
import pytest
from tempo_micro import micro_config

from tempo_jax.config.defaults import get_config
from tempo_jax.config.settings import ConfigError
from tempo_jax.experiments import cadence, oracle_curve
from tempo_jax.rewards import eval_metrics
from tempo_jax.tempo import critic_negatives, functions, oracle_reward, phases
from tempo_jax.tempo.loop import Trainer
from tempo_jax.tempo.rollout_data import RolloutRows
from tempo_jax.train.metric_writers import read_jsonl


def _mixed_questions(rng, questions: int, n: int):
    """±1 rewards and group ids of `questions` groups of n, each with both outcomes."""
    correct = rng.random((questions, n)) < rng.uniform(0.2, 0.8, (questions, 1))
    correct[:, 0], correct[:, 1] = True, False
    return np.where(correct, 1.0, -1.0).ravel(), np.repeat(np.arange(questions), n)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.3, 0.5])
def test_flipped_reward_within_question_auroc_is_one_minus_p(p):
    # E[AUROC] = (1 - p)^2 + 2 p (1 - p) / 2 = 1 - p exactly (oracle_reward's docstring). The
    # per-question AUROC has sd <= ~0.35 here, so over 4000 questions the mean has s.e. <= 0.006:
    # the 0.02 tolerance is > 3 s.e.
    rng = np.random.default_rng(1)
    truth, groups = _mixed_questions(rng, 4000, 8)
    rows = np.ones(len(truth), bool)
    flipped, which = oracle_reward.flipped_rewards(truth, rows, seed=123, prob=p)
    metrics = oracle_reward.reward_metrics("refine", flipped, truth > 0, groups, which)
    assert metrics["refine/reward_auroc_within_question"] == pytest.approx(1 - p, abs=0.02)
    assert metrics["refine/reward_flipped_fraction"] == pytest.approx(p, abs=0.01)
    assert np.array_equal(flipped != truth, which)


def test_flips_are_seeded_per_row_nested_in_p_and_spare_labeled_rows():
    truth = np.where(np.arange(64) % 3 == 0, 1.0, -1.0)
    unlabeled = np.arange(64) >= 16
    a, fa = oracle_reward.flipped_rewards(truth, unlabeled, seed=7, prob=0.3)
    b, _ = oracle_reward.flipped_rewards(truth, unlabeled, seed=7, prob=0.3)
    _, fc = oracle_reward.flipped_rewards(truth, unlabeled, seed=8, prob=0.3)
    _, fd = oracle_reward.flipped_rewards(truth, unlabeled, seed=7, prob=0.5)
    assert np.array_equal(a, b) and not np.array_equal(fa, fc)  # a function of the seed
    assert not fa[:16].any() and fa[16:].any()  # labeled rows keep their graded reward
    assert np.all(fd[fa]) and fd.sum() > fa.sum()  # a larger p flips a superset
    # The first rows' flips do not depend on how many rows follow.
    _, short = oracle_reward.flipped_rewards(truth[:40], unlabeled[:40], seed=7, prob=0.3)
    assert np.array_equal(short, fa[:40])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        oracle_reward.flip_mask(7, 4, 1.5)


def test_reward_auroc_matches_eval_metrics():
    truth = np.array([1, -1, -1, 1, 1, -1], np.float32)
    rewards = np.array([1, 1, -1, -1, 1, -1], np.float32)
    groups = np.array([0, 0, 0, 1, 1, 1])
    got = oracle_reward.reward_metrics("mixed", rewards, truth > 0, groups, rewards != truth)
    want = eval_metrics.within_group_auroc(rewards, truth > 0, groups)
    assert got["mixed/reward_auroc_within_question"] == want == pytest.approx((0.75 + 0.75) / 2)


def test_estep_group_filter_drops_all_right_and_all_wrong_labeled_groups(tmp_path, monkeypatch):
    # A grader that marks rows 0 and 4 of every batch of 4 prompts x 2 samples right: groups 0
    # and 2 have both outcomes, 1 and 3 are all wrong. With the filter, each E-step keeps 2
    # groups a generation batch, so it takes 2 batches to fill 4 prompts; without, one batch.
    original = phases.grade_batch

    def two_mixed_groups(texts, truths, **kwargs):
        grades = original(texts, truths, **kwargs)
        right = np.arange(len(texts)) % 4 == 0
        return dataclasses.replace(grades, rewards=np.where(right, 1.0, -1.0), correct=right)

    monkeypatch.setattr(phases, "grade_batch", two_mixed_groups)
    data_dir = str(tmp_path / "data")
    for on, batches, dropped in ((True, 2, 4), (False, 1, 0)):
        workdir = tmp_path / f"filter-{on}"
        config = micro_config(data_dir, "tempo", total_steps=1, **{"tempo.estep_group_filter": on})
        trainer = Trainer(config, str(workdir))
        try:
            trainer.train()
        finally:
            trainer.close()
        (warmup,) = read_jsonl(str(workdir / "warmup_metrics.jsonl"))
        assert warmup["recalibrate/generation_batches"] == batches
        assert warmup["recalibrate/dropped_groups"] == dropped
        # The filtered batch is exactly half right; the unfiltered one a quarter.
        assert warmup["warmup/labeled_accuracy"] == (0.5 if on else 0.25)


def test_faithfulness_defaults():
    # Decided by the measurements in README ("Controls: is it the loop or the critic?").
    tempo = get_config().tempo
    assert tempo.advantage == "em_token"
    assert tempo.whiten_scope == "batch"
    assert tempo.estep_group_filter is False
    assert tempo.oracle_flip_prob == 0.0
    assert tempo.critic_negatives == 0
    assert get_config().method == "tempo"  # an upper bound is never the default


def _records(base, final, pass0, pass1, aurocs):
    out = [{"step": 0, "eval/unlabeled/mean@8": base, "eval/unlabeled/pass@8": pass0}]
    out += [{"step": i + 1, "refine/reward_auroc_within_question": a} for i, a in enumerate(aurocs)]
    out.append({"step": 4, "eval/unlabeled/mean@8": final, "eval/unlabeled/pass@8": pass1})
    return out


def test_oracle_curve_pairs_each_run_with_its_own_step_zero(tmp_path):
    point = oracle_curve.run_point(
        "tempo_oracle-r4-p0.2-s1", _records(0.5, 0.6, 0.9, 0.8, [0.8, float("nan"), 0.7])
    )
    assert (point["method"], point["p"], point["seed"]) == ("tempo_oracle", 0.2, 1)
    assert point["reward_auroc_within_question"] == pytest.approx(0.75)  # NaN steps skipped
    assert point["delta_mean"] == pytest.approx(0.1) and point["delta_pass"] == pytest.approx(-0.1)
    assert oracle_curve.run_point("tempo-s0", _records(0.5, 0.6, 0.9, 0.8, [])) is None
    other = oracle_curve.run_point("tempo_oracle-p0.2-s2", _records(0.4, 0.7, 0.9, 0.9, [0.65]))
    (row,) = oracle_curve.curves([point, other])["tempo_oracle"]
    assert row["seeds"] == [1, 2] and row["delta_mean"] == pytest.approx(0.2)
    assert row["delta_mean_se"] == pytest.approx(0.1)  # sd 0.1414 / sqrt(2)
    runs = {
        "ttrl-s0": {
            "step0": {"mean@8": 0.5, "pass@8": 0.9},
            "step24": {"mean@8": 0.6, "pass@8": 0.7},
        },
        "ttrl-s1": {
            "step0": {"mean@8": 0.5, "pass@8": 0.9},
            "step24": {"mean@8": 0.4, "pass@8": 0.9},
        },
    }
    (tmp_path / "runs.json").write_text(json.dumps({"runs": runs}))
    refs = oracle_curve.references(str(tmp_path / "runs.json"), ["ttrl", "oracle"])
    assert list(refs) == ["ttrl"] and refs["ttrl"]["delta_mean"] == pytest.approx(0.0)
    assert refs["ttrl"]["delta_pass"] == pytest.approx(-0.1)
    (tmp_path / "study.json").write_text(json.dumps({"split": "x", "toy": {"runs": runs}}))
    refs = oracle_curve.references(str(tmp_path / "study.json"), ["ttrl"], [1], section="toy")
    assert refs["ttrl"]["delta_mean"] == pytest.approx(-0.1) and refs["ttrl"]["n"] == 1
    with pytest.raises(ValueError, match="no section 'other'"):
        oracle_curve.references(str(tmp_path / "study.json"), ["ttrl"], section="other")


def test_cadence_study_pairs_each_run_with_base_and_the_references(tmp_path):
    # Two seeds; base mean@8 0.5 / 0.7. Final mean@8: tempo-r1 0.6 / 0.7, tempo-r4 0.4 / 0.6,
    # ttrl 0.5 / 0.8, rlvr 0.6 / 0.9; one unfinished run (step 0 only) and the SFT workdir are
    # left out.
    finals = {
        "tempo-r1": (0.6, 0.7),
        "tempo-r4": (0.4, 0.6),
        "ttrl": (0.5, 0.8),
        "rlvr": (0.6, 0.9),
    }
    for label, values in finals.items():
        for seed, (base, final) in enumerate(zip((0.5, 0.7), values, strict=True)):
            (tmp_path / f"{label}-s{seed}").mkdir()
            records = _records(base, final, 1.0, 0.9, [])
            path = tmp_path / f"{label}-s{seed}" / "metrics.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "tempo-r8-s0").mkdir()
    (tmp_path / "tempo-r8-s0" / "metrics.jsonl").write_text(
        json.dumps(_records(0.5, 0, 1, 0, [])[0])
    )
    (tmp_path / "sft-s0").mkdir()
    runs = cadence.read_runs(str(tmp_path))
    assert sorted(runs) == [
        "base-s0",
        "base-s1",
        *sorted(f"{k}-s{s}" for k in finals for s in (0, 1)),
    ]
    result = cadence.study(runs)
    assert result["cadence"] == {"tempo": [(1, "tempo-r1"), (4, "tempo-r4")]}
    mean = "eval/unlabeled/mean@8"
    r1, r4 = result["vs_base"]["tempo-r1"][mean], result["vs_base"]["tempo-r4"][mean]
    assert r1["mean"] == pytest.approx(0.05) and r1["se"] == pytest.approx(0.05)  # +0.1, 0
    assert r4["mean"] == pytest.approx(-0.1) and r4["se"] == pytest.approx(0.0)
    vs_ttrl = result["vs_ttrl"]["tempo-r1"][mean]  # +0.1, -0.1
    assert vs_ttrl["mean"] == pytest.approx(0.0) and vs_ttrl["n"] == 2
    vs_rlvr = result["vs_rlvr"]["tempo-r1"][mean]  # 0, -0.2
    assert vs_rlvr["mean"] == pytest.approx(-0.1) and vs_rlvr["se"] == pytest.approx(0.1)
    assert result["vs_base"]["tempo-r1"]["eval/unlabeled/pass@8"]["mean"] == pytest.approx(-0.1)
    text = cadence.markdown("toy", result)
    assert "| tempo-r1 | +0.050 ± 0.050 (+1.0) |" in text
    assert "Δ mean@8 vs ttrl | Δ mean@8 vs rlvr | seeds |" in text
    assert "0.000 ± 0.100 (-0.0) | -0.100 ± 0.100 (-1.0) | 2 |" in text
    assert cadence.main([f"--root=toy={tmp_path}", f"--out={tmp_path / 'out'}"]) == 0
    assert (tmp_path / "out" / "cadence.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "out" / "cadence.json").read_text())
    assert saved["toy"]["vs_base"]["tempo-r4"][mean]["mean"] == pytest.approx(-0.1)
    with pytest.raises(SystemExit):
        cadence.main([f"--root={tmp_path}", f"--out={tmp_path / 'out'}"])  # no NAME=


class _CharTokenizer:
    """One id per character (ids 2..), EOS 1, pad 0: enough for `with_negatives`."""

    def encode(self, text):
        return [ord(ch) for ch in text]


def _rows(texts, prompt_width=3, width=32):
    n = len(texts)
    tokens = np.zeros((n, prompt_width + width), np.int32)
    tokens[:, :prompt_width] = np.arange(n)[:, None] + 100  # a distinct prompt per row
    mask = np.zeros((n, width), bool)
    for i, text in enumerate(texts):
        ids = [ord(ch) for ch in text] + [1]
        tokens[i, prompt_width : prompt_width + len(ids)] = ids
        mask[i, : len(ids)] = True
    return RolloutRows(
        tokens=tokens,
        attention_mask=np.concatenate([np.ones((n, prompt_width), bool), mask], axis=1),
        response_mask=mask,
        group_ids=np.arange(n, dtype=np.int32),
        is_labeled=np.ones(n, bool),
        lengths=mask.sum(1).astype(np.int32),
        finish_reason=np.ones(n, np.int32),
        texts=list(texts),
        answers=[None] * n,
        ground_truths=[(t.rsplit("{", 1)[1].rstrip("}"),) for t in texts],
    )


def test_critic_negatives_break_exactly_one_step_and_carry_target_minus_one():
    right = ["3+4=7\n7-2=5\n5+9=14\n\\boxed{14}", "8-5=3\n3+6=9\n\\boxed{9}"]
    rows = _rows([*right, "1+1=3\n3+1=4\n\\boxed{4}"])  # the last is graded wrong
    rewards = np.array([1.0, 1.0, -1.0], np.float32)
    out, targets, metrics = critic_negatives.with_negatives(
        rows, rewards, 8, seed=3, tokenizer=_CharTokenizer(), eos_ids=(1,), pad_id=0
    )
    assert out.num_rows == 11 and metrics["critic_negatives/rows"] == 8
    np.testing.assert_array_equal(targets[:3], rewards)
    np.testing.assert_array_equal(targets[3:], -1.0)
    kinds = {"result": 0, "copy": 0}
    for j in range(3, 11):
        src = int(out.group_ids[j])  # the source row's prompt group (row src here)
        assert src in (0, 1)
        np.testing.assert_array_equal(out.tokens[j, :3], rows.tokens[src, :3])  # same prompt
        orig = rows.texts[src].split("\n")[:-1]
        bad = out.texts[j].split("\n")[:-1]
        assert len(bad) == len(orig)
        # Exactly one step is inconsistent: wrong arithmetic, or an operand that is not the
        # previous result / the question's operand; every other step checks.
        broken = []
        for k, line in enumerate(bad):
            a, op, b, c = critic_negatives._STEP.match(line).groups()
            oa, oop, ob, _ = critic_negatives._STEP.match(orig[k]).groups()
            arithmetic = critic_negatives._OPS[op](int(a), int(b)) == int(c)
            prev = bad[k - 1].split("=")[1] if k else oa
            copied = a == prev and b == ob and op == oop
            if not (arithmetic and copied):
                broken.append("result" if copied else "copy")
        assert len(broken) == 1, (rows.texts[src], out.texts[j])
        kinds[broken[0]] += 1
        last = bad[-1].split("=")[1]
        assert out.texts[j].endswith(f"\\boxed{{{last}}}") and last != rows.ground_truths[src][0]
        n = out.lengths[j]
        assert out.tokens[j, 3 + n - 1] == 1 and out.response_mask[j].sum() == n
    assert kinds == {"result": 4, "copy": 4}
    # after_break: the same rows, their loss mask from the first value that saw the broken token.
    late, _, _ = critic_negatives.with_negatives(
        rows,
        rewards,
        8,
        seed=3,
        tokenizer=_CharTokenizer(),
        eos_ids=(1,),
        pad_id=0,
        after_break=True,
    )
    np.testing.assert_array_equal(late.tokens, out.tokens)
    np.testing.assert_array_equal(late.attention_mask, out.attention_mask)
    for j in range(3, 11):
        src = int(out.group_ids[j])
        d = int(np.flatnonzero(out.tokens[j, 3:] != rows.tokens[src, 3:])[0])
        # One token per character: token d is the first character that differs.
        assert out.texts[j][:d] == rows.texts[src][:d] and out.texts[j][d] != rows.texts[src][d]
        np.testing.assert_array_equal(late.response_mask[j, : d + 1], False)
        np.testing.assert_array_equal(late.response_mask[j, d + 1 :], out.response_mask[j, d + 1 :])
    # Off: the batch is unchanged; no right row: placeholder rows without loss keep the shape.
    same, _, _ = critic_negatives.with_negatives(
        rows, rewards, 0, seed=3, tokenizer=_CharTokenizer(), eos_ids=(1,), pad_id=0
    )
    assert same is rows
    none, targets, metrics = critic_negatives.with_negatives(
        rows, -np.ones(3, np.float32), 2, seed=3, tokenizer=_CharTokenizer(), eos_ids=(1,), pad_id=0
    )
    assert (
        none.num_rows == 5
        and not none.is_labeled[3:].any()
        and metrics["critic_negatives/rows"] == 0
    )


def test_critic_batches_hold_the_negatives(tmp_path, monkeypatch):
    # Every labeled rollout of the micro run writes and is graded as a right 2-step solution, so
    # each critic warm-up / E-step batch of 8 rows gains 8 corrupted rows with target -1 (16 rows
    # divide over the 8 fake devices).
    solution = "1+2=3\n3+4=7\n\\boxed{7}"
    original_sample = phases.sample

    def scripted(run, *args, **kwargs):
        rows = original_sample(run, *args, **kwargs)
        ids = [*run.data.tokenizer.encode(solution), run.eos_ids[0]]
        p = rows.tokens.shape[1] - rows.response_mask.shape[1]
        for i in np.flatnonzero(rows.is_labeled):
            rows.tokens[i, p:] = run.pad_id
            rows.tokens[i, p : p + len(ids)] = ids
            rows.response_mask[i] = np.arange(rows.response_mask.shape[1]) < len(ids)
            rows.attention_mask[i, p:] = rows.response_mask[i]
            rows.lengths[i], rows.texts[i] = len(ids), solution
        return rows

    def all_right(texts, truths, **kwargs):
        grades = original_grade(texts, truths, **kwargs)
        return dataclasses.replace(
            grades, rewards=np.ones(len(texts)), correct=np.ones(len(texts), bool)
        )

    original_grade = phases.grade_batch
    monkeypatch.setattr(phases, "sample", scripted)
    monkeypatch.setattr(phases, "grade_batch", all_right)
    seen = []
    original_update = phases.critic_update

    def record(run, journal, critic, rows, rewards, timer, **kwargs):
        seen.append((rows.num_rows, rewards.copy(), list(rows.texts)))
        return original_update(run, journal, critic, rows, rewards, timer, **kwargs)

    monkeypatch.setattr(phases, "critic_update", record)
    config = micro_config(
        str(tmp_path / "data"),
        "tempo",
        total_steps=1,
        **{"tempo.critic_negatives": 8, "rollout.max_new_tokens": 24},
    )
    trainer = Trainer(config, str(tmp_path / "run"))
    try:
        trainer.train()
        # `tempo-jax compile` plans the critic's N + K-row shapes the run compiled.
        planned = functions.planned_calls(config, trainer.run.sampler.row_shards)
        assert set(trainer.run.functions.compiled) <= {c.key for c in planned}
        assert ("critic_step", 16) in {(c.function, c.rows) for c in planned}
    finally:
        trainer.close()
    assert seen  # the warm-up step (and any E-step of step 1)
    for num_rows, rewards, texts in seen:
        assert num_rows == 16
        np.testing.assert_array_equal(rewards[8:], -1.0)
        assert all(t != solution and t.count("\n") == 2 for t in texts[8:])
    (warmup,) = read_jsonl(str(tmp_path / "run" / "warmup_metrics.jsonl"))
    assert warmup["critic_negatives/rows"] == 8
    assert warmup["warmup/labeled_rows"] == 16  # the value loss saw all of them
    with pytest.raises(ConfigError, match=r"config\.tempo\.critic_negatives"):
        micro_config("", "ttrl", **{"tempo.critic_negatives": 4})
    with pytest.raises(ConfigError, match=r"config\.tempo\.critic_negatives must be an int"):
        micro_config("", "tempo", **{"tempo.critic_negatives": -1})


def test_mixed_recalibrate_every_updates_the_critic_on_every_kth_step(tmp_path, monkeypatch):
    # tempo_mixed with tempo.mixed_recalibrate_every = 2: after the 1-step warm-up, the critic's
    # value-loss update runs on step 0 and not on step 1, where the policy still updates on the
    # whole mixed batch (its labeled rows included).
    updates = []
    original_update = phases.critic_update

    def record(run, journal, critic, rows, rewards, timer, **kwargs):
        updates.append((kwargs.get("prefix"), int(rows.is_labeled.sum())))
        return original_update(run, journal, critic, rows, rewards, timer, **kwargs)

    monkeypatch.setattr(phases, "critic_update", record)
    changes = {"tempo.mixed_recalibrate_every": 2, "data.labeled_fraction": 0.5}
    config = micro_config(str(tmp_path / "data"), "tempo_mixed", **changes)
    trainer = Trainer(config, str(tmp_path / "run"))
    try:
        trainer.train()
    finally:
        trainer.close()
    records = read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
    assert [r["mixed/critic_updated"] for r in records] == [1.0, 0.0]
    assert ["critic/loss" in r for r in records] == [True, False]
    assert [r["policy/rows"] for r in records] == [8, 8]  # labeled and unlabeled rows alike
    # The warm-up's update (all 8 rows labeled), then step 0's only.
    assert [prefix for prefix, _ in updates] == ["warmup", "critic"] and updates[0][1] == 8
    with pytest.raises(ConfigError, match=r"tempo\.mixed_recalibrate_every"):
        micro_config(str(tmp_path / "data"), "tempo", **{"tempo.mixed_recalibrate_every": 2})
