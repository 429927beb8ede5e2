"""The `grader/*` counters of a step record count every grading of that step, written once by the
loop from the grading pool (not by each phase, which used to leave the last grading's)."""

import numpy as np
from tempo_micro import micro_config, run_trainer

from tempo_jax.tempo import phases
from tempo_jax.train.metric_writers import read_jsonl


def test_a_step_with_two_gradings_counts_both(tmp_path, monkeypatch):
    # tempo_oracle with an E-step at every step after the first: step 2 grades the E-step's D_L
    # rows and the M-step's D_U rows (against their hidden answers). Labeled rows answer
    # "0+<truth>" (right, decided by a worker), unlabeled rows answer without a box (wrong,
    # decided in-process), so every count is known.
    sample = phases.sample

    def answered(*args, **kwargs):
        rows = sample(*args, **kwargs)
        for i in range(rows.num_rows):
            answer = f"0+{rows.ground_truths[i][0]}" if rows.is_labeled[i] else None
            rows.texts[i] = "no box" if answer is None else f"so \\boxed{{{answer}}}"
            rows.answers[i] = answer
        return rows

    monkeypatch.setattr(phases, "sample", answered)
    config = micro_config(str(tmp_path / "data"), "tempo_oracle", **{"tempo.recalibrate_every": 1})
    run_trainer(config, tmp_path / "run")
    rows = config.data.prompts_per_step * config.rollout.n  # 8
    warmup = read_jsonl(str(tmp_path / "run" / "warmup_metrics.jsonl"))
    records = read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
    assert [r["phase"] for r in records] == ["refine", "recalibrate+refine"]

    def counts(record):
        return {k: record[f"grader/{k}"] for k in ("items", "pool_tasks", "no_box", "fast_path")}

    assert counts(warmup[0]) == {"items": rows, "pool_tasks": rows, "no_box": 0, "fast_path": 0}
    assert counts(records[0]) == {"items": rows, "pool_tasks": 0, "no_box": rows, "fast_path": 0}
    assert counts(records[1]) == {
        "items": 2 * rows,
        "pool_tasks": rows,
        "no_box": rows,
        "fast_path": 0,
    }
    assert [r["grader/items_total"] for r in records] == [2 * rows, 4 * rows]
    assert [r["grader/pool_tasks_total"] for r in records] == [rows, 2 * rows]
    assert all(r["grader/timeouts"] == r["grader/crashes"] == 0 for r in warmup + records)
    # The rewards those counts describe: every D_L row right, every D_U row wrong.
    assert records[1]["recalibrate/labeled_accuracy"] == 1.0
    assert records[1]["rollout/hidden_answer_accuracy"] == 0.0
    assert np.isfinite(records[1]["policy/loss"])
