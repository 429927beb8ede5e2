"""Token entropy and KL estimators vs float64 loop references and hand cases."""

import jax
import numpy as np
from rl_batches import make_batch, pad

from tempo_jax import rl

TOL = dict(rtol=1e-5, atol=1e-5)


def ref_entropy(logits):
    out = np.zeros(logits.shape[:-1])
    for idx in np.ndindex(*logits.shape[:-1]):
        z = logits[idx].astype(np.float64)
        p = np.exp(z - z.max())
        p /= p.sum()
        out[idx] = -sum(pj * np.log(pj) for pj in p if pj > 0)
    return out


def ref_kl(logprobs, ref_logprobs, mask, estimator):
    out = np.zeros(mask.shape)
    for i, t in zip(*np.nonzero(mask), strict=True):
        log_r = float(ref_logprobs[i, t]) - float(logprobs[i, t])
        out[i, t] = {"k1": -log_r, "k2": 0.5 * log_r**2, "k3": np.exp(log_r) - 1 - log_r}[estimator]
    return out


@jax.jit
def all_stats(logits, logprobs, ref_logprobs, mask):
    return {
        "entropy": rl.token_entropy(logits),
        "k1": rl.kl_k1(logprobs, ref_logprobs, mask),
        "k2": rl.kl_k2(logprobs, ref_logprobs, mask),
        "k3": rl.kl_k3(logprobs, ref_logprobs, mask),
    }


def random_logits(seed, n, length, vocab=11):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, (n, length, vocab)).astype(np.float32)
    logits[rng.random(logits.shape) < 0.1] = -np.inf  # masked-out vocabulary entries
    logits[..., 0] = rng.normal(0.0, 3.0, (n, length))  # at least one finite entry per position
    return logits


def test_matches_reference_and_compiles_once():
    for seed in range(3):
        b = make_batch(seed)
        logits = random_logits(seed, *b.mask.shape)
        got = all_stats(logits, b.logprobs, b.ppo_old_logprobs, b.mask)
        np.testing.assert_allclose(got["entropy"], ref_entropy(logits), **TOL)
        for k in ("k1", "k2", "k3"):
            want = ref_kl(b.logprobs, b.ppo_old_logprobs, b.mask, k)
            np.testing.assert_allclose(got[k], want, **TOL, err_msg=k)
    assert np.all(np.asarray(got["k3"]) >= 0)
    assert all_stats._cache_size() == 1


def test_padding_with_garbage_changes_nothing():
    b = make_batch(9)
    logits = random_logits(9, *b.mask.shape)
    base = all_stats(logits, b.logprobs, b.ppo_old_logprobs, b.mask)
    padded_logits = np.concatenate([logits, random_logits(1, len(logits), 3)], axis=1)
    padded = all_stats(
        padded_logits, pad(b.logprobs, 3), pad(b.ppo_old_logprobs, 3, 1), pad(b.mask, 3)
    )
    for key in base:
        np.testing.assert_allclose(padded[key][:, :-3], base[key], **TOL, err_msg=key)
        if key != "entropy":  # entropy is per position; KL estimators zero masked positions
            np.testing.assert_array_equal(padded[key][:, -3:], 0.0)


def test_by_hand():
    logits = np.array([[[0.0, 0.0, 0.0, 0.0], [0.0, -np.inf, 5.0, -np.inf]]], np.float32)
    logprobs = np.log(np.array([[0.5, 0.2]], np.float32))
    ref_logprobs = np.log(np.array([[0.25, 0.2]], np.float32))
    mask = np.ones((1, 2), bool)
    got = all_stats(logits, logprobs, ref_logprobs, mask)
    # uniform over 4: log 4; (p, 1 - p) with p = 1 / (1 + e^5): -p log p - (1-p) log(1-p)
    p = 1.0 / (1.0 + np.exp(5.0))
    want_h = [np.log(4.0), -p * np.log(p) - (1 - p) * np.log1p(-p)]
    np.testing.assert_allclose(got["entropy"][0], want_h, **TOL)
    # log r = log(0.25 / 0.5) = -log 2: k1 = log 2, k2 = (log 2)^2 / 2, k3 = 0.5 - 1 + log 2
    np.testing.assert_allclose(got["k1"][0], [0.6931472, 0.0], **TOL)
    np.testing.assert_allclose(got["k2"][0], [0.2402265, 0.0], **TOL)
    np.testing.assert_allclose(got["k3"][0], [0.1931472, 0.0], **TOL)
