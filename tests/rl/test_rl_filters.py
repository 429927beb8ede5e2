"""Group filters vs float64 loop references and hand cases."""

import jax
import numpy as np
import pytest
from rl_batches import make_batch

from tempo_jax import rl

filter_groups = jax.jit(rl.filter_groups)
dapo_filter_groups = jax.jit(rl.dapo_filter_groups)


def ref_filter_groups(scores, is_labeled, group_ids, keep):
    out = keep.copy()
    for g in set(group_ids.tolist()):
        labeled = [i for i in range(len(scores)) if group_ids[i] == g and keep[i] and is_labeled[i]]
        if labeled and np.std([float(scores[i]) for i in labeled]) < 1e-6:
            out[labeled] = False
    return out


def ref_dapo(correct, group_ids, keep):
    out = keep.copy()
    for g in set(group_ids.tolist()):
        members = [i for i in range(len(correct)) if group_ids[i] == g and keep[i]]
        hits = sum(bool(correct[i]) for i in members)
        if hits in (0, len(members)):
            out[members] = False
    return out


def test_filter_groups_matches_reference_and_compiles_once():
    jitted = jax.jit(rl.filter_groups)
    dropped = kept_labeled = 0
    for seed in range(6):
        b = make_batch(seed, n=16)
        for keep in (b.keep, np.ones_like(b.keep)):
            got = np.asarray(jitted(b.scores, b.is_labeled, b.group_ids, keep))
            want = ref_filter_groups(b.scores, b.is_labeled, b.group_ids, keep)
            np.testing.assert_array_equal(got, want)
            assert np.all(got[~b.is_labeled] == keep[~b.is_labeled])  # unlabeled never dropped
            dropped += int(np.sum(keep & ~got))
            kept_labeled += int(np.sum(got & b.is_labeled))
    assert dropped > 0 and kept_labeled > 0
    assert jitted._cache_size() == 1


def test_dapo_matches_reference_and_compiles_once():
    jitted = jax.jit(rl.dapo_filter_groups)
    outcomes = set()
    for seed in range(6):
        b = make_batch(seed, n=16)
        correct = b.scores > 0
        for keep in (b.keep, np.ones_like(b.keep)):
            got = np.asarray(jitted(correct, b.group_ids, keep))
            np.testing.assert_array_equal(got, ref_dapo(correct, b.group_ids, keep))
            outcomes.update(got.tolist())
    assert outcomes == {True, False}
    assert jitted._cache_size() == 1


def test_filter_groups_by_hand():
    # group 5 labeled (1, 1, 1): drop; group 0 labeled (1, -1): keep;
    # group 2 unlabeled (0.5, 0.5): never dropped; group 7 labeled singleton: std 0, drop.
    group_ids = np.array([5, 0, 5, 2, 5, 0, 2, 7], np.int32)
    scores = np.array([1, 1, 1, 0.5, 1, -1, 0.5, -1], np.float32)
    is_labeled = np.array([1, 1, 1, 0, 1, 1, 0, 1], bool)
    got = filter_groups(scores, is_labeled, group_ids)
    np.testing.assert_array_equal(got, [0, 1, 0, 1, 0, 1, 1, 0])
    # Equal non-dyadic scores (mean not exact in float32) still count as constant.
    tenths = np.full(3, 0.1, np.float32)
    assert not np.any(filter_groups(tenths, np.ones(3, bool), np.zeros(3, np.int32)))
    # An already dropped row stays dropped and no longer counts: group 0 becomes a singleton.
    keep = np.ones(8, bool)
    keep[5] = False
    np.testing.assert_array_equal(
        filter_groups(scores, is_labeled, group_ids, keep), [0, 0, 0, 1, 0, 0, 1, 0]
    )


def test_dapo_by_hand():
    group_ids = np.array([1, 1, 3, 3, 4, 4, 6], np.int32)
    correct = np.array([1, 1, 1, 0, 0, 0, 1], bool)  # all right, mixed, all wrong, singleton
    np.testing.assert_array_equal(dapo_filter_groups(correct, group_ids), [0, 0, 1, 1, 0, 0, 0])


def test_bad_group_ids_are_named():
    with pytest.raises(ValueError, match="group_ids.*integers"):
        rl.filter_groups(np.ones(2), np.ones(2, bool), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="group_ids"):
        rl.dapo_filter_groups(np.ones(2, bool), np.array([0, -1], np.int32))
