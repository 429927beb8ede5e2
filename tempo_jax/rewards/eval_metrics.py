"""Evaluation metrics of TEMPO_ALGORITHM.md §6, in numpy (they run outside jit, on host data).

Accuracy: mean@k, unbiased pass@k, maj@k. Diversity: distinct answers per problem, answer
entropy. Critic quality: AUROC (pooled, and within each question), explained variance, Brier
score, expected calibration error.

Inputs are per-problem arrays: `correct [P, n]` (bool) for P problems with n samples each, and
answer cluster ids `[P, n]` (int; equal ids within a row are equivalent answers, -1 = no answer).
"""

from __future__ import annotations

import math

import numpy as np


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k estimator `1 - C(n-c, k) / C(n, k)` (Chen et al., 2021).

    Computed as a product to stay exact and overflow-free for large n.
    """
    n, c = num_samples, num_correct
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"num_correct={c} outside [0, {n}]")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=0}^{k-1} (n-c-i) / (n-i)
    return 1.0 - float(np.prod((n - c - np.arange(k)) / (n - np.arange(k))))


def mean_pass_at_k(correct: np.ndarray, k: int) -> float:
    """Average over problems of unbiased pass@k; `correct [P, n]`."""
    correct = np.asarray(correct, bool)
    n = correct.shape[1]
    return float(np.mean([pass_at_k(n, int(c), k) for c in correct.sum(axis=1)]))


def mean_at_k(correct: np.ndarray) -> float:
    """mean@k: average over problems of the fraction of the k samples that are correct."""
    return float(np.mean(np.asarray(correct, bool).mean(axis=1)))


def majority_answer_index(cluster_ids: np.ndarray) -> int:
    """Index of one sample in the largest answer cluster of one problem (`[n]`, -1 = none).

    Ties go to the cluster whose first member comes first (deterministic). Returns -1 when no
    sample has an answer.
    """
    ids = np.asarray(cluster_ids)
    valid = ids >= 0
    if not valid.any():
        return -1
    labels, first, counts = np.unique(ids[valid], return_index=True, return_counts=True)
    best = np.flatnonzero(counts == counts.max())
    winner = labels[best[np.argmin(first[best])]]
    return int(np.flatnonzero(ids == winner)[0])


def maj_at_k(correct: np.ndarray, cluster_ids: np.ndarray) -> float:
    """maj@k: accuracy of the majority (equivalence-clustered) answer among the k samples."""
    correct = np.asarray(correct, bool)
    hits = []
    for row_correct, row_ids in zip(correct, np.asarray(cluster_ids), strict=False):
        idx = majority_answer_index(row_ids)
        hits.append(bool(row_correct[idx]) if idx >= 0 else False)
    return float(np.mean(hits))


def distinct_answers(cluster_ids: np.ndarray) -> float:
    """Mean number of distinct final answers per problem (rows without an answer not counted)."""
    return float(np.mean([len(set(row[row >= 0].tolist())) for row in np.asarray(cluster_ids)]))


def answer_entropy(cluster_ids: np.ndarray) -> float:
    """Mean over problems of the entropy (nats) of the answer distribution; no answer is its own
    outcome, so a model that never answers has entropy 0."""
    out = []
    for row in np.asarray(cluster_ids):
        _, counts = np.unique(row, return_counts=True)
        p = counts / counts.sum()
        out.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(out))


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for binary `labels` (Mann-Whitney U, ties count 1/2).

    Returns NaN when only one class is present (undefined, not 0.5).
    """
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels, bool).ravel()
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    ranks = _average_ranks(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x), np.float64)
    start = 0
    while start < len(x):
        end = start
        while end + 1 < len(x) and sorted_x[end + 1] == sorted_x[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def explained_variance(targets: np.ndarray, predictions: np.ndarray) -> float:
    """`1 - Var(y - ŷ) / Var(y)`; NaN when the targets have zero variance."""
    y = np.asarray(targets, np.float64).ravel()
    y_hat = np.asarray(predictions, np.float64).ravel()
    var_y = y.var()
    if var_y == 0:
        return math.nan
    return float(1.0 - (y - y_hat).var() / var_y)


def brier_score(prob_correct: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared error between predicted P(correct) in [0, 1] and the 0/1 outcome."""
    p = np.asarray(prob_correct, np.float64).ravel()
    y = np.asarray(labels, bool).ravel().astype(np.float64)
    return float(np.mean((p - y) ** 2))


def expected_calibration_error(
    prob_correct: np.ndarray, labels: np.ndarray, num_bins: int = 10
) -> float:
    """ECE with equal-width bins on [0, 1]: sum_b |B|/N * |acc(B) - conf(B)|."""
    p = np.clip(np.asarray(prob_correct, np.float64).ravel(), 0.0, 1.0)
    y = np.asarray(labels, bool).ravel().astype(np.float64)
    bins = np.minimum((p * num_bins).astype(int), num_bins - 1)
    ece = 0.0
    for b in range(num_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(y[in_bin].mean() - p[in_bin].mean())
    return float(ece)


def value_to_prob(values: np.ndarray) -> np.ndarray:
    """Map a critic value in [-1, 1] (rewards are ±1) to P(correct) = (v + 1) / 2, clipped."""
    return np.clip((np.asarray(values, np.float64) + 1.0) / 2.0, 0.0, 1.0)


def within_group_auroc(scores: np.ndarray, labels: np.ndarray, group_ids: np.ndarray) -> float:
    """Mean over groups (e.g. the samples of one question) of the AUROC inside the group, over
    the groups that hold both classes; NaN when none does.

    A reward that ranks the answers to one question (what a policy gradient with per-question
    baselines uses) needs this above 0.5; the pooled AUROC can be high from ranking questions
    by difficulty alone.
    """
    scores, labels = np.asarray(scores).ravel(), np.asarray(labels, bool).ravel()
    group_ids = np.asarray(group_ids).ravel()
    per_group = [
        auroc(scores[group_ids == g], labels[group_ids == g])
        for g in np.unique(group_ids)
        if 0 < labels[group_ids == g].sum() < (group_ids == g).sum()
    ]
    return float(np.mean(per_group)) if per_group else math.nan


def critic_quality(
    values: np.ndarray, correct: np.ndarray, group_ids: np.ndarray | None = None
) -> dict[str, float]:
    """Critic metrics from its final-token values `[M]` and the ±1 outcomes' correctness `[M]`;
    with `group_ids [M]` (the question of each sample) also `auroc_within_question`."""
    values = np.asarray(values, np.float64).ravel()
    correct = np.asarray(correct, bool).ravel()
    prob = value_to_prob(values)
    out = {
        "auroc": auroc(values, correct),
        "explained_variance": explained_variance(np.where(correct, 1.0, -1.0), values),
        "brier": brier_score(prob, correct),
        "calibration_error": expected_calibration_error(prob, correct),
    }
    if group_ids is not None:
        out["auroc_within_question"] = within_group_auroc(values, correct, group_ids)
    return out


def accuracy_metrics(
    correct: np.ndarray, cluster_ids: np.ndarray, ks: tuple[int, ...]
) -> dict[str, float]:
    """mean@n, pass@k for each k <= n, maj@n, and diversity for `[P, n]` per-problem samples."""
    correct = np.asarray(correct, bool)
    n = correct.shape[1]
    out = {f"mean@{n}": mean_at_k(correct), f"maj@{n}": maj_at_k(correct, cluster_ids)}
    for k in ks:
        if k <= n:
            out[f"pass@{k}"] = mean_pass_at_k(correct, k)
    out["distinct_answers"] = distinct_answers(cluster_ids)
    out["answer_entropy"] = answer_entropy(cluster_ids)
    return out
