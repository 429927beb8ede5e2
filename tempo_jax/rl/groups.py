"""Per-prompt-group statistics with static shapes.

Rows of one prompt share a group id in [0, N). Statistics are `segment_sum`s with `num_segments=N`
(there can never be more groups than rows), gathered back so that every row sees its own group's
numbers. Only rows selected by `rows` take part.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from tempo_jax.rl.reductions import as_float


class GroupStats(NamedTuple):
    """Statistics of each row's group, gathered per row (all [N] float32)."""

    count: jax.Array  # rows of the group that take part
    mean: jax.Array  # mean over those rows (0 for an empty group)
    sq_dev: jax.Array  # sum of squared deviations from the mean

    def unbiased_std(self) -> jax.Array:
        """`sqrt(sq_dev / (count - 1))`; 0 for groups with fewer than two rows."""
        return jnp.sqrt(self.sq_dev / jnp.maximum(self.count - 1.0, 1.0))

    def population_std(self) -> jax.Array:
        """`sqrt(sq_dev / count)`; 0 for empty groups."""
        return jnp.sqrt(self.sq_dev / jnp.maximum(self.count, 1.0))


def group_stats(x: jax.Array, group_ids: jax.Array, rows: jax.Array | None = None) -> GroupStats:
    """Group count, mean and squared deviation of `x`, two-pass (no E[x^2]-E[x]^2 cancellation).

    Args:
      x: [N] float.
      group_ids: [N] int in [0, N).
      rows: [N] bool, rows that take part (None: all). Other rows read their group's statistics
        but do not contribute to them.
    """
    x, group_ids = as_float(x), jnp.asarray(group_ids)
    n = x.shape[0]
    rows = jnp.ones((n,), bool) if rows is None else jnp.asarray(rows).astype(bool)
    x = jnp.where(rows, x, 0.0)
    count = jax.ops.segment_sum(rows.astype(x.dtype), group_ids, num_segments=n)
    total = jax.ops.segment_sum(x, group_ids, num_segments=n)
    mean = total / jnp.maximum(count, 1.0)
    dev = jnp.where(rows, x - mean[group_ids], 0.0)
    sq_dev = jax.ops.segment_sum(dev**2, group_ids, num_segments=n)
    return GroupStats(count[group_ids], mean[group_ids], sq_dev[group_ids])
