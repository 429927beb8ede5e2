"""Log-probabilities, entropy and self-certainty of sampled tokens, chunked over the vocabulary.

`token_stats(hidden, output_embedding, targets)` computes, for M positions with hidden states
h [M, D] and the output projection W [V, D] (logits z = h W^T):

  logprobs[m]       = z[m, y_m] - logsumexp(z[m])                       (differentiable)
  entropy[m]        = logsumexp(z[m]) - sum_v softmax(z[m])_v z[m, v]  (nats, no gradient)
  self_certainty[m] = logsumexp(z[m]) - mean_v z[m, v] - log V          (KL(U || pi), no gradient)

without ever holding the [M, V] logits: a `lax.scan` visits the vocabulary in `n` chunks of R
rows and keeps a running max, sum of exponentials, exponential-weighted logit sum, logit sum and
the target's logit ([M] floats each), the online-softmax recurrence. The backward pass is a
custom VJP that recomputes each chunk's logits from the saved `logsumexp`, so training memory is
O(M R) for the logits too (autodiff through the scan would save every chunk's [M, R] block, i.e.
the full [M, V] logits again).

Chunk layout: chunk k holds vocabulary rows k, k + n, k + 2n, ... (W viewed as [R, n, D]). With
the vocabulary tensor-parallel (W sharded in contiguous blocks over `tensor`), a strided chunk
takes R / tensor rows from every shard, so each chunk is computed where its rows live and the
scan's slicing runs along an unsharded axis; contiguous chunks would each sit on one shard and
make the partitioner gather W. When no divisor of V gives chunks near the requested size (e.g. a
prime vocabulary) W is padded with rows whose logits are masked out.

One chunk (`chunk_size >= V`) takes a plain path instead: the [M, V] logits are computed once and
kept for the backward pass (ordinary autodiff), which saves the recomputation (a quarter of the
projection's FLOPs) when memory allows.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from tempo_jax.models.attention import einsum_f32

# Initial running max: finite, so exp(old_max - new_max) is 0 rather than NaN on the first chunk.
_NEG_LARGE = float(jnp.finfo(jnp.float32).min)


class TokenStats(NamedTuple):
    """Per-position statistics of the policy at the sampled tokens (float32, shaped like targets).

    Attributes:
      logprobs: log pi(y_t | x, y_<t).
      entropy: entropy of pi(. | x, y_<t) in nats.
      self_certainty: KL(Uniform || pi(. | x, y_<t)) (Intuitor's per-token self-certainty).
    """

    logprobs: jax.Array
    entropy: jax.Array
    self_certainty: jax.Array


class ChunkLayout(NamedTuple):
    """How the vocabulary is split: `num_chunks` strided chunks of `rows` rows each.

    `rows * num_chunks >= vocab_size`; ids past `vocab_size` are padding.
    """

    vocab_size: int
    num_chunks: int
    rows: int

    @property
    def padded_size(self) -> int:
        return self.rows * self.num_chunks


def chunk_layout(vocab_size: int, chunk_size: int) -> ChunkLayout:
    """Chooses chunks of at most `chunk_size` rows, avoiding padding where a divisor allows.

    Uses the fewest chunks n with n | V and V / n <= chunk_size, unless that needs more than twice
    the chunks a padded split would (then pads V up to a multiple of n = ceil(V / chunk_size)).

    Args:
      vocab_size: V.
      chunk_size: the largest number of vocabulary rows per chunk (>= 1). `chunk_size >= V`
        gives one chunk (plain full-vocabulary log-softmax).
    """
    if vocab_size < 1 or chunk_size < 1:
        raise ValueError(
            f"chunk_layout: need vocab_size, chunk_size >= 1, got {vocab_size}, {chunk_size}"
        )
    padded_chunks = math.ceil(vocab_size / chunk_size)
    for n in range(padded_chunks, 2 * padded_chunks + 1):
        if vocab_size % n == 0:
            return ChunkLayout(vocab_size, n, vocab_size // n)
    return ChunkLayout(vocab_size, padded_chunks, math.ceil(vocab_size / padded_chunks))


def _chunked_weight(weight: jax.Array, layout: ChunkLayout) -> jax.Array:
    """W [V, D] -> [R, n, D] (zero rows appended when padded); chunk k is [:, k, :]."""
    pad = layout.padded_size - layout.vocab_size
    if pad:
        weight = jnp.concatenate([weight, jnp.zeros((pad, weight.shape[1]), weight.dtype)])
    return weight.reshape(layout.rows, layout.num_chunks, weight.shape[1])


def _chunk_logits(hidden, weight3, k, layout, compute_dtype):
    """Logits [M, R] float32 of chunk k, its vocabulary ids [R] and their validity [R]."""
    w_k = jax.lax.dynamic_index_in_dim(weight3, k, axis=1, keepdims=False)
    logits = einsum_f32("md,rd->mr", hidden, w_k, compute_dtype)
    ids = jnp.arange(layout.rows, dtype=jnp.int32) * layout.num_chunks + k
    return logits, ids, ids < layout.vocab_size, w_k


def _forward(hidden, weight, targets, layout, compute_dtype):
    weight3 = _chunked_weight(weight, layout)
    m_positions = hidden.shape[0]
    zeros = jnp.zeros((m_positions,), jnp.float32)

    def body(carry, k):
        run_max, sum_exp, sum_exp_logit, sum_logit, target_logit = carry
        logits, ids, valid, _ = _chunk_logits(hidden, weight3, k, layout, compute_dtype)
        masked = jnp.where(valid, logits, -jnp.inf)
        new_max = jnp.maximum(run_max, jnp.max(masked, axis=-1))
        scale = jnp.exp(run_max - new_max)
        exp = jnp.exp(masked - new_max[:, None])  # 0 at padding
        sum_exp = sum_exp * scale + jnp.sum(exp, axis=-1)
        weighted = jnp.where(valid, exp * logits, 0.0)
        sum_exp_logit = sum_exp_logit * scale + jnp.sum(weighted, axis=-1)
        sum_logit = sum_logit + jnp.sum(jnp.where(valid, logits, 0.0), axis=-1)
        hit = ids[None, :] == targets[:, None]
        target_logit = target_logit + jnp.sum(jnp.where(hit, logits, 0.0), axis=-1)
        return (new_max, sum_exp, sum_exp_logit, sum_logit, target_logit), None

    init = (jnp.full((m_positions,), _NEG_LARGE, jnp.float32), zeros, zeros, zeros, zeros)
    (run_max, sum_exp, sum_exp_logit, sum_logit, target_logit), _ = jax.lax.scan(
        body, init, jnp.arange(layout.num_chunks, dtype=jnp.int32)
    )
    log_z = run_max + jnp.log(sum_exp)
    stats = TokenStats(
        logprobs=target_logit - log_z,
        entropy=log_z - sum_exp_logit / sum_exp,
        self_certainty=log_z - sum_logit / layout.vocab_size - math.log(layout.vocab_size),
    )
    return stats, log_z


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _token_stats(hidden, weight, targets, layout, compute_dtype):
    return _forward(hidden, weight, targets, layout, compute_dtype)[0]


def _token_stats_fwd(hidden, weight, targets, layout, compute_dtype):
    stats, log_z = _forward(hidden, weight, targets, layout, compute_dtype)
    return stats, (hidden, weight, targets, log_z)


def _token_stats_bwd(layout, compute_dtype, residuals, cotangents):
    """d logprobs / d z = onehot(y) - softmax(z); entropy and self-certainty carry no gradient."""
    hidden, weight, targets, log_z = residuals
    g_logprobs = cotangents.logprobs.astype(jnp.float32)
    weight3 = _chunked_weight(weight, layout)

    def body(carry, k):
        d_hidden, d_weight3 = carry
        logits, ids, valid, w_k = _chunk_logits(hidden, weight3, k, layout, compute_dtype)
        probs = jnp.where(valid, jnp.exp(logits - log_z[:, None]), 0.0)
        onehot = (ids[None, :] == targets[:, None]).astype(jnp.float32)
        d_logits = g_logprobs[:, None] * (onehot - probs)  # [M, R]
        d_hidden = d_hidden + einsum_f32("mr,rd->md", d_logits, w_k, compute_dtype)
        d_w_k = einsum_f32("mr,md->rd", d_logits, hidden, compute_dtype)
        d_weight3 = jax.lax.dynamic_update_index_in_dim(d_weight3, d_w_k, k, axis=1)
        return (d_hidden, d_weight3), None

    init = (
        jnp.zeros(hidden.shape, jnp.float32),
        jnp.zeros(weight3.shape, jnp.float32),
    )
    (d_hidden, d_weight3), _ = jax.lax.scan(
        body, init, jnp.arange(layout.num_chunks, dtype=jnp.int32)
    )
    d_weight = d_weight3.reshape(layout.padded_size, weight.shape[1])[: layout.vocab_size]
    return d_hidden.astype(hidden.dtype), d_weight.astype(weight.dtype), None


_token_stats.defvjp(_token_stats_fwd, _token_stats_bwd)


def _unchunked_token_stats(hidden, weight, targets, compute_dtype) -> TokenStats:
    """One chunk: full [M, V] logits, differentiated by ordinary autodiff (no recomputation)."""
    logits = einsum_f32("md,vd->mv", hidden, weight, compute_dtype)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[:, None].astype(jnp.int32), -1)[:, 0]
    logits = jax.lax.stop_gradient(logits)
    log_z_const = jax.lax.stop_gradient(log_z)
    probs = jnp.exp(logits - log_z_const[:, None])
    return TokenStats(
        logprobs=target_logit - log_z,
        entropy=log_z_const - jnp.sum(probs * logits, axis=-1),
        self_certainty=log_z_const - jnp.mean(logits, axis=-1) - math.log(weight.shape[0]),
    )


def token_stats(
    hidden: jax.Array,
    output_embedding: jax.Array,
    targets: jax.Array,
    *,
    chunk_size: int = 8192,
    compute_dtype: jnp.dtype | str | None = None,
) -> TokenStats:
    """Log-prob, entropy and self-certainty of `targets` without materialising [..., V] logits.

    Args:
      hidden: [..., D] final-normed hidden states (any leading shape, e.g. [N, L, D]).
      output_embedding: W [V, D]; logits are `hidden @ W.T` (`Policy.output_embedding()`).
      targets: [...] int token ids in [0, V) (ids outside give logprob = -logsumexp).
      chunk_size: at most this many vocabulary rows per chunk (peak extra memory is about
        `prod(leading) * chunk_size` float32 values, twice in the backward pass).
      compute_dtype: dtype of the matmul operands (accumulation is always float32), as the
        models' `logits_from_hidden`; default `hidden.dtype`.

    Returns:
      TokenStats of float32 arrays shaped like `targets`; only `logprobs` is differentiable
      (with respect to `hidden` and `output_embedding`).
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(
            f"token_stats: hidden {hidden.shape} must be [..., D] over targets {targets.shape}"
        )
    if output_embedding.ndim != 2 or output_embedding.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"token_stats: output_embedding must be [V, D={hidden.shape[-1]}], got "
            f"{output_embedding.shape}"
        )
    dtype = jnp.dtype(hidden.dtype if compute_dtype is None else compute_dtype)
    layout = chunk_layout(output_embedding.shape[0], chunk_size)
    lead = targets.shape
    args = (hidden.reshape(-1, hidden.shape[-1]), output_embedding, targets.reshape(-1))
    if layout.num_chunks == 1:
        flat = _unchunked_token_stats(*args, dtype)
    else:
        flat = _token_stats(*args[:2], args[2].astype(jnp.int32), layout, dtype)
    return TokenStats(
        logprobs=flat.logprobs.reshape(lead),
        entropy=jax.lax.stop_gradient(flat.entropy).reshape(lead),
        self_certainty=jax.lax.stop_gradient(flat.self_certainty).reshape(lead),
    )
