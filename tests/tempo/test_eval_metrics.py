"""Evaluation metrics against independent brute-force computations and hand-made rollouts."""

import itertools
import math

import numpy as np
import pytest

from tempo_jax.rewards import eval_metrics as em


def brute_pass_at_k(correct_row, k):
    """Fraction of all k-subsets of the samples that contain a correct one."""
    subsets = list(itertools.combinations(range(len(correct_row)), k))
    return np.mean([any(correct_row[i] for i in s) for s in subsets])


@pytest.mark.parametrize("n,k", [(4, 1), (6, 2), (8, 3), (8, 8), (5, 5)])
def test_pass_at_k_matches_subset_enumeration(n, k):
    rng = np.random.default_rng(n * 10 + k)
    for _ in range(20):
        row = rng.random(n) < rng.random()
        assert em.pass_at_k(n, int(row.sum()), k) == pytest.approx(brute_pass_at_k(row, k), 1e-12)


def test_pass_at_k_hand_values():
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5
    assert em.pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert em.pass_at_k(16, 0, 8) == 0.0
    assert em.pass_at_k(16, 9, 8) == 1.0  # n - c < k
    assert em.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="k <= n"):
        em.pass_at_k(4, 1, 5)


def test_mean_and_maj_at_k_hand_made_rollouts():
    correct = np.array(
        [
            [1, 0, 0, 1],  # majority answer (id 3, twice) is correct
            [0, 0, 1, 0],  # majority (id 5, twice) wrong
            [0, 0, 0, 0],  # no answers at all
        ],
        bool,
    )
    ids = np.array([[3, 1, 2, 3], [5, 5, 7, 8], [-1, -1, -1, -1]])
    assert em.mean_at_k(correct) == pytest.approx((0.5 + 0.25 + 0.0) / 3)
    assert em.maj_at_k(correct, ids) == pytest.approx(1 / 3)
    assert em.distinct_answers(ids) == pytest.approx((3 + 3 + 0) / 3)
    # Row entropies: [2,1,1]/4, [2,1,1]/4, [4]/4 -> H = 1.0397..., same, 0.
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert em.answer_entropy(ids) == pytest.approx((h + h + 0) / 3)


def test_maj_tie_goes_to_first_cluster():
    correct = np.array([[0, 1, 0, 1]], bool)
    ids = np.array([[4, 9, 4, 9]])  # tie 2-2; cluster 4 appears first and is wrong
    assert em.maj_at_k(correct, ids) == 0.0


def test_auroc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=200), 1)  # rounding makes ties
    labels = rng.random(200) < 0.4
    pos, neg = scores[labels], scores[~labels]
    pairwise = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert em.auroc(scores, labels) == pytest.approx(pairwise, 1e-12)
    assert em.auroc([0.1, 0.9, 0.2, 0.8], [0, 1, 0, 1]) == 1.0
    assert em.auroc([0.9, 0.1], [0, 1]) == 0.0
    assert math.isnan(em.auroc([0.3, 0.4], [1, 1]))


def test_critic_quality_numbers():
    values = np.array([0.8, -0.6, 0.2, -1.0])
    correct = np.array([1, 0, 0, 0], bool)
    q = em.critic_quality(values, correct)
    y = np.array([1.0, -1.0, -1.0, -1.0])
    assert q["explained_variance"] == pytest.approx(1 - np.var(y - values) / np.var(y))
    prob = (values + 1) / 2  # 0.9, 0.2, 0.6, 0.0
    assert q["brier"] == pytest.approx(np.mean((prob - [1, 0, 0, 0]) ** 2))
    assert q["auroc"] == 1.0
    # bins: 0.9 -> bin 9 (acc 1, conf .9), 0.2 -> bin 2 (0 vs .2), 0.6 -> bin 6, 0.0 -> bin 0.
    assert q["calibration_error"] == pytest.approx((0.1 + 0.2 + 0.6 + 0.0) / 4)


def test_within_question_auroc_ignores_ranking_between_questions():
    # Question 0 (easy: 3 of 4 right) gets high values, question 1 (hard: 1 of 4) low ones: the
    # pooled AUROC is above 1/2 from that alone, while inside each question the critic prefers
    # wrong answers.
    values = np.array([0.9, 0.85, 0.8, 0.75, -0.5, -0.6, -0.65, -0.7])
    correct = np.array([0, 1, 1, 1, 0, 0, 1, 0], bool)
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    q = em.critic_quality(values, correct, group_ids=groups)
    assert q["auroc"] == pytest.approx(10 / 16)  # (3 x 3 + 1) of the 16 (right, wrong) pairs
    # question 0: the wrong answer outranks all three right ones (0); question 1: the right one
    # beats one of the three wrong ones (1/3).
    assert q["auroc_within_question"] == pytest.approx(1 / 6)
    # A question whose samples are all right (or all wrong) has no within-question AUROC.
    assert math.isnan(em.within_group_auroc(values, np.ones(8, bool), groups))
    assert "auroc_within_question" not in em.critic_quality(values, correct)


def test_accuracy_metrics_keys_and_k_bounds():
    correct = np.array([[1, 0, 1, 0]], bool)
    ids = np.array([[0, 1, 0, 2]])
    out = em.accuracy_metrics(correct, ids, ks=(1, 2, 8))
    assert set(out) == {"mean@4", "maj@4", "pass@1", "pass@2", "distinct_answers", "answer_entropy"}
    assert out["pass@1"] == pytest.approx(0.5)
    assert out["pass@2"] == pytest.approx(1 - 1 / 6)
