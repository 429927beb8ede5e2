"""Self-rewards of the baselines vs float64 loop references and hand cases."""

import collections

import jax
import numpy as np
import pytest

from tempo_jax.rewards import self_rewards

TOL = dict(rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- references
def ref_cluster_counts(cluster_ids, valid, group_ids, g):
    return collections.Counter(
        int(cluster_ids[i]) for i in range(len(group_ids)) if group_ids[i] == g and valid[i]
    )


def ref_majority(cluster_ids, valid, group_ids):
    out = np.zeros(len(group_ids))
    for i in range(len(group_ids)):
        counts = ref_cluster_counts(cluster_ids, valid, group_ids, group_ids[i])
        if valid[i] and counts[int(cluster_ids[i])] == max(counts.values()):
            out[i] = 1.0
    return out


def ref_frequency(cluster_ids, valid, group_ids):
    out = np.zeros(len(group_ids))
    for i in range(len(group_ids)):
        n = sum(1 for g in group_ids if g == group_ids[i])
        counts = ref_cluster_counts(cluster_ids, valid, group_ids, group_ids[i])
        out[i] = counts[int(cluster_ids[i])] / n if valid[i] else 0.0
    return out


def ref_self_certainty(logits, mask):
    out = np.zeros(mask.shape[0])
    for i in range(mask.shape[0]):
        kls = []
        for t in np.flatnonzero(mask[i]):
            z = logits[i, t].astype(np.float64)
            log_p = z - z.max() - np.log(np.sum(np.exp(z - z.max())))
            vocab = len(z)
            kls.append(sum((1 / vocab) * (np.log(1 / vocab) - lp) for lp in log_p))
        out[i] = np.mean(kls) if kls else 0.0
    return out


def random_clusters(seed, n=16):
    rng = np.random.default_rng(seed)
    sizes = [1]
    while sum(sizes) < n:
        sizes.append(int(rng.integers(1, 7)))
    sizes[-1] -= sum(sizes) - n
    group_ids = np.repeat(rng.choice(n, len(sizes), replace=False), sizes).astype(np.int32)
    rng.shuffle(group_ids)
    cluster_ids = rng.integers(0, 3, n).astype(np.int32)  # ids reused across groups
    valid = rng.random(n) < 0.8
    valid[group_ids == group_ids[0]] = False  # one group where nobody answered
    return cluster_ids, valid, group_ids


majority = jax.jit(self_rewards.majority_vote_reward)
frequency = jax.jit(self_rewards.cluster_frequency_reward)
certainty = jax.jit(self_rewards.self_certainty)
token_certainty = jax.jit(self_rewards.token_self_certainty)
mean_certainty = jax.jit(self_rewards.mean_self_certainty)


def test_cluster_rewards_match_reference_and_compile_once():
    for seed in range(5):
        args = random_clusters(seed)
        np.testing.assert_allclose(majority(*args), ref_majority(*args), **TOL)
        np.testing.assert_allclose(frequency(*args), ref_frequency(*args), **TOL)
    assert majority._cache_size() == 1 and frequency._cache_size() == 1


def test_majority_vote_by_hand():
    # group 4: answers a, a, b, none -> a wins; group 1: a, b (tie) -> both win;
    # group 0: nobody answered -> all 0.  Cluster id 0 means different answers in groups 4 and 1.
    group_ids = np.array([4, 4, 4, 4, 1, 1, 0, 0], np.int32)
    cluster_ids = np.array([0, 0, 1, 0, 0, 5, 0, 0], np.int32)
    valid = np.array([1, 1, 1, 0, 1, 1, 0, 0], bool)
    np.testing.assert_array_equal(majority(cluster_ids, valid, group_ids), [1, 1, 0, 0, 1, 1, 0, 0])
    np.testing.assert_allclose(
        frequency(cluster_ids, valid, group_ids),
        [0.5, 0.5, 0.25, 0.0, 0.5, 0.5, 0.0, 0.0],
        **TOL,
    )


def test_self_certainty_matches_reference_and_ignores_padding():
    rng = np.random.default_rng(0)
    n, length, vocab = 6, 5, 13
    logits = rng.normal(0.0, 2.0, (n, length, vocab)).astype(np.float32)
    mask = np.arange(length)[None, :] < rng.integers(1, length + 1, n)[:, None]
    garbage = np.where(mask[..., None], logits, np.float32(1e30))
    for _ in range(2):
        want = ref_self_certainty(logits, mask)
        np.testing.assert_allclose(certainty(garbage, mask), want, **TOL)
    assert certainty._cache_size() == 1
    padded_logits = np.concatenate([garbage, np.full((n, 3, vocab), np.nan, np.float32)], 1)
    padded_mask = np.concatenate([mask, np.zeros((n, 3), bool)], 1)
    np.testing.assert_allclose(certainty(padded_logits, padded_mask), certainty(garbage, mask))


def test_self_certainty_chunked_equals_full():
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 2.0, (3, 6, 9)).astype(np.float32)
    mask = np.arange(6)[None, :] < np.array([[6], [2], [4]])
    chunks = [token_certainty(logits[:, s : s + 2]) for s in range(0, 6, 2)]
    chunked = mean_certainty(np.concatenate(chunks, axis=1), mask)
    np.testing.assert_allclose(chunked, certainty(logits, mask), **TOL)


def test_self_certainty_by_hand():
    # uniform logits: KL(U || U) = 0;  p = (1/4, 3/4): 0.5 log 2 + 0.5 log(2/3) = 0.1438410
    logits = np.log(np.array([[[1.0, 1.0], [1.0, 3.0]]], np.float32))
    got = token_certainty(logits)
    np.testing.assert_allclose(got, [[0.0, 0.1438410]], **TOL)
    np.testing.assert_allclose(certainty(logits, np.array([[True, True]])), [0.0719205], **TOL)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="valid"):
        self_rewards.majority_vote_reward(np.zeros(3, int), np.ones(2, bool), np.zeros(3, int))
    with pytest.raises(ValueError, match="logits"):
        self_rewards.self_certainty(np.zeros((2, 3)), np.ones((2, 3), bool))
