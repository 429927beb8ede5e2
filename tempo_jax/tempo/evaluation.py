"""Evaluation on the unlabeled split (its hidden answers are read only here) and a holdout.

Per split: mean@n, unbiased pass@k, maj@n, greedy accuracy, diversity (distinct answers, answer
entropy, token entropy) and, when a critic exists, its quality (AUROC pooled and within each
question, explained variance, Brier, calibration error) on the same samples. Metric keys:
`eval/<split>/<metric>`.
"""

from __future__ import annotations

import numpy as np

from tempo_jax import parallel
from tempo_jax.rewards import eval_metrics
from tempo_jax.rewards.clusters import cluster_answers
from tempo_jax.rewards.math import grade_batch
from tempo_jax.sampling import SamplingParams
from tempo_jax.tempo.build import Run
from tempo_jax.tempo.phases import Timer, sample, sequences, step_seed


def _problems(run: Run, split: str):
    """The first `eval.num_problems` problems of `split` (all of them if it has fewer) as one
    batch, or None for an empty split. The sampler splits it into `rollout.max_rows_per_chunk`
    chunks and pads only its last chunk (to a prompt count whose rows divide over the mesh),
    never up to a training batch."""
    return next(iter(run.data.one_pass(split, batch_size=run.settings.eval.num_problems)), None)


def evaluate_split(
    run: Run,
    split: str,
    label: str,
    policy_params,
    critic_params,
    *,
    step: int,
    timer: Timer,
    records: list[dict] | None = None,
) -> dict[str, float]:
    """All evaluation metrics of one split under the current policy (and critic).

    With `records` (a list), one dict per problem is appended to it: the question, its ground
    truths, the n responses, their extracted answers and grades (and critic values), so that a
    report can show what was scored (`tempo-jax eval`)."""
    cfg = run.settings
    n = cfg.eval.n
    timeout_s = cfg.grader.timeout_s
    batch = _problems(run, split)
    if batch is None:
        raise ValueError(
            f"eval split {split!r} has no problem usable at data.max_prompt_length="
            f"{cfg.max_prompt_length}"
        )
    answers = batch.evaluation_answers()
    rows = sample(
        run,
        policy_params,
        batch,
        n=n,
        timer=timer,
        seed=step_seed(cfg.seed, step, "eval", 0),
        sampling=SamplingParams(temperature=cfg.eval.temperature),
    )
    truths = [answers[g] for g in rows.group_ids]
    greedy_correct = []
    if cfg.eval.greedy:
        greedy = sample(
            run,
            policy_params,
            batch,
            n=1,
            timer=timer,
            seed=0,
            sampling=SamplingParams(temperature=0.0, greedy=True),
        )
        with timer("grading"):
            graded = grade_batch(
                greedy.texts,
                [list(a) for a in answers],
                pool=run.pool,
                timeout_s=timeout_s,
            )
        greedy_correct = list(graded.correct)
    with timer("grading"):
        graded = grade_batch(
            rows.texts, [list(t) for t in truths], pool=run.pool, timeout_s=timeout_s
        )
        clusters = cluster_answers(rows.answers, rows.group_ids, pool=run.pool, timeout_s=timeout_s)
    correct = np.asarray(graded.correct, bool)
    problems = rows.num_rows // n
    ids = np.where(np.asarray(clusters.valid), np.asarray(clusters.cluster_ids), -1)
    out = eval_metrics.accuracy_metrics(
        correct.reshape(problems, n), ids.reshape(problems, n), tuple(cfg.eval.ks)
    )
    out["problems"] = float(problems)
    if greedy_correct:
        out["greedy_accuracy"] = float(np.mean(greedy_correct))
    out["response_length"] = float(rows.lengths.mean())
    entropy, values = _token_entropy_and_values(run, rows, policy_params, critic_params, timer)
    out["token_entropy"] = entropy
    v_last = None
    if values is not None:
        last = np.maximum(rows.lengths - 1, 0)
        v_last = values[np.arange(rows.num_rows), last]
        quality = eval_metrics.critic_quality(v_last, correct, group_ids=rows.group_ids)
        for key, value in quality.items():
            out[f"critic/{key}"] = value
    if records is not None:
        records.extend(_problem_records(batch, rows, correct, greedy_correct, v_last))
    return {f"eval/{label}/{k}": v for k, v in out.items()}


def _problem_records(batch, rows, correct, greedy_correct, v_last) -> list[dict]:
    """One dict per problem of `batch` that was sampled, its n rows picked by group id."""
    out = []
    answers = batch.evaluation_answers()
    for g in sorted(set(rows.group_ids.tolist())):
        idx = np.flatnonzero(rows.group_ids == g)
        record = {
            "row_id": batch.row_ids[g],
            "question": batch.questions[g],
            "ground_truths": list(answers[g]),
            "responses": [rows.texts[i] for i in idx],
            "answers": [rows.answers[i] for i in idx],
            "correct": [bool(correct[i]) for i in idx],
            "response_lengths": [int(rows.lengths[i]) for i in idx],
        }
        if greedy_correct:
            record["greedy_correct"] = bool(greedy_correct[g])
        if v_last is not None:
            record["critic_values"] = [float(v_last[i]) for i in idx]
        out.append(record)
    return out


def _token_entropy_and_values(run: Run, rows, policy_params, critic_params, timer):
    """Mean token entropy of the samples under the policy and the critic's values [N, L], in
    batches of one policy update's rows (`data.prompts_per_update` x `rollout.n`; the whole
    step's when 0), so 30 problems x 16 are padded to a multiple of that, not of a step."""
    chunk = run.settings.update_rows
    ent_sum, tok_sum, values = 0.0, 0, []
    for start in range(0, rows.num_rows, chunk):
        part = rows.take_rows(slice(start, start + chunk))
        if part.num_rows < chunk:
            part = part.pad_rows(chunk)
        seqs = sequences(part)
        with timer("eval_forward"):
            stats = parallel.host_from_global(run.token_stats(policy_params, seqs))
            mask = part.response_mask
            ent_sum += float((stats.entropy * mask).sum())
            tok_sum += int(mask.sum())
            if critic_params is not None:
                values.append(parallel.host_from_global(run.values(critic_params, seqs)))
    vals = None
    if values:
        vals = np.concatenate(values)[: rows.num_rows]
    return ent_sum / max(tok_sum, 1), vals


def evaluate(run: Run, policy_params, critic_params, *, step: int, timer: Timer) -> dict:
    """Evaluation on every configured split: `eval.splits` maps a label to a dataset split."""
    out = {}
    for label, split in run.settings.eval.splits:
        out.update(
            evaluate_split(run, split, label, policy_params, critic_params, step=step, timer=timer)
        )
    return out
