"""Math answer grading: the public API (TEMPO_ALGORITHM.md §5).

    from tempo_jax.rewards import math as math_reward
    math_reward.extract_boxed(r"so \\boxed{\\frac12}")          # '\\frac12'
    math_reward.grade(r"... \\boxed{0.5}", r"\\frac{1}{2}")      # True
    with math_reward.GradingPool(num_workers=4) as pool:         # one pool for a whole run
        graded = math_reward.grade_batch(responses, truths, pool=pool)
        graded.rewards                                          # float32 [N] of +1 / -1

A response is correct when the content of its last box matches the (unboxed) ground truth under
the rules of equivalence.py. Several ground truths for one response (a list) give the fraction
matched; the response is correct when that fraction is > 0.5 (so one of two is NOT enough).

Cheap checks (quick_match.py) run in this process; everything else runs in worker processes under a
wall-clock and memory limit (grading_pool.py), so no answer can hang or exhaust the caller. This
module does not import sympy.
"""

import dataclasses
import numbers
from collections.abc import Sequence

import numpy as np

from tempo_jax.rewards.boxed import extract_boxed, unbox_ground_truth
from tempo_jax.rewards.clusters import AnswerClusters, cluster_answers
from tempo_jax.rewards.grading_pool import (
    GradingCounters,
    GradingPool,
    TaskOutcome,
    shared_pool,
)
from tempo_jax.rewards.latex_normalize import normalize_answer
from tempo_jax.rewards.quick_match import is_parseable_size, quick_match

__all__ = [
    "AnswerClusters",
    "BatchGrades",
    "GradingCounters",
    "GradingPool",
    "answers_equivalent",
    "cluster_answers",
    "extract_boxed",
    "grade",
    "grade_batch",
    "grade_fraction",
    "normalize_answer",
]

GroundTruth = str | numbers.Real | Sequence[str | numbers.Real]


@dataclasses.dataclass(frozen=True)
class BatchGrades:
    """Grades of a batch of N responses.

    Attributes:
      rewards: float32 [N], +1 correct / -1 wrong.
      correct: bool [N].
      fractions: float32 [N], fraction of each row's ground truths matched.
      counters: how the items were decided (timeouts, crashes, fast path, ...).
    """

    rewards: np.ndarray
    correct: np.ndarray
    fractions: np.ndarray
    counters: GradingCounters


def _truths(ground_truth: GroundTruth, where: str) -> list[str]:
    """The unboxed ground truths of one row; `where` names the row in errors."""
    if isinstance(ground_truth, (str, numbers.Real)):
        values = [ground_truth]
    elif isinstance(ground_truth, (Sequence, np.ndarray)):
        values = list(ground_truth)
    else:
        values = None
    if values is None or not values:
        raise TypeError(
            f"{where}: ground truth must be a str, a number or a non-empty list of them, "
            f"got {type(ground_truth).__name__}"
        )
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (str, numbers.Real)):
            raise TypeError(f"{where}: ground truth entry of type {type(value).__name__}")
        out.append(unbox_ground_truth(str(value)))
    return out


@dataclasses.dataclass
class _Row:
    """One response prepared for grading: per-truth verdicts, None where a worker must decide."""

    answer: str | None
    truths: list[str]
    verdicts: list[bool | None]

    @property
    def undecided(self) -> list[int]:
        return [j for j, v in enumerate(self.verdicts) if v is None]


def _prepare(response: str, ground_truth: GroundTruth, where: str) -> _Row:
    if not isinstance(response, str):
        raise TypeError(f"{where}: response must be str, got {type(response).__name__}")
    truths = _truths(ground_truth, where)
    answer = extract_boxed(response)
    if answer is None:
        return _Row(None, truths, [False] * len(truths))
    return _Row(answer, truths, [quick_match(answer, truth) for truth in truths])


def grade_batch(
    responses: Sequence[str],
    ground_truths: Sequence[GroundTruth],
    timeout_s: float | None = None,
    num_workers: int | None = None,
    pool: GradingPool | None = None,
) -> BatchGrades:
    """Grades N responses against their ground truths under per-item time and memory limits.

    Args:
      responses: N model responses (the last box in each is its answer).
      ground_truths: N ground truths; each a str / number or a list of them.
      timeout_s: wall-clock limit per item sent to a worker; default the pool's.
      num_workers: worker count of the shared pool when `pool` is None.
      pool: the worker pool; default `grading_pool.shared_pool(num_workers)`.

    Returns:
      BatchGrades with rewards float32 [N] in {+1, -1}. An item whose worker timed out, crashed or
      failed is wrong and counted in `counters`.
    """
    if len(responses) != len(ground_truths):
        raise ValueError(
            f"grade_batch: {len(responses)} responses but {len(ground_truths)} ground truths"
        )
    rows = [
        _prepare(r, g, f"grade_batch row {i}")
        for i, (r, g) in enumerate(zip(responses, ground_truths, strict=True))
    ]
    counters = GradingCounters(items=len(rows))
    tasks, task_rows = [], []
    for i, row in enumerate(rows):
        if row.answer is None:
            counters.no_box += 1
        elif not is_parseable_size(row.answer):
            # Oversized or deeply nested: normalised-string equality only, never a worker.
            counters.too_long += 1
            row.verdicts = [bool(v) for v in row.verdicts]
        elif not row.undecided:
            counters.fast_path += 1
        else:
            tasks.append(
                ("grade", {"answer": row.answer, "truths": [row.truths[j] for j in row.undecided]})
            )
            task_rows.append(i)
    if tasks:
        pool = pool if pool is not None else shared_pool(num_workers)
        outcomes, pool_counters = pool.run_tasks(tasks, timeout_s)
        counters.add(pool_counters)
        for i, outcome in zip(task_rows, outcomes, strict=True):
            _apply(rows[i], outcome)
    if pool is not None:
        pool.count_decided(counters)
    fractions = np.array(
        [sum(bool(v) for v in row.verdicts) / len(row.verdicts) for row in rows], np.float32
    ).reshape(len(rows))
    correct = fractions > 0.5
    rewards = np.where(correct, 1.0, -1.0).astype(np.float32)
    return BatchGrades(rewards=rewards, correct=correct, fractions=fractions, counters=counters)


def _apply(row: _Row, outcome: TaskOutcome) -> None:
    undecided = row.undecided
    results = outcome.result if outcome.ok else [False] * len(undecided)
    for j, verdict in zip(undecided, results, strict=True):
        row.verdicts[j] = bool(verdict)


def grade_fraction(
    response_text: str, ground_truth: GroundTruth, pool: GradingPool | None = None
) -> float:
    """Fraction of the ground truths (one, or a list) that the response's last box matches."""
    return float(grade_batch([response_text], [ground_truth], pool=pool).fractions[0])


def grade(response_text: str, ground_truth: GroundTruth, pool: GradingPool | None = None) -> bool:
    """Whether the response is correct (fraction of ground truths matched > 0.5).

    Expensive checks run in `pool` (default: the shared pool) under its time limit.
    """
    return bool(grade_batch([response_text], [ground_truth], pool=pool).correct[0])


def answers_equivalent(a: str | None, b: str | None, pool: GradingPool | None = None) -> bool:
    """Symmetric equivalence of two already-extracted answers (None matches nothing)."""
    if a is None or b is None:
        return False
    verdict = quick_match(a, b)
    if verdict is not None:
        return verdict
    pool = pool if pool is not None else shared_pool()
    (outcome,), _ = pool.run_tasks([("equiv", [a, b])])
    return bool(outcome.ok and outcome.result)
