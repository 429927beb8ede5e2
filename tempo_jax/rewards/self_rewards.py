"""Self-rewards of the baselines, as pure jnp functions (TEMPO_ALGORITHM.md §4).

- TTRL `majority_vote_reward`, EMPO `cluster_frequency_reward`: from answer clusters. Clustering
  the extracted answers by grader equivalence runs outside jit (it calls the grader); these take
  its result: `cluster_ids` [N] int, where two rows of the same group with the same id have
  equivalent answers (ids may be reused across groups and need no particular range), and `valid`
  [N] bool, whether a row has an extractable answer.
- Intuitor `self_certainty`: mean over response tokens of `KL(Uniform || pi(.|x, y_<t))`.
"""

import jax
import jax.numpy as jnp
import numpy as np


def _check_rows(where: str, **arrays) -> int:
    shapes = {name: np.shape(x) for name, x in arrays.items()}
    n = next(iter(shapes.values()))
    for name, shape in shapes.items():
        if len(shape) != 1 or shape != n:
            raise ValueError(f"{where}: `{name}` must be [N] like the others, got {shapes}")
    return n[0]


def _cluster_sizes(cluster_ids, valid, group_ids) -> jax.Array:
    """[N] number of answered rows in the same group with the same cluster (0 if unanswered).

    A pairwise [N, N] comparison: exact for any id range and cheap at RL batch sizes.
    """
    cluster_ids, group_ids = jnp.asarray(cluster_ids), jnp.asarray(group_ids)
    valid = jnp.asarray(valid).astype(bool)
    same_group = group_ids[:, None] == group_ids[None, :]
    same_cluster = cluster_ids[:, None] == cluster_ids[None, :]
    same = same_group & same_cluster & valid[:, None] & valid[None, :]
    return jnp.sum(same, axis=-1, dtype=jnp.int32)


def majority_vote_reward(
    cluster_ids: jax.Array, valid: jax.Array, group_ids: jax.Array
) -> jax.Array:
    """TTRL: 1 for rows in the largest answer cluster(s) of their group, else 0.

    Ties: every row of every largest cluster gets 1. Rows without an answer get 0; a group where
    no row has an answer has no majority, so all its rows get 0.

    Args:
      cluster_ids: [N] int answer-cluster id.
      valid: [N] bool, row has an extractable answer.
      group_ids: [N] int prompt group in [0, N).

    Returns:
      [N] float32 rewards in {0, 1}.
    """
    n = _check_rows(
        "majority_vote_reward", cluster_ids=cluster_ids, valid=valid, group_ids=group_ids
    )
    sizes = _cluster_sizes(cluster_ids, valid, group_ids)
    group_ids = jnp.asarray(group_ids)
    largest = jax.ops.segment_max(sizes, group_ids, num_segments=n)[group_ids]
    return ((sizes == largest) & (sizes > 0)).astype(jnp.float32)


def cluster_frequency_reward(
    cluster_ids: jax.Array, valid: jax.Array, group_ids: jax.Array
) -> jax.Array:
    """EMPO: (size of the row's answer cluster) / n, n = rows in the group (answered or not).

    Rows without an answer get 0.

    Args:
      cluster_ids, valid, group_ids: as in `majority_vote_reward`.

    Returns:
      [N] float32 rewards in [0, 1].
    """
    n = _check_rows(
        "cluster_frequency_reward", cluster_ids=cluster_ids, valid=valid, group_ids=group_ids
    )
    sizes = _cluster_sizes(cluster_ids, valid, group_ids)
    group_ids = jnp.asarray(group_ids)
    group_size = jax.ops.segment_sum(jnp.ones((n,), jnp.int32), group_ids, num_segments=n)
    return sizes.astype(jnp.float32) / group_size[group_ids].astype(jnp.float32)


def token_self_certainty(logits: jax.Array) -> jax.Array:
    """Per position `KL(U || softmax(logits)) = logsumexp(z) - mean(z) - log V`: [..., V] -> [...].

    Works on any leading shape, so the trainer can apply it to one chunk of positions at a time
    and never hold the full [N, L, V] logits; combine with `mean_self_certainty`.
    """
    logits = jnp.asarray(logits)
    logits = logits.astype(jnp.result_type(logits.dtype, jnp.float32))
    vocab = logits.shape[-1]
    return jax.nn.logsumexp(logits, axis=-1) - jnp.mean(logits, axis=-1) - jnp.log(vocab)


def mean_self_certainty(token_values: jax.Array, response_mask: jax.Array) -> jax.Array:
    """[N] masked mean over response tokens of per-token self-certainty [N, L]; 0 if empty."""
    mask = jnp.asarray(response_mask).astype(bool)
    total = jnp.sum(jnp.where(mask, token_values, 0.0), axis=-1)
    return total / jnp.maximum(jnp.sum(mask, axis=-1, dtype=total.dtype), 1.0)


def self_certainty(logits: jax.Array, response_mask: jax.Array) -> jax.Array:
    """Intuitor: [N] mean over response tokens of `KL(Uniform || pi(.|x, y_<t))`.

    Args:
      logits: [N, L, V] policy logits at the positions that predict each response token.
      response_mask: [N, L] bool.
    """
    if np.ndim(logits) != 3 or np.shape(logits)[:2] != np.shape(response_mask):
        raise ValueError(
            f"self_certainty: `logits` must be [N, L, V] matching `response_mask` [N, L], got "
            f"{np.shape(logits)} and {np.shape(response_mask)}"
        )
    return mean_self_certainty(token_self_certainty(logits), response_mask)
