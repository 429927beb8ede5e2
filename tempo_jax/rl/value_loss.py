"""Clipped critic loss on labeled rows (TEMPO_ALGORITHM.md §3).

The clip acts on each row's *mean* value shift, not per token: a row's values may move together by
at most `clip` per update, while their shape within the row is free.
"""

import jax
import jax.numpy as jnp

from tempo_jax.rl.reductions import as_float, effective_mask, masked_mean, seq_mean_token_mean
from tempo_jax.rl.validation import check_shapes


def value_loss(
    values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    response_mask: jax.Array,
    is_labeled: jax.Array,
    clip: float = 0.1,
    keep: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`0.5 mean_{labeled i} (sum_t max((V - G)^2, (V~ - G)^2) m / T_i)`.

    `Delta_i = mean_t V[i,t] - mean_t V_old[i,t]` over the response and
    `V~ = V + (clip(Delta_i, -c, c) - Delta_i)`. Unlabeled rows (and rows dropped by `keep`) take no
    part: no loss, no gradient, not counted in the mean. With no labeled row the loss is exactly 0
    with an all-zero (finite) gradient.

    Args:
      values: [N, L] critic values being trained.
      old_values: [N, L] the values computed before the update (constants).
      returns: [N, L] critic targets G (constants).
      response_mask: [N, L] bool.
      is_labeled: [N] bool.
      clip: bound c on the per-row mean value shift.
      keep: [N] bool rows that survived filtering (None keeps all).

    Returns:
      (loss scalar, metrics) with `clipfrac` (fraction of the labeled response tokens that lie
      in a row whose mean shift was clipped, the authors' definition) and `labeled_rows` (rows
      that took part).
    """
    check_shapes(
        "value_loss",
        {
            "values": values,
            "old_values": old_values,
            "returns": returns,
            "response_mask": response_mask,
        },
        {"is_labeled": is_labeled, "keep": keep},
    )
    rows = jnp.asarray(is_labeled).astype(bool)
    if keep is not None:
        rows = rows & jnp.asarray(keep).astype(bool)
    mask = effective_mask(response_mask, rows)
    values = jnp.where(mask, as_float(values), 0.0)
    old = jnp.where(mask, jax.lax.stop_gradient(as_float(old_values)), 0.0)
    target = jnp.where(mask, jax.lax.stop_gradient(as_float(returns)), 0.0)

    lengths = jnp.maximum(jnp.sum(mask, axis=-1, dtype=values.dtype), 1.0)
    shift = (jnp.sum(values, axis=-1) - jnp.sum(old, axis=-1)) / lengths
    clipped_shift = jnp.clip(shift, -clip, clip)
    clipped_values = values + (clipped_shift - shift)[:, None]
    unclipped_loss = (values - target) ** 2
    clipped_loss = (clipped_values - target) ** 2
    per_token = jnp.maximum(unclipped_loss, clipped_loss)
    metrics = {
        "clipfrac": masked_mean((clipped_shift != shift)[:, None], mask),
        "labeled_rows": jnp.sum(jnp.any(mask, axis=-1), dtype=jnp.float32),
    }
    return 0.5 * seq_mean_token_mean(per_token, mask), metrics
