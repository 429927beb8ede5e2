"""Masked reductions over [N, L] token arrays: means, whitening, loss aggregation.

Every reduction selects with `jnp.where` rather than multiplying by the mask, so whatever sits at a
masked position (padding garbage, inf, NaN) never reaches a result or a gradient.
"""

import jax
import jax.numpy as jnp


def as_float(x: jax.typing.ArrayLike) -> jax.Array:
    """Promotes to at least float32 (bf16 logits/values are reduced in float32)."""
    x = jnp.asarray(x)
    return x.astype(jnp.result_type(x.dtype, jnp.float32))


def effective_mask(response_mask: jax.typing.ArrayLike, keep: jax.Array | None) -> jax.Array:
    """[N, L] bool: response tokens of kept rows (`keep` [N] bool, None keeps every row)."""
    mask = jnp.asarray(response_mask).astype(bool)
    if keep is None:
        return mask
    return mask & jnp.asarray(keep).astype(bool)[:, None]


def masked_sum(values: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    """Sum of `values` where `mask` is true."""
    return jnp.sum(jnp.where(mask, values, 0), axis=axis)


def masked_mean(values: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    """Mean of `values` where `mask` is true; 0 where nothing is selected."""
    count = jnp.sum(mask, axis=axis, dtype=jnp.float32)
    return masked_sum(as_float(values), mask, axis) / jnp.maximum(count, 1.0)


def masked_whiten(
    values: jax.Array, mask: jax.Array, extra: jax.typing.ArrayLike | None = None
) -> jax.Array:
    """Whitens `values` over all masked-in tokens of the batch (TEMPO_ALGORITHM.md §3).

    `mu = sum(v m) / (sum m + 1e-8)`, `var = sum((v - mu)^2 m) / (sum m + 1e-8) * n / (n - 1)` with
    `n = sum m` (Bessel), result `(v - mu) / sqrt(var + 1e-8)`; the mean is not added back.

    Args:
      values: [N, L] float.
      mask: [N, L] bool (or 0/1).
      extra: optional [3] (count, sum, sum of squares) of values outside this batch that join
        the statistics (mu, var over both) but are not returned: e.g. the raw advantages of a
        graded labeled batch, as in the authors' mixed batch (`whiten_stats`).

    Returns:
      [N, L] float32, zero at masked positions. With fewer than two tokens the variance is
      undefined (the authors' code raises); inside jit we return zeros, i.e. no signal.
    """
    if extra is not None:
        return _whiten_with_extra(values, mask, jnp.asarray(extra, jnp.float32))
    mask = jnp.asarray(mask).astype(bool)
    values = jnp.where(mask, as_float(values), 0.0)
    n = jnp.sum(mask, dtype=values.dtype)
    mean = masked_sum(values, mask) / (n + 1e-8)
    centered = jnp.where(mask, values - mean, 0.0)
    var = jnp.sum(centered**2) / (n + 1e-8)
    var = var * n / jnp.maximum(n - 1.0, 1.0)
    whitened = centered * jax.lax.rsqrt(var + 1e-8)
    return jnp.where(mask & (n > 1), whitened, 0.0)


def whiten_stats(values: jax.typing.ArrayLike, mask: jax.typing.ArrayLike) -> jax.Array:
    """[3] (count, sum, sum of squares) of `values` [N, L] at `mask`: `masked_whiten`'s `extra`."""
    mask = jnp.asarray(mask).astype(bool)
    values = jnp.where(mask, as_float(values), 0.0)
    return jnp.stack([jnp.sum(mask, dtype=values.dtype), jnp.sum(values), jnp.sum(values**2)])


def _whiten_with_extra(values, mask, extra):
    mask = jnp.asarray(mask).astype(bool)
    values = jnp.where(mask, as_float(values), 0.0)
    count, total, squares = extra[0], extra[1], extra[2]
    n = jnp.sum(mask, dtype=values.dtype) + count
    mean = (masked_sum(values, mask) + total) / (n + 1e-8)
    centered = jnp.where(mask, values - mean, 0.0)
    # sum over the extra values of (x - mean)^2 = squares - 2 mean total + count mean^2
    outside = jnp.maximum(squares - 2.0 * mean * total + count * mean**2, 0.0)
    var = (jnp.sum(centered**2) + outside) / (n + 1e-8)
    var = var * n / jnp.maximum(n - 1.0, 1.0)
    return jnp.where(mask & (n > 1), centered * jax.lax.rsqrt(var + 1e-8), 0.0)


def masked_whiten_by_group(values: jax.Array, mask: jax.Array, group_ids: jax.Array) -> jax.Array:
    """`masked_whiten` within each group of rows (e.g. the samples of one question): every
    group's tokens get their own mean and (Bessel) variance.

    Args:
      values: [N, L] float.
      mask: [N, L] bool.
      group_ids: [N] int in [0, N).

    Returns:
      [N, L] float32, zero at masked positions and in groups with fewer than two tokens.
    """
    mask = jnp.asarray(mask).astype(bool)
    values = jnp.where(mask, as_float(values), 0.0)
    group_ids = jnp.asarray(group_ids)
    rows = values.shape[0]

    def per_group(row_totals):
        return jax.ops.segment_sum(row_totals, group_ids, num_segments=rows)[group_ids]

    n = per_group(jnp.sum(mask, axis=1, dtype=values.dtype))
    mean = per_group(jnp.sum(values, axis=1)) / (n + 1e-8)
    centered = jnp.where(mask, values - mean[:, None], 0.0)
    var = per_group(jnp.sum(centered**2, axis=1)) / (n + 1e-8)
    var = var * n / jnp.maximum(n - 1.0, 1.0)
    whitened = centered * jax.lax.rsqrt(var + 1e-8)[:, None]
    return jnp.where(mask & (n > 1)[:, None], whitened, 0.0)


def seq_mean_token_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over rows of each row's masked token mean ("seq-mean-token-mean").

    `mean_i (sum_t v[i,t] m[i,t] / T_i)` over rows with `T_i > 0`. A row with no masked-in token
    (an empty response, a filtered row, or an unlabeled row in the value loss) is left out of the
    row count, exactly as if it had been removed from the batch. Returns 0 when no row remains.

    Args:
      values: [N, L] float per-token values.
      mask: [N, L] bool.
    """
    lengths = jnp.sum(mask, axis=-1, dtype=jnp.float32)
    row_means = masked_sum(as_float(values), mask, axis=-1) / jnp.maximum(lengths, 1.0)
    n_rows = jnp.sum(lengths > 0, dtype=jnp.float32)
    return jnp.sum(row_means) / jnp.maximum(n_rows, 1.0)


def last_position_values(values: jax.Array, mask: jax.Array) -> jax.Array:
    """[N] value at each row's last masked-in position (`V[i, T_i - 1]` for prefix masks), else 0.

    Args:
      values: [N, L].
      mask: [N, L] bool.
    """
    positions = jnp.arange(mask.shape[-1])
    last = jnp.argmax(jnp.where(mask, positions, -1), axis=-1)
    picked = jnp.take_along_axis(values, last[:, None], axis=-1)[:, 0]
    return jnp.where(jnp.any(mask, axis=-1), picked, 0.0)
