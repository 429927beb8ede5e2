"""Group filters as keep masks (no dynamic shapes under jit).

A filter returns `keep` [N] bool; pass it on as the `keep` argument of the advantage estimators
and losses, which then treat dropped rows as absent. Selecting surviving prompts and topping the
batch up with new generations (at most 10 batches, TEMPO_ALGORITHM.md §3) happens outside jit.
"""

import jax
import jax.numpy as jnp

from tempo_jax.rl.groups import group_stats
from tempo_jax.rl.validation import check_group_ids, check_shapes


def _rows(keep, n):
    return jnp.ones((n,), bool) if keep is None else jnp.asarray(keep).astype(bool)


def filter_groups(
    scores: jax.Array,
    is_labeled: jax.Array,
    group_ids: jax.Array,
    keep: jax.Array | None = None,
    std_threshold: float = 1e-6,
) -> jax.Array:
    """TEMPO's filter: drop labeled groups whose rewards all equal (population std < 1e-6).

    Such a group carries no signal. Unlabeled rows are never dropped. The statistics of a group
    are taken over its labeled, kept rows, so a labeled singleton (std 0) is dropped too.

    Args:
      scores: [N] rewards.
      is_labeled: [N] bool.
      group_ids: [N] int in [0, N).
      keep: [N] bool rows already kept (None: all); the result never keeps a row it drops.
      std_threshold: population-std threshold below which a group counts as constant.

    Returns:
      keep [N] bool.
    """
    check_shapes(
        "filter_groups", {}, {"scores": scores, "is_labeled": is_labeled, "group_ids": group_ids}
    )
    check_group_ids("filter_groups", group_ids)
    group_ids = jnp.asarray(group_ids)
    keep = _rows(keep, group_ids.shape[0])
    labeled = keep & jnp.asarray(is_labeled).astype(bool)
    constant = group_stats(scores, group_ids, labeled).population_std() < std_threshold
    return keep & ~(labeled & constant)


def dapo_filter_groups(
    correct: jax.Array, group_ids: jax.Array, keep: jax.Array | None = None
) -> jax.Array:
    """DAPO dynamic sampling for RLVR: drop groups that are all correct or all wrong.

    Args:
      correct: [N] bool graded correctness.
      group_ids: [N] int in [0, N).
      keep: [N] bool rows already kept (None: all); statistics use kept rows only.

    Returns:
      keep [N] bool; a singleton group is always dropped.
    """
    check_shapes("dapo_filter_groups", {}, {"correct": correct, "group_ids": group_ids})
    check_group_ids("dapo_filter_groups", group_ids)
    group_ids = jnp.asarray(group_ids)
    n = group_ids.shape[0]
    keep = _rows(keep, n)
    correct = keep & jnp.asarray(correct).astype(bool)
    size = jax.ops.segment_sum(keep.astype(jnp.int32), group_ids, num_segments=n)[group_ids]
    hits = jax.ops.segment_sum(correct.astype(jnp.int32), group_ids, num_segments=n)[group_ids]
    return keep & (hits > 0) & (hits < size)
