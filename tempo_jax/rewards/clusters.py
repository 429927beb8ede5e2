"""Clustering of extracted answers by equivalence, within prompt groups (TTRL / EMPO baselines).

TTRL rewards the members of a group's largest answer cluster, EMPO a row's cluster frequency; both
need "which of these n answers are the same answer". Pairs are decided by quick_match in-process
where possible, the rest by `equiv` tasks on the grading pool (time- and memory-limited).
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

from tempo_jax.rewards.grading_pool import GradingCounters, GradingPool, shared_pool
from tempo_jax.rewards.latex_normalize import normalize_answer
from tempo_jax.rewards.quick_match import is_parseable_size, quick_match


@dataclasses.dataclass(frozen=True)
class AnswerClusters:
    """Cluster assignment of N answers.

    Attributes:
      cluster_ids: int64 [N]. Rows of one group with equal ids hold equivalent answers; ids are
        unique across groups and numbered 0, 1, ... in order of first appearance.
      valid: bool [N]; False where the answer is None or empty (such a row gets an id of its own).
      counters: `items` = answer pairs considered, `fast_path` = pairs decided in-process, plus
        the pool's timeouts / crashes (a failed pair counts as not equivalent).
    """

    cluster_ids: np.ndarray
    valid: np.ndarray
    counters: GradingCounters


def _group_key(value):
    """A hashable Python value for a group id (numpy scalars unwrapped)."""
    return value.item() if isinstance(value, np.generic) else value


def cluster_answers(
    answers: Sequence[str | None],
    group_ids: Sequence | np.ndarray,
    pool: GradingPool | None = None,
    timeout_s: float | None = None,
) -> AnswerClusters:
    """Clusters answers by equivalence within each group.

    Greedy and deterministic: within a group, distinct answers are visited in order of first
    appearance and join the first earlier cluster whose first answer is equivalent (equivalence
    with a tolerance is not transitive, so the representative decides). All needed pairs of a
    batch go to the pool at once: O(k^2) pairs for k distinct answers in a group.

    Args:
      answers: N extracted answers (box contents), None where a response had no box.
      group_ids: N group keys (e.g. prompt index); rows are compared only within a group.
      pool: the worker pool; default `grading_pool.shared_pool()`.
      timeout_s: wall-clock limit per pair sent to a worker; default the pool's.
    """
    group_ids = np.asarray(group_ids)
    if group_ids.shape != (len(answers),):
        raise ValueError(
            f"cluster_answers: group_ids has shape {group_ids.shape}, expected ({len(answers)},)"
        )
    keys: list[str | None] = []
    for i, answer in enumerate(answers):
        if answer is not None and not isinstance(answer, str):
            raise TypeError(f"cluster_answers: answers[{i}] is {type(answer).__name__}")
        key = normalize_answer(answer) if answer is not None else ""
        keys.append(key or None)
    valid = np.array([k is not None for k in keys], dtype=bool).reshape(len(keys))

    # Per group: its distinct normalised answers (first raw spelling kept for the workers).
    groups: dict = {}
    for i, key in enumerate(keys):
        if key is not None:
            distinct = groups.setdefault(_group_key(group_ids[i]), {})
            distinct.setdefault(key, answers[i])

    counters = GradingCounters()
    verdicts: dict[tuple, bool] = {}
    tasks, task_keys = [], []
    for group, distinct in groups.items():
        spellings = list(distinct.values())
        for x in range(len(spellings)):
            for y in range(x + 1, len(spellings)):
                counters.items += 1
                a, b = spellings[x], spellings[y]
                verdict = quick_match(a, b)
                if verdict is None and not (is_parseable_size(a) and is_parseable_size(b)):
                    counters.too_long += 1
                    verdict = False
                if verdict is None:
                    tasks.append(("equiv", [a, b]))
                    task_keys.append((group, x, y))
                else:
                    counters.fast_path += 1
                    verdicts[(group, x, y)] = verdict
    if tasks:
        pool = pool if pool is not None else shared_pool()
        outcomes, pool_counters = pool.run_tasks(tasks, timeout_s)
        counters.add(pool_counters)
        for key, outcome in zip(task_keys, outcomes, strict=True):
            verdicts[key] = bool(outcome.ok and outcome.result)
    if pool is not None:
        pool.count_decided(counters)

    # Greedy assignment: distinct answer index -> cluster index, per group.
    cluster_of: dict[tuple, int] = {}
    for group, distinct in groups.items():
        representatives: list[int] = []
        for y in range(len(distinct)):
            for c, x in enumerate(representatives):
                if verdicts[(group, x, y)]:
                    cluster_of[(group, y)] = c
                    break
            else:
                cluster_of[(group, y)] = len(representatives)
                representatives.append(y)

    distinct_index = {g: {k: j for j, k in enumerate(d)} for g, d in groups.items()}
    labels: dict[tuple, int] = {}
    cluster_ids = np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys):
        if key is None:
            label = ("invalid", i)
        else:
            group = _group_key(group_ids[i])
            label = ("group", group, cluster_of[(group, distinct_index[group][key])])
        cluster_ids[i] = labels.setdefault(label, len(labels))
    return AnswerClusters(cluster_ids=cluster_ids, valid=valid, counters=counters)
