"""Answer equivalence and clustering within prompt groups (TTRL / EMPO baselines)."""

import numpy as np
import pytest

from tempo_jax.rewards import math as math_reward
from tempo_jax.rewards.clusters import cluster_answers


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ("0.5", r"\frac{1}{2}", True),
        (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}", True),
        ("x=3", "3", True),
        ("3", "x=3", True),  # symmetric
        (r"\{1,2\}", r"\{2,1\}", True),
        ("(1,2)", "(2,1)", False),
        ("2", "-2", False),
        (None, "2", False),
        (None, None, False),
    ],
)
def test_answers_equivalent(a, b, expected, grading_pool):
    assert math_reward.answers_equivalent(a, b, pool=grading_pool) is expected


def _same(ids, i, j):
    return ids[i] == ids[j]


def test_cluster_answers_hand_made_groups(grading_pool):
    answers = [
        # group 7: {1/2, 0.5, \frac{2}{4}}, {3, x=3}, None, {-2}
        "1/2",
        "0.5",
        None,
        "3",
        r"\frac{2}{4}",
        "x = 3",
        "-2",
        # group 2: {\sqrt{4}, 2, 2.0}, {(1,2)}, {(2,1)}, "" (empty: invalid)
        r"\sqrt{4}",
        "(1,2)",
        "2",
        "(2,1)",
        "",
        "2.0",
        # group 5: "1/2" again must not join group 7's cluster
        "1/2",
    ]
    groups = np.array([7] * 7 + [2] * 6 + [5])
    result = cluster_answers(answers, groups, pool=grading_pool)
    ids, valid = result.cluster_ids, result.valid
    assert ids.dtype == np.int64 and ids.shape == (14,)
    np.testing.assert_array_equal(valid, [a not in (None, "") for a in answers])
    # group 7
    assert _same(ids, 0, 1) and _same(ids, 0, 4)
    assert _same(ids, 3, 5) and not _same(ids, 0, 3)
    assert len({ids[0], ids[3], ids[6], ids[2]}) == 4
    # group 2
    assert _same(ids, 7, 9) and _same(ids, 7, 12)
    assert len({ids[7], ids[8], ids[10], ids[11]}) == 4
    # group 5: its own cluster, ids unique across groups
    assert ids[13] not in set(ids[:13].tolist())
    # ids number clusters 0.. in order of first appearance; invalid rows get their own
    assert ids[0] == 0 and sorted(set(ids.tolist())) == list(range(len(set(ids.tolist()))))
    assert result.counters.items >= result.counters.fast_path > 0
    assert result.counters.timeouts == 0


def test_cluster_sizes_give_a_majority(grading_pool):
    answers = ["4", r"\frac{8}{2}", "4.0", "5", "five", None, r"2^2", "5"]
    result = cluster_answers(answers, [0] * 8, pool=grading_pool)
    ids = result.cluster_ids[result.valid]
    values, counts = np.unique(ids, return_counts=True)
    assert counts.max() == 4  # 4, 8/2, 4.0, 2^2
    assert result.cluster_ids[0] == values[counts.argmax()]
    assert _same(result.cluster_ids, 3, 7) and not _same(result.cluster_ids, 3, 4)


def test_cluster_answers_validates_inputs(grading_pool):
    with pytest.raises(ValueError, match="group_ids has shape"):
        cluster_answers(["1", "2"], [0], pool=grading_pool)
    with pytest.raises(TypeError, match=r"answers\[1\] is int"):
        cluster_answers(["1", 2], [0, 0], pool=grading_pool)
    empty = cluster_answers([], [], pool=grading_pool)
    assert empty.cluster_ids.shape == (0,) and empty.valid.shape == (0,)
