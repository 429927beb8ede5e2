"""Advantage estimators vs float64 loop references written from TEMPO_ALGORITHM.md §3."""

import jax
import numpy as np
import pytest
from rl_batches import make_batch, pad

from tempo_jax import rl

TOL = dict(rtol=1e-5, atol=1e-5)
SEEDS = range(4)

# Jitted once per module: eager calls would compile op by op, which is slower on CPU.
masked_whiten = jax.jit(rl.masked_whiten)
em_token_advantage = jax.jit(rl.em_token_advantage)
em_outcome_advantage = jax.jit(rl.em_outcome_advantage, static_argnames="norm_by_std")
grpo_advantage = jax.jit(rl.grpo_advantage, static_argnames="norm_by_std")
gae_advantage = jax.jit(rl.gae_advantage, static_argnames="whiten")


# ----------------------------------------------------------------------------- references (f64)
def ref_whiten(raw, mask):
    n_rows, length = raw.shape
    tokens = [float(raw[i, t]) for i in range(n_rows) for t in range(length) if mask[i, t]]
    out = np.zeros(raw.shape)
    n = len(tokens)
    if n < 2:
        return out
    mu = sum(tokens) / (n + 1e-8)
    var = sum((x - mu) ** 2 for x in tokens) / (n + 1e-8) * n / (n - 1)
    for i in range(raw.shape[0]):
        for t in range(raw.shape[1]):
            if mask[i, t]:
                out[i, t] = (float(raw[i, t]) - mu) / np.sqrt(var + 1e-8)
    return out


def ref_terminal(b, i):
    """R_i: the score for labeled rows, else V at the last response position T_i - 1."""
    return float(b.scores[i]) if b.is_labeled[i] else float(b.values[i, b.lengths[i] - 1])


def ref_em_token(b, keep):
    n, length = b.mask.shape
    raw, returns, mask = np.zeros((n, length)), np.zeros((n, length)), np.zeros((n, length), bool)
    for i in range(n):
        if not keep[i]:
            continue
        r = ref_terminal(b, i)
        for t in range(b.lengths[i]):
            raw[i, t] = r - float(b.values[i, t])
            returns[i, t] = r
            mask[i, t] = True
    return ref_whiten(raw, mask), returns


def ref_group_normalise(s, group_ids, keep, norm_by_std, singleton_mean):
    """Per-group (s - mean) / (std + 1e-6); singleton_mean(s_i) gives a lone row's mean."""
    out = np.zeros(len(s))
    for g in set(group_ids.tolist()):
        members = [i for i in range(len(s)) if group_ids[i] == g and keep[i]]
        for i in members:
            if len(members) == 1:
                mean, std = singleton_mean(s[i]), 1.0
            else:
                vals = [s[j] for j in members]
                mean = sum(vals) / len(vals)
                std = np.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
            out[i] = (s[i] - mean) / (std + 1e-6) if norm_by_std else s[i] - mean
    return out


def ref_broadcast(row_values, lengths, keep, length):
    out = np.zeros((len(row_values), length))
    for i in range(len(row_values)):
        if keep[i]:
            out[i, : lengths[i]] = row_values[i]
    return out


def ref_em_outcome(b, keep, norm_by_std):
    n, length = b.mask.shape
    s = [
        ref_terminal(b, i) if b.is_labeled[i] else float(np.clip(ref_terminal(b, i), -1, 1))
        for i in range(n)
    ]
    rows = ref_group_normalise(s, b.group_ids, keep, norm_by_std, singleton_mean=lambda x: x)
    returns = ref_broadcast([ref_terminal(b, i) for i in range(n)], b.lengths, keep, length)
    return ref_broadcast(rows, b.lengths, keep, length), returns


def ref_grpo(b, keep, norm_by_std):
    s = [float(x) for x in b.scores]
    rows = ref_group_normalise(s, b.group_ids, keep, norm_by_std, singleton_mean=lambda x: 0.0)
    return ref_broadcast(rows, b.lengths, keep, b.mask.shape[1])


def ref_gae(rewards, values, mask, gamma, lam):
    n, length = mask.shape
    adv, returns = np.zeros((n, length)), np.zeros((n, length))
    for i in range(n):
        next_value = next_gae = 0.0
        for t in reversed(range(length)):
            if not mask[i, t]:
                continue
            delta = float(rewards[i, t]) + gamma * next_value - float(values[i, t])
            next_gae = delta + gamma * lam * next_gae
            next_value = float(values[i, t])
            adv[i, t] = next_gae
            returns[i, t] = next_gae + next_value
    return ref_whiten(adv, mask), returns


def token_rewards(b):
    """The row score on each row's last response token, garbage elsewhere off the mask."""
    out = np.where(b.mask, 0.0, b.values).astype(np.float32)
    out[np.arange(len(b.scores)), b.lengths - 1] = b.scores
    return out


# ----------------------------------------------------------------------------- subjects
# One signature for all, so each compiles once per shape: (values, scores, is_labeled, mask,
# group_ids, token_rewards, keep) -> outputs.
SUBJECTS = {
    "masked_whiten": lambda v, s, lab, m, g, r, k: rl.masked_whiten(v, m & k[:, None]),
    "em_token": lambda v, s, lab, m, g, r, k: rl.em_token_advantage(v, s, lab, m, keep=k),
    "em_outcome": lambda v, s, lab, m, g, r, k: rl.em_outcome_advantage(v, s, lab, m, g, keep=k),
    "em_outcome_nostd": lambda v, s, lab, m, g, r, k: rl.em_outcome_advantage(
        v, s, lab, m, g, norm_by_std=False, keep=k
    ),
    "grpo": lambda v, s, lab, m, g, r, k: rl.grpo_advantage(s, m, g, keep=k),
    "drgrpo": lambda v, s, lab, m, g, r, k: rl.grpo_advantage(s, m, g, norm_by_std=False, keep=k),
    "gae": lambda v, s, lab, m, g, r, k: rl.gae_advantage(r, v, m, 0.95, 0.9, keep=k),
}

REFERENCES = {
    "masked_whiten": lambda b, k: ref_whiten(b.values, b.mask & k[:, None]),
    "em_token": ref_em_token,
    "em_outcome": lambda b, k: ref_em_outcome(b, k, norm_by_std=True),
    "em_outcome_nostd": lambda b, k: ref_em_outcome(b, k, norm_by_std=False),
    "grpo": lambda b, k: ref_grpo(b, k, norm_by_std=True),
    "drgrpo": lambda b, k: ref_grpo(b, k, norm_by_std=False),
    "gae": lambda b, k: ref_gae(token_rewards(b), b.values, b.mask & k[:, None], 0.95, 0.9),
}


def args(b, keep, extra=0):
    """Subject arguments; `extra` appends that many garbage (masked) positions."""
    v, m, r = b.values, b.mask, token_rewards(b)
    if extra:
        v, m, r = pad(v, extra, 1), pad(m, extra), pad(r, extra, 2)
    return v, b.scores, b.is_labeled, m, b.group_ids, r, keep


def assert_tree_close(got, want):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), w, **TOL)


@pytest.mark.parametrize("name", sorted(SUBJECTS))
def test_matches_reference_and_compiles_once(name):
    jitted = jax.jit(SUBJECTS[name])
    for seed in SEEDS:
        b = make_batch(seed)
        for keep in (b.keep, np.ones_like(b.keep)):
            assert_tree_close(jitted(*args(b, keep)), REFERENCES[name](b, keep))
    assert jitted._cache_size() == 1


@pytest.mark.parametrize("name", sorted(SUBJECTS))
def test_padding_with_garbage_changes_nothing(name):
    b = make_batch(11)
    base = jax.tree.map(np.asarray, jax.jit(SUBJECTS[name])(*args(b, b.keep)))
    padded = jax.tree.map(np.asarray, jax.jit(SUBJECTS[name])(*args(b, b.keep, extra=3)))
    for p, q in zip(jax.tree.leaves(padded), jax.tree.leaves(base), strict=True):
        assert np.all(np.isfinite(p))
        np.testing.assert_array_equal(p[:, -3:], 0.0)
        np.testing.assert_allclose(p[:, :-3], q, rtol=1e-6, atol=1e-6)


def test_keep_none_equals_all_kept():
    b = make_batch(5)
    ones = np.ones_like(b.keep)
    default = em_token_advantage(b.values, b.scores, b.is_labeled, b.mask)
    all_kept = em_token_advantage(b.values, b.scores, b.is_labeled, b.mask, keep=ones)
    assert_tree_close(default, jax.tree.map(np.asarray, all_kept))
    np.testing.assert_allclose(
        grpo_advantage(b.scores, b.mask, b.group_ids),
        grpo_advantage(b.scores, b.mask, b.group_ids, keep=ones),
    )


def test_dropped_row_is_as_if_absent():
    """Dropping a row equals deleting it: whitening statistics and group stats ignore it."""
    b = make_batch(6)
    keep = np.ones_like(b.keep)
    keep[3] = False
    rest = np.flatnonzero(keep)
    sub = {f: getattr(b, f)[rest] for f in ("values", "scores", "is_labeled", "mask")}
    adv, ret = em_token_advantage(sub["values"], sub["scores"], sub["is_labeled"], sub["mask"])
    adv_k, ret_k = em_token_advantage(b.values, b.scores, b.is_labeled, b.mask, keep=keep)
    np.testing.assert_allclose(adv_k[rest], adv, **TOL)
    np.testing.assert_array_equal(adv_k[3], 0.0)
    np.testing.assert_array_equal(ret_k[3], 0.0)
    # Group ids of the remaining rows must stay in [0, N-1): remap them densely.
    _, dense = np.unique(b.group_ids[rest], return_inverse=True)
    grpo_sub = grpo_advantage(sub["scores"], sub["mask"], dense.astype(np.int32))
    grpo_k = grpo_advantage(b.scores, b.mask, b.group_ids, keep=keep)
    np.testing.assert_allclose(grpo_k[rest], grpo_sub, **TOL)


# ----------------------------------------------------------------------------- hand-computed
def test_masked_whiten_by_hand():
    values = np.array([[1.0, 2.0, 3.0], [4.0, np.nan, 1e30]], np.float32)
    mask = np.array([[1, 1, 1], [1, 0, 0]], bool)
    # tokens 1,2,3,4: mean 2.5, population var 1.25, Bessel 4/3 -> 5/3, std 1.2909944
    got = masked_whiten(values, mask)
    want = [[-1.1618950, -0.3872983, 0.3872983], [1.1618950, 0.0, 0.0]]
    np.testing.assert_allclose(got, want, **TOL)


def test_masked_whiten_single_token_gives_zero():
    got = masked_whiten(np.array([[5.0, np.inf]]), np.array([[True, False]]))
    np.testing.assert_array_equal(got, [[0.0, 0.0]])


def test_em_token_by_hand():
    values = np.array([[0.5, 0.2, 0.8], [0.1, 0.4, np.nan]], np.float32)
    mask = np.array([[1, 1, 1], [1, 1, 0]], bool)
    scores = np.array([1.0, -1.0], np.float32)  # row 1 is unlabeled: its score is ignored
    is_labeled = np.array([True, False])
    # R = (1, V[1,1] = 0.4); raw = (0.5, 0.8, 0.2 | 0.3, 0.0), mean 0.36,
    # var = 0.372 / 5 * 5/4 = 0.093, std 0.3049590
    adv, ret = em_token_advantage(values, scores, is_labeled, mask)
    want = [[0.4590780, 1.4428166, -0.5246606], [-0.1967477, -1.1804863, 0.0]]
    np.testing.assert_allclose(adv, want, **TOL)
    np.testing.assert_allclose(ret, [[1.0, 1.0, 1.0], [0.4, 0.4, 0.0]], **TOL)


def test_em_outcome_by_hand():
    # rows 0-2: group 2 with s = (1, -1, clip(2.0) = 1); row 3: singleton group 0, V_last 0.3.
    values = np.array([[9.0, 9.0], [9.0, 9.0], [0.0, 2.0], [0.3, np.inf]], np.float32)
    mask = np.array([[1, 1], [1, 1], [1, 1], [1, 0]], bool)
    scores = np.array([1.0, -1.0, -1.0, -1.0], np.float32)
    is_labeled = np.array([True, True, False, False])
    group_ids = np.array([2, 2, 2, 0], np.int32)
    # mean 1/3, unbiased std sqrt(4/3) = 1.1547005
    adv, ret = em_outcome_advantage(values, scores, is_labeled, mask, group_ids)
    want = np.array([0.5773500, -1.1547000, 0.5773500, 0.0])
    np.testing.assert_allclose(adv, want[:, None] * mask, **TOL)
    np.testing.assert_allclose(ret, [[1, 1], [-1, -1], [2, 2], [0.3, 0]], **TOL)  # unclipped R
    adv, _ = em_outcome_advantage(values, scores, is_labeled, mask, group_ids, False)
    np.testing.assert_allclose(adv[:, 0], [2 / 3, -4 / 3, 2 / 3, 0.0], **TOL)


def test_grpo_by_hand():
    scores = np.array([1.0, -1.0, -1.0, 1.0], np.float32)
    mask = np.array([[1, 1], [1, 0], [1, 1], [1, 1]], bool)
    group_ids = np.array([1, 1, 1, 3], np.int32)
    # group: mean -1/3, std sqrt(4/3); singleton: mean 0, std 1 -> 1 / (1 + 1e-6)
    got = grpo_advantage(scores, mask, group_ids)
    want = np.array([1.1547000, -0.5773500, -0.5773500, 0.999999])
    np.testing.assert_allclose(got, want[:, None] * mask, rtol=1e-6, atol=1e-6)
    got = grpo_advantage(scores, mask, group_ids, norm_by_std=False)
    np.testing.assert_allclose(got[:, 0], [4 / 3, -2 / 3, -2 / 3, 1.0], **TOL)


def test_gae_by_hand():
    rewards = np.array([[0.0, 0.0, 1.0], [0.0, np.nan, 1.0]], np.float32)
    values = np.array([[0.5, 0.6, 0.7], [0.5, np.inf, 0.7]], np.float32)
    mask = np.array([[1, 1, 1], [1, 0, 1]], bool)  # row 1 has a masked gap (skipped)
    adv, ret = gae_advantage(rewards, values, mask, gamma=0.9, lam=0.8, whiten=False)
    # row 0: gae_2 = 0.3, gae_1 = 0.03 + 0.72 * 0.3 = 0.246, gae_0 = 0.04 + 0.72 * 0.246
    # row 1: gae_2 = 0.3, gae_0 = (0.9 * 0.7 - 0.5) + 0.72 * 0.3 = 0.346
    np.testing.assert_allclose(adv, [[0.21712, 0.246, 0.3], [0.346, 0.0, 0.3]], **TOL)
    np.testing.assert_allclose(ret, [[0.71712, 0.846, 1.0], [0.846, 0.0, 1.0]], **TOL)


def test_gae_with_gamma_lam_one_equals_em_token():
    b = make_batch(7)
    em_adv, em_ret = em_token_advantage(b.values, b.scores, np.ones_like(b.is_labeled), b.mask)
    gae_adv, gae_ret = gae_advantage(token_rewards(b), b.values, b.mask, 1.0, 1.0)
    np.testing.assert_allclose(gae_adv, em_adv, **TOL)
    np.testing.assert_allclose(gae_ret, em_ret, **TOL)


def test_bad_inputs_name_the_field():
    b = make_batch(0)
    with pytest.raises(ValueError, match="is_labeled"):
        rl.em_token_advantage(b.values, b.scores, b.is_labeled[:-1], b.mask)
    with pytest.raises(ValueError, match="group_ids.*row 2"):
        bad = b.group_ids.copy()
        bad[2] = len(bad)
        rl.grpo_advantage(b.scores, b.mask, bad)
    with pytest.raises(ValueError, match="values"):
        rl.em_token_advantage(b.values[:, :, None], b.scores, b.is_labeled, b.mask)


# ----------------------------------------------------------------------------- whitening scopes
def test_em_token_whiten_scopes_against_the_reference():
    # 4 rows: D_U rows 0-2 (two questions), row 3 a graded labeled row that joins only the
    # statistics in "with_labeled" (what the authors' mixed batch does).
    rng = np.random.default_rng(0)
    values = rng.normal(0.0, 0.3, (4, 5)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], bool)
    scores = np.array([0.0, 0.0, 0.0, -1.0], np.float32)
    is_labeled = np.array([False, False, False, True])
    group_ids = np.array([0, 0, 1, 2], np.int32)
    last = mask.sum(1) - 1
    reward = np.where(is_labeled, scores, values[np.arange(4), last])
    raw = np.where(mask, reward[:, None] - values, 0.0).astype(np.float64)
    unl = np.array([True, True, True, False])

    batch, _ = rl.em_token_advantage(values[:3], scores[:3], is_labeled[:3], mask[:3])
    np.testing.assert_allclose(batch, ref_whiten(raw[:3], mask[:3]), **TOL)

    extra = rl.whiten_stats(raw[3:], mask[3:])
    joint, _ = rl.em_token_advantage(
        values[:3],
        scores[:3],
        is_labeled[:3],
        mask[:3],
        whiten_scope="with_labeled",
        whiten_extra=extra,
    )
    np.testing.assert_allclose(joint, ref_whiten(raw, mask)[unl], **TOL)

    per_question, _ = rl.em_token_advantage(
        values[:3],
        scores[:3],
        is_labeled[:3],
        mask[:3],
        whiten_scope="question",
        group_ids=group_ids[:3],
    )
    want = np.zeros((3, 5))
    want[:2] = ref_whiten(raw[:2], mask[:2])
    want[2:] = ref_whiten(raw[2:3], mask[2:3])
    np.testing.assert_allclose(per_question, want, **TOL)
    with pytest.raises(ValueError, match="whiten_scope"):
        rl.em_token_advantage(values, scores, is_labeled, mask, whiten_scope="rows")
