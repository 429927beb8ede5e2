"""Value loss vs a float64 loop reference; gradients flow through labeled rows only."""

import jax
import numpy as np
import pytest
from rl_batches import make_batch, pad

from tempo_jax import rl

TOL = dict(rtol=1e-5, atol=1e-5)


def ref_value_loss(values, old, returns, mask, is_labeled, keep, clip=0.1):
    """0.5 mean over labeled rows of the token mean of max((V - G)^2, (V~ - G)^2); clipfrac is
    the fraction of labeled tokens in rows whose mean shift was clipped (the authors' metric)."""
    row_losses, clipped = [], []
    for i in range(values.shape[0]):
        tokens = [t for t in range(values.shape[1]) if mask[i, t]]
        if not (is_labeled[i] and keep[i] and tokens):
            continue
        mu_new = sum(float(values[i, t]) for t in tokens) / len(tokens)
        mu_old = sum(float(old[i, t]) for t in tokens) / len(tokens)
        shift = mu_new - mu_old
        correction = min(max(shift, -clip), clip) - shift
        total = 0.0
        for t in tokens:
            v, g = float(values[i, t]), float(returns[i, t])
            unclipped, clipped_loss = (v - g) ** 2, (v + correction - g) ** 2
            total += max(unclipped, clipped_loss)
            clipped.append(correction != 0.0)
        row_losses.append(total / len(tokens))
    if not row_losses:
        return 0.0, {"clipfrac": 0.0, "labeled_rows": 0.0}
    metrics = {"clipfrac": np.mean(clipped), "labeled_rows": len(row_losses)}
    return 0.5 * np.mean(row_losses), metrics


@jax.jit
def loss_and_grad(values, old, returns, mask, is_labeled, keep):
    def loss(v):
        return rl.value_loss(v, old, returns, mask, is_labeled, keep=keep)

    return jax.value_and_grad(loss, has_aux=True)(values)


def assert_close(got, want):
    np.testing.assert_allclose(got[0], want[0], **TOL)
    for key, value in want[1].items():
        np.testing.assert_allclose(got[1][key], value, **TOL, err_msg=key)


def args(b, keep):
    return b.values, b.old_values, b.returns, b.mask, b.is_labeled, keep


def test_matches_reference_and_compiles_once():
    jitted = jax.jit(rl.value_loss)
    clipfracs = []
    for seed in range(4):
        b = make_batch(seed)
        # Row mean shifts of these batches are ~1: clip 0.1 clips every row, 1.5 only some.
        for keep, clip in ((b.keep, 0.1), (np.ones_like(b.keep), 1.5)):
            got = jitted(b.values, b.old_values, b.returns, b.mask, b.is_labeled, clip, keep)
            assert_close(got, ref_value_loss(*args(b, keep), clip=clip))
            clipfracs.append(float(got[1]["clipfrac"]))
    assert 0.05 < np.mean(clipfracs) < 0.95
    assert jitted._cache_size() == 1


def test_padding_with_garbage_changes_nothing():
    b = make_batch(13)
    base = loss_and_grad(*args(b, b.keep))
    padded_args = [pad(x, 3, seed) for seed, x in enumerate(args(b, b.keep)[:4])]
    (loss, metrics), grad = loss_and_grad(*padded_args, b.is_labeled, b.keep)
    assert_close((loss, metrics), jax.tree.map(np.asarray, base[0]))
    np.testing.assert_allclose(grad[:, :-3], base[1], **TOL)
    np.testing.assert_array_equal(grad[:, -3:], 0.0)


def test_gradient_matches_finite_differences_and_skips_unlabeled_rows():
    b = make_batch(2)
    (_, metrics), grad = loss_and_grad(*args(b, b.keep))
    grad = np.asarray(grad)
    assert np.all(np.isfinite(grad))
    rows = b.is_labeled & b.keep
    assert 0 < metrics["clipfrac"] and rows.sum() >= 2
    # Both terms of the max carry gradient somewhere: the clipped error wins at some tokens only.
    tokens = b.mask & rows[:, None]
    v, old, g = (np.where(tokens, x, 0.0) for x in (b.values, b.old_values, b.returns))
    shift = (v - old).sum(-1, keepdims=True) / np.maximum(tokens.sum(-1, keepdims=True), 1)
    clipped_wins = (v + np.clip(shift, -0.1, 0.1) - shift - g) ** 2 > (v - g) ** 2
    assert 0 < np.mean(clipped_wins[tokens]) < 1
    np.testing.assert_array_equal(grad[~rows], 0.0)
    np.testing.assert_array_equal(grad[~b.mask], 0.0)
    values = b.values.astype(np.float64)
    h = 1e-5
    for i, t in zip(*np.nonzero(b.mask & rows[:, None]), strict=True):
        up, down = values.copy(), values.copy()
        up[i, t] += h
        down[i, t] -= h
        numeric = (
            ref_value_loss(up, *args(b, b.keep)[1:])[0]
            - ref_value_loss(down, *args(b, b.keep)[1:])[0]
        ) / (2 * h)
        np.testing.assert_allclose(grad[i, t], numeric, rtol=1e-4, atol=1e-6)


def test_no_labeled_row_gives_zero_loss_and_zero_gradient():
    b = make_batch(4)
    b.values[~b.mask] = np.nan
    nobody = np.zeros_like(b.is_labeled)
    (loss, metrics), grad = loss_and_grad(b.values, b.old_values, b.returns, b.mask, nobody, b.keep)
    assert float(loss) == 0.0 and float(metrics["labeled_rows"]) == 0.0
    assert np.all(np.asarray(grad) == 0.0)


def test_value_loss_by_hand():
    values = np.array([[0.5, 0.9], [0.0, np.nan], [3.0, 3.0]], np.float32)
    old = np.array([[0.2, 0.4], [0.05, np.inf], [0.0, 0.0]], np.float32)
    returns = np.array([[1.0, 1.0], [-1.0, 9.0], [1.0, 1.0]], np.float32)
    mask = np.array([[1, 1], [1, 0], [1, 1]], bool)
    is_labeled = np.array([True, True, False])
    # row 0: shift 0.4 -> 0.1, V~ = (0.2, 0.6): max(0.25, 0.64), max(0.01, 0.16) -> mean 0.4
    # row 1: shift -0.05 within the clip: (0 - (-1))^2 = 1.  loss = 0.5 * (0.4 + 1) / 2
    (loss, metrics), grad = loss_and_grad(values, old, returns, mask, is_labeled, None)
    np.testing.assert_allclose(loss, 0.35, **TOL)
    np.testing.assert_allclose(metrics["clipfrac"], 2 / 3, **TOL)
    # row 1 (unclipped): d/dV of 0.5 / 2 * (V - G)^2 = 0.5 * (0 + 1) = 0.5.
    # row 0 (clipped): V~_s = V_s - mean(V) + const, V~ - G = (-0.8, -0.4), so
    # d/dV_t = 0.5 / 2 / 2 * sum_s 2 (V~_s - G_s) (delta_st - 1/2) = 0.125 * (-+0.8 +- 0.4).
    np.testing.assert_allclose(grad, [[-0.05, 0.05], [0.5, 0.0], [0.0, 0.0]], **TOL)


def test_clipfrac_counts_every_token_of_a_clipped_row():
    """The authors' `compute_value_loss` (verl fork, core_algos.py) counts a row's tokens as
    clipped when its mean shift was clipped, over all labeled response tokens, whichever of the
    two squared errors is larger at each token."""
    values = np.array([[0.5, 0.9], [0.0, 0.0], [0.5, 0.5]], np.float32)
    old = np.array([[0.2, 0.4], [0.05, 0.0], [0.0, 0.0]], np.float32)
    returns = np.zeros((3, 2), np.float32)
    mask = np.array([[1, 1], [1, 0], [1, 1]], bool)
    is_labeled = np.array([True, True, True])
    # row 0: shift 0.4 clipped, yet V~ = (0.2, 0.6) is nearer G = 0 at both tokens (the max
    # keeps the unclipped error); row 1: shift -0.05, not clipped; row 2: shift 0.5 clipped.
    (loss, metrics), _ = loss_and_grad(values, old, returns, mask, is_labeled, None)
    np.testing.assert_allclose(metrics["clipfrac"], 4 / 5, **TOL)
    np.testing.assert_allclose(loss, 0.5 * (0.53 + 0.0 + 0.25) / 3, **TOL)


def test_bad_shapes_name_the_field():
    b = make_batch(0)
    with pytest.raises(ValueError, match="returns"):
        rl.value_loss(b.values, b.old_values, b.returns[:, 1:], b.mask, b.is_labeled)
