"""Per-token statistics for metrics and optional penalties: entropy and KL estimators.

KL estimators follow Schulman's "Approximating KL divergence" for `KL(pi || pi_ref)` estimated on
tokens sampled from `pi`: with `log r = log pi_ref - log pi`, `k1 = -log r`, `k2 = (log r)^2 / 2`,
`k3 = (r - 1) - log r` (unbiased and non-negative). Aggregate with `reductions.masked_mean`.
Passing `mask` zeroes masked positions (safely: garbage there never reaches a value or gradient).
"""

import jax
import jax.numpy as jnp

from tempo_jax.rl.reductions import as_float


def _log_ratio(logprobs, ref_logprobs, mask):
    logprobs, ref_logprobs = as_float(logprobs), as_float(ref_logprobs)
    if mask is not None:
        logprobs = jnp.where(mask, logprobs, 0.0)
        ref_logprobs = jnp.where(mask, ref_logprobs, 0.0)
    return ref_logprobs - logprobs


def token_entropy(logits: jax.Array) -> jax.Array:
    """Entropy (nats) of `softmax(logits)` over the last axis: [..., V] -> [...], in float32.

    Works on any leading shape, so it can run on a chunk of positions at a time.
    """
    logits = as_float(logits)
    probs = jax.nn.softmax(logits, axis=-1)
    # -inf logits (masked vocabulary) have probability 0 and contribute 0, not NaN.
    weighted = jnp.where(probs > 0, probs * jnp.where(jnp.isfinite(logits), logits, 0.0), 0.0)
    return jax.nn.logsumexp(logits, axis=-1) - jnp.sum(weighted, axis=-1)


def kl_k1(logprobs: jax.Array, ref_logprobs: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """[N, L] `log pi - log pi_ref` (unbiased, high variance, can be negative)."""
    return -_log_ratio(logprobs, ref_logprobs, mask)


def kl_k2(logprobs: jax.Array, ref_logprobs: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """[N, L] `(log pi - log pi_ref)^2 / 2` (biased, low variance)."""
    return 0.5 * _log_ratio(logprobs, ref_logprobs, mask) ** 2


def kl_k3(logprobs: jax.Array, ref_logprobs: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """[N, L] `exp(log r) - 1 - log r` with `log r = log pi_ref - log pi` (unbiased, >= 0)."""
    log_r = _log_ratio(logprobs, ref_logprobs, mask)
    return jnp.expm1(log_r) - log_r
