"""Clipped policy-gradient losses: GSPO (sequence ratio, default) and PPO (token ratio).

Inputs at masked positions are replaced before any arithmetic, so garbage there (inf, NaN) reaches
neither the loss nor the gradient. `old_logprobs` and `advantages` are constants (no gradient).

Filtered rows: pass `keep` [N] bool. A dropped row contributes nothing to the loss, to the row or
token counts that normalise it, or to the metrics: the result equals the loss of the batch with
that row removed.
"""

import jax
import jax.numpy as jnp

from tempo_jax.rl.reductions import as_float, effective_mask, masked_mean, seq_mean_token_mean
from tempo_jax.rl.validation import check_shapes

_MAX_LOG_SEQ_RATIO = 10.0  # caps exp(l_i): one stale sequence cannot blow up the step
_MAX_ABS_LOG_RATIO = 20.0  # PPO: keeps exp(delta) finite, as the authors' code does


def _prepare(where, logprobs, old_logprobs, advantages, response_mask, keep):
    check_shapes(
        where,
        {
            "logprobs": logprobs,
            "old_logprobs": old_logprobs,
            "advantages": advantages,
            "response_mask": response_mask,
        },
        {"keep": keep},
    )
    mask = effective_mask(response_mask, keep)
    logprobs = jnp.where(mask, as_float(logprobs), 0.0)
    old = jnp.where(mask, jax.lax.stop_gradient(as_float(old_logprobs)), 0.0)
    adv = jnp.where(mask, jax.lax.stop_gradient(as_float(advantages)), 0.0)
    return mask, logprobs, old, adv


def _clipped_surrogate(ratio, adv, clip_low, clip_high):
    """Per token `max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))` and where clipping won."""
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    return jnp.maximum(unclipped, clipped), clipped > unclipped


def gspo_policy_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    advantages: jax.Array,
    response_mask: jax.Array,
    clip_low: float = 3e-4,
    clip_high: float = 5e-4,
    keep: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """GSPO loss with a token-level gradient path (TEMPO_ALGORITHM.md §3).

    `l_i = sum_t delta m / max(T_i, 1)`, `delta = logp - logp_old`;
    `log s[i,t] = min(logp - sg(logp) + sg(l_i), 10)` (value `exp(l_i)`, gradient `s_i dlogp`);
    `L = max(-A s, -A clip(s, 1 - clip_low, 1 + clip_high))`, aggregated seq-mean-token-mean.

    Args:
      logprobs: [N, L] log-probabilities of the sampled tokens under the current policy.
      old_logprobs: [N, L] the same under the policy that sampled them.
      advantages: [N, L].
      response_mask: [N, L] bool.
      clip_low, clip_high: clip range of the sequence ratio.
      keep: [N] bool rows that survived filtering (None keeps all).

    Returns:
      (loss scalar, metrics) with `clipfrac` (fraction of response tokens where the clipped term
      won) and `approx_kl` (token mean of `-delta`).
    """
    mask, logprobs, old, adv = _prepare(
        "gspo_policy_loss", logprobs, old_logprobs, advantages, response_mask, keep
    )
    delta = logprobs - old
    lengths = jnp.sum(mask, axis=-1, dtype=delta.dtype)
    seq_log_ratio = jnp.sum(delta, axis=-1) / jnp.maximum(lengths, 1.0)
    log_ratio = logprobs - jax.lax.stop_gradient(logprobs)
    log_ratio = log_ratio + jax.lax.stop_gradient(seq_log_ratio)[:, None]
    ratio = jnp.exp(jnp.minimum(log_ratio, _MAX_LOG_SEQ_RATIO))
    per_token, was_clipped = _clipped_surrogate(ratio, adv, clip_low, clip_high)
    metrics = {"clipfrac": masked_mean(was_clipped, mask), "approx_kl": masked_mean(-delta, mask)}
    return seq_mean_token_mean(per_token, mask), metrics


def ppo_policy_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    advantages: jax.Array,
    response_mask: jax.Array,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    keep: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO clip loss with the token ratio `exp(delta)`, token-mean aggregation.

    `delta` is clamped to [-20, 20] before `exp` (only guards against overflow). With
    `dual_clip = c > 1`, tokens with negative advantage are additionally capped at `-A c`.

    Args:
      logprobs, old_logprobs, advantages, response_mask, keep: as in `gspo_policy_loss`.
      clip_low, clip_high: clip range of the token ratio.
      dual_clip: lower bound constant `c` of dual-clip PPO, or None.

    Returns:
      (loss scalar, metrics) with `clipfrac`, `approx_kl` and, with dual clip, `clipfrac_lower`.
    """
    if isinstance(dual_clip, int | float) and not dual_clip > 1.0:
        raise ValueError(f"ppo_policy_loss: `dual_clip` must be > 1, got {dual_clip}")
    mask, logprobs, old, adv = _prepare(
        "ppo_policy_loss", logprobs, old_logprobs, advantages, response_mask, keep
    )
    delta = logprobs - old
    ratio = jnp.exp(jnp.clip(delta, -_MAX_ABS_LOG_RATIO, _MAX_ABS_LOG_RATIO))
    per_token, was_clipped = _clipped_surrogate(ratio, adv, clip_low, clip_high)
    metrics = {"clipfrac": masked_mean(was_clipped, mask), "approx_kl": masked_mean(-delta, mask)}
    if dual_clip is not None:
        cap = -adv * dual_clip
        negative = adv < 0
        metrics["clipfrac_lower"] = masked_mean(negative & (per_token > cap), mask)
        per_token = jnp.where(negative, jnp.minimum(per_token, cap), per_token)
    return masked_mean(per_token, mask), metrics
