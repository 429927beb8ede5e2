"""GSPO / PPO losses vs float64 loop references, hand cases and the GSPO gradient."""

import jax
import numpy as np
import pytest
from rl_batches import make_batch, pad

from tempo_jax import rl

TOL = dict(rtol=1e-5, atol=1e-5)
gspo_policy_loss = jax.jit(rl.gspo_policy_loss)
ppo_policy_loss = jax.jit(rl.ppo_policy_loss, static_argnames="dual_clip")


@jax.jit
def gspo_grad(lp, old, adv, mask):
    """d GSPO loss / d logprobs (jitted: eager autodiff would dispatch op by op)."""
    return jax.grad(lambda x: rl.gspo_policy_loss(x, old, adv, mask)[0])(lp)


# ----------------------------------------------------------------------------- references (f64)
def surrogate(ratio, adv, clip_low, clip_high):
    unclipped = -adv * ratio
    clipped = -adv * min(max(ratio, 1.0 - clip_low), 1.0 + clip_high)
    return max(unclipped, clipped), clipped > unclipped


def ref_gspo(lp, old, adv, mask, keep, clip_low=3e-4, clip_high=5e-4):
    row_losses, clipped, neg_deltas = [], [], []
    for i in range(lp.shape[0]):
        tokens = [t for t in range(lp.shape[1]) if mask[i, t]]
        if not keep[i] or not tokens:
            continue
        deltas = [float(lp[i, t]) - float(old[i, t]) for t in tokens]
        seq_ratio = np.exp(min(sum(deltas) / len(tokens), 10.0))
        total = 0.0
        for t, delta in zip(tokens, deltas, strict=True):
            loss, was_clipped = surrogate(seq_ratio, float(adv[i, t]), clip_low, clip_high)
            total += loss
            clipped.append(was_clipped)
            neg_deltas.append(-delta)
        row_losses.append(total / len(tokens))
    metrics = {"approx_kl": np.mean(neg_deltas), "clipfrac": np.mean(clipped)}
    return np.mean(row_losses), metrics


def ref_ppo(lp, old, adv, mask, keep, clip_low, clip_high, dual_clip=None):
    losses, clipped, lower, neg_deltas = [], [], [], []
    for i in range(lp.shape[0]):
        for t in range(lp.shape[1]):
            if not (keep[i] and mask[i, t]):
                continue
            delta = float(lp[i, t]) - float(old[i, t])
            a = float(adv[i, t])
            loss, was_clipped = surrogate(np.exp(np.clip(delta, -20, 20)), a, clip_low, clip_high)
            if dual_clip is not None:
                lower.append(a < 0 and loss > -a * dual_clip)
                if a < 0:
                    loss = min(loss, -a * dual_clip)
            losses.append(loss)
            clipped.append(was_clipped)
            neg_deltas.append(-delta)
    metrics = {"approx_kl": np.mean(neg_deltas), "clipfrac": np.mean(clipped)}
    if dual_clip is not None:
        metrics["clipfrac_lower"] = np.mean(lower)
    return np.mean(losses), metrics


SUBJECTS = {
    "gspo": (
        lambda lp, old, a, m, k: rl.gspo_policy_loss(lp, old, a, m, keep=k),
        lambda b, k: ref_gspo(b.logprobs, b.old_logprobs, b.advantages, b.mask, k),
        "old_logprobs",
    ),
    "ppo": (
        lambda lp, old, a, m, k: rl.ppo_policy_loss(lp, old, a, m, 0.2, 0.28, keep=k),
        lambda b, k: ref_ppo(b.logprobs, b.ppo_old_logprobs, b.advantages, b.mask, k, 0.2, 0.28),
        "ppo_old_logprobs",
    ),
    "ppo_dual_clip": (
        lambda lp, old, a, m, k: rl.ppo_policy_loss(lp, old, a, m, 0.2, 0.2, 1.5, keep=k),
        lambda b, k: ref_ppo(
            b.logprobs, b.ppo_old_logprobs, b.advantages, b.mask, k, 0.2, 0.2, dual_clip=1.5
        ),
        "ppo_old_logprobs",
    ),
}


def args(b, keep, old_field, extra=0):
    arrays = [b.logprobs, getattr(b, old_field), b.advantages, b.mask]
    if extra:
        arrays = [pad(x, extra, seed) for seed, x in enumerate(arrays)]
    return (*arrays, keep)


def assert_close(got, want):
    np.testing.assert_allclose(got[0], want[0], **TOL)
    assert sorted(got[1]) == sorted(want[1])
    for key, value in want[1].items():
        np.testing.assert_allclose(got[1][key], value, **TOL, err_msg=key)


@pytest.mark.parametrize("name", sorted(SUBJECTS))
def test_matches_reference_and_compiles_once(name):
    fn, ref, old_field = SUBJECTS[name]
    jitted = jax.jit(fn)
    clipfracs = []
    for seed in range(4):
        b = make_batch(seed)
        for keep in (b.keep, np.ones_like(b.keep)):
            got = jitted(*args(b, keep, old_field))
            assert_close(got, ref(b, keep))
            clipfracs.append(float(got[1]["clipfrac"]))
    assert 0.05 < np.mean(clipfracs) < 0.95  # both branches of the clip were exercised
    assert jitted._cache_size() == 1


@pytest.mark.parametrize("name", sorted(SUBJECTS))
def test_padding_with_garbage_changes_nothing(name):
    fn, _, old_field = SUBJECTS[name]
    b = make_batch(12)
    base = jax.jit(fn)(*args(b, b.keep, old_field))
    padded = jax.jit(fn)(*args(b, b.keep, old_field, extra=3))
    assert_close(padded, jax.tree.map(np.asarray, base))


def test_gspo_gradient_is_sequence_ratio_times_token_score():
    """d loss / d logp[i,t] = -A s_i / (N T_i) unless the clipped term won (then 0)."""
    b = make_batch(3)
    n = b.mask.shape[0]
    grad = np.asarray(gspo_grad(b.logprobs, b.old_logprobs, b.advantages, b.mask))
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[~b.mask], 0.0)
    clipped_tokens = unclipped_tokens = 0
    for i in range(n):
        length = b.lengths[i]
        delta = b.logprobs[i, :length].astype(np.float64) - b.old_logprobs[i, :length]
        s = np.exp(delta.mean())
        for t in range(length):
            a = float(b.advantages[i, t])
            _, was_clipped = surrogate(s, a, 3e-4, 5e-4)
            want = 0.0 if was_clipped else -a * s / (n * length)
            np.testing.assert_allclose(grad[i, t], want, rtol=1e-5, atol=1e-8)
            clipped_tokens += was_clipped
            unclipped_tokens += not was_clipped
    assert clipped_tokens > 5 and unclipped_tokens > 5


def test_gspo_by_hand():
    nan = np.nan
    lp = np.array([[-1.0, -2.0], [-0.5, nan]], np.float32)
    old = np.array([[-1.1, -2.1], [-0.5, np.inf]], np.float32)
    adv = np.array([[1.0, 1.0], [-3.0, 1e30]], np.float32)
    mask = np.array([[1, 1], [1, 0]], bool)
    # row 0: s = e^0.1 = 1.10517 > 1 + 5e-4 with A = 1: clipped, -1.0005 per token
    # row 1: s = 1, A = -3: 3.  loss = (-1.0005 + 3) / 2
    loss, metrics = gspo_policy_loss(lp, old, adv, mask)
    np.testing.assert_allclose(loss, 0.99975, **TOL)
    np.testing.assert_allclose(metrics["clipfrac"], 2 / 3, **TOL)
    np.testing.assert_allclose(metrics["approx_kl"], -0.2 / 3, **TOL)
    grad = gspo_grad(lp, old, adv, mask)
    # row 0 clipped outward: no gradient; row 1: -A s / (N T) = 3 / 2
    np.testing.assert_allclose(grad, [[0.0, 0.0], [1.5, 0.0]], **TOL)


def test_gspo_pessimistic_side_keeps_gradient():
    # s = e^-0.1 < 1 - 3e-4 with A = +1: the unclipped term is larger, so the gradient flows.
    lp = np.array([[-1.1, -2.1]], np.float32)
    old = np.array([[-1.0, -2.0]], np.float32)
    adv = np.ones((1, 2), np.float32)
    mask = np.ones((1, 2), bool)
    grad = gspo_grad(lp, old, adv, mask)
    np.testing.assert_allclose(grad, [[-np.exp(-0.1) / 2] * 2], **TOL)
    # ... and A = -1 with the same ratio is clipped outward: zero gradient.
    grad = gspo_grad(lp, old, -adv, mask)
    np.testing.assert_array_equal(grad, 0.0)


def test_ppo_by_hand():
    lp = np.log(np.array([[1.5, 0.5], [1.0, 1.0]], np.float32))
    old = np.zeros((2, 2), np.float32)
    adv = np.array([[1.0, -1.0], [2.0, 0.0]], np.float32)
    mask = np.array([[1, 1], [1, 0]], bool)
    # tokens: max(-1.5, -1.2) = -1.2 (clipped), max(0.5, 0.8) = 0.8 (clipped), -2
    loss, metrics = ppo_policy_loss(lp, old, adv, mask, 0.2, 0.2)
    np.testing.assert_allclose(loss, -0.8, **TOL)
    np.testing.assert_allclose(metrics["clipfrac"], 2 / 3, **TOL)


def test_ppo_dual_clip_by_hand():
    lp = np.log(np.array([[5.0, 2.0]], np.float32))
    old = np.zeros((1, 2), np.float32)
    adv = -np.ones((1, 2), np.float32)
    mask = np.ones((1, 2), bool)
    # max(5, 1.2) = 5 capped at -A * 3 = 3; max(2, 1.2) = 2 below the cap
    loss, metrics = ppo_policy_loss(lp, old, adv, mask, 0.2, 0.2, dual_clip=3.0)
    np.testing.assert_allclose(loss, 2.5, **TOL)
    np.testing.assert_allclose(metrics["clipfrac_lower"], 0.5, **TOL)
    with pytest.raises(ValueError, match="dual_clip"):
        rl.ppo_policy_loss(lp, old, adv, mask, 0.2, 0.2, dual_clip=0.5)


def test_dropped_rows_are_as_if_absent():
    b = make_batch(8)
    keep = np.ones_like(b.keep)
    keep[[2, 5]] = False
    rest = np.flatnonzero(keep)
    losses = ((rl.gspo_policy_loss, b.old_logprobs), (rl.ppo_policy_loss, b.ppo_old_logprobs))
    for fn, old in losses:
        full = jax.jit(fn)(b.logprobs, old, b.advantages, b.mask, keep=keep)
        sub = jax.jit(fn)(b.logprobs[rest], old[rest], b.advantages[rest], b.mask[rest])
        assert_close(full, jax.tree.map(np.asarray, sub))


def test_bad_shapes_name_the_field():
    b = make_batch(0)
    with pytest.raises(ValueError, match="advantages"):
        rl.gspo_policy_loss(b.logprobs, b.old_logprobs, b.advantages[:, :3], b.mask)
