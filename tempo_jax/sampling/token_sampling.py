"""One sampling step: logits [N, V] -> next tokens, their untempered and sampling log-probs.

Pure and shape-static: per-row parameters are arrays (`RowSamplingParams`), the only static
number is `max_top_k`. Three kinds of rows share one call:

  greedy rows: argmax of the logits.
  full rows (top_k == 0 and top_p == 1): an exact categorical draw from softmax(logits / T) over
    the whole vocabulary by inverse CDF, without sorting anything.
  truncated rows (top_k > 0 or top_p < 1): `lax.top_k(logits / T, max_top_k)`, then the row's
    top-k mask, then the nucleus over those (already sorted) candidates, then an inverse-CDF
    draw among the survivors. Top-k before nucleus keeps the sort at max_top_k values, not V.

Each row draws one uniform number per step from its own key. The full and truncated branches
sit under `lax.cond` on "does any row need it", so an all-greedy batch (evaluation, the
benchmark) pays only for an argmax and a log-sum-exp over the vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tempo_jax.sampling.params import RowSamplingParams

# Vocabulary-wide argmax and inverse-CDF draws work on [N, V / CHUNK, CHUNK] blocks: plain max /
# sum reductions over V (which XLA vectorises), then index work on one [N, CHUNK] block per row.
# On CPU a variadic (value, index) argmax over V = 32k is ~20x slower than a max, and a cumsum
# over V ~40x; Gumbel-max over V needs V random numbers per row, ~100x the cost of one uniform.
_CHUNK = 256


def _blocks(x: jax.Array, fill: float) -> jax.Array:
    """[N, V] -> [N, ceil(V / C), C], padded with `fill`."""
    num_rows, width = x.shape
    chunk = min(_CHUNK, width)
    count = -(-width // chunk)
    if count * chunk != width:
        x = jnp.pad(x, ((0, 0), (0, count * chunk - width)), constant_values=fill)
    return x.reshape(num_rows, count, chunk)


def _block_at(blocks: jax.Array, index: jax.Array) -> jax.Array:
    """blocks [N, nc, C], index [N] -> the chosen block of each row, [N, C]."""
    return jnp.take_along_axis(blocks, index[:, None, None], axis=1)[:, 0]


def argmax_rows(x: jax.Array) -> jax.Array:
    """jnp.argmax(x, -1) for x [N, V] (first index of the maximum), int32 [N]."""
    blocks = _blocks(x, -jnp.inf)
    block = jnp.argmax(jnp.max(blocks, axis=-1), axis=-1).astype(jnp.int32)
    inside = jnp.argmax(_block_at(blocks, block), axis=-1).astype(jnp.int32)
    return block * blocks.shape[-1] + inside


def _first_above(cumulative: jax.Array, target: jax.Array, weights: jax.Array) -> jax.Array:
    """The first index whose cumulative weight exceeds target, kept on a positive weight. [N]."""
    index = jnp.sum(cumulative <= target[:, None], axis=-1, dtype=jnp.int32)
    # Float rounding may push the target to (or past) the total: fall back to the last index
    # with positive weight, never to a zero-weight (excluded or padding) entry.
    positions = jnp.arange(weights.shape[-1], dtype=jnp.int32)
    last_positive = jnp.max(jnp.where(weights > 0, positions, 0), axis=-1)
    return jnp.minimum(index, last_positive)


def categorical_rows(logits: jax.Array, uniform: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Inverse-CDF draw from softmax(logits) per row, with one uniform number per row.

    Args:
      logits: [N, V] float32, -inf on excluded entries (at least one finite per row).
      uniform: [N] float32 in [0, 1).

    Returns:
      tokens [N] int32 and their log-probs log_softmax(logits)[token] [N].
    """
    top = jnp.max(logits, axis=-1, keepdims=True)
    weights = _blocks(jnp.exp(logits - top), 0.0)  # [N, nc, C]
    block_mass = jnp.sum(weights, axis=-1)  # [N, nc]
    cumulative = jnp.cumsum(block_mass, axis=-1)
    total = cumulative[:, -1]
    target = uniform * total
    block = _first_above(cumulative, target, block_mass)
    before = _take(cumulative, block) - _take(block_mass, block)
    inside_weights = _block_at(weights, block)  # [N, C]
    inside = _first_above(jnp.cumsum(inside_weights, axis=-1), target - before, inside_weights)
    tokens = block * weights.shape[-1] + inside
    logprobs = _take(logits, tokens) - (top[:, 0] + jnp.log(total))
    return tokens, logprobs


def _uniform(keys: jax.Array) -> jax.Array:
    """[N] float32 uniforms in [0, 1), one per row key."""
    return jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys)


def _take(values: jax.Array, index: jax.Array) -> jax.Array:
    return jnp.take_along_axis(values, index[:, None], axis=-1)[:, 0]


def candidate_logits(
    scaled: jax.Array, top_k: jax.Array, top_p: jax.Array, max_top_k: int
) -> tuple[jax.Array, jax.Array]:
    """The top-k / top-p candidate set of each row, as masked sorted logits.

    Args:
      scaled: [N, V] float32 tempered logits (logits / temperature).
      top_k: [N] int32, 0 = no limit (the cap max_top_k still applies).
      top_p: [N] float32 in [0, 1].
      max_top_k: static number of candidates kept before the per-row masks.

    Returns:
      masked [N, K] float32: the K = min(max_top_k, V) largest tempered logits in decreasing
      order, -inf where the row's top-k or nucleus drops them (position 0 is always kept);
      ids [N, K] int32 vocabulary ids of those candidates.
    """
    width = min(max_top_k, scaled.shape[-1])
    values, ids = jax.lax.top_k(scaled, width)
    position = jnp.arange(width, dtype=jnp.int32)[None, :]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, width), width)
    in_top_k = position < k[:, None]
    probs = jax.nn.softmax(jnp.where(in_top_k, values, -jnp.inf), axis=-1)
    # Keep token j while the mass strictly before it is below top_p: the smallest prefix whose
    # mass reaches top_p. top_p == 1 keeps all, exactly (no reliance on the cumsum reaching 1).
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    in_nucleus = (mass_before < top_p[:, None]) | (top_p[:, None] >= 1.0) | (position == 0)
    masked = jnp.where(in_top_k & in_nucleus, values, -jnp.inf)
    return masked, ids.astype(jnp.int32)


def sample_tokens(
    logits: jax.Array, keys: jax.Array, params: RowSamplingParams, max_top_k: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Draws one token per row.

    Args:
      logits: [N, V] raw (untempered) logits.
      keys: [N] typed PRNG keys, one per row (each row's draw uses only its own key).
      params: per-row parameters, fields [N].
      max_top_k: static candidate cap of truncated rows.

    Returns:
      tokens [N] int32;
      logprobs [N] float32, log_softmax(logits)[token] (untempered, full vocabulary);
      sampling_logprobs [N] float32, the token's log-prob under the distribution it was drawn
      from (tempered and truncated, renormalised); 0 on greedy rows.
    """
    logits = logits.astype(jnp.float32)
    num_rows, vocab = logits.shape
    greedy = params.greedy | (params.temperature <= 0)
    truncated = ~greedy & ((params.top_k > 0) | (params.top_p < 1.0))
    full = ~greedy & ~truncated
    temperature = jnp.where(greedy, 1.0, params.temperature)[:, None]
    nothing = (jnp.zeros((num_rows,), jnp.int32), jnp.zeros((num_rows,), jnp.float32))

    uniform = _uniform(keys)

    # The tempered logits are formed inside each branch: an all-greedy step never writes them.
    def draw_full():
        return categorical_rows(logits / temperature, uniform)

    def draw_truncated():
        masked, ids = candidate_logits(logits / temperature, params.top_k, params.top_p, max_top_k)
        slot, logprob = categorical_rows(masked, uniform)
        return _take(ids, slot), logprob

    full_tokens, full_lp = jax.lax.cond(jnp.any(full), draw_full, lambda: nothing)
    trunc_tokens, trunc_lp = jax.lax.cond(jnp.any(truncated), draw_truncated, lambda: nothing)
    greedy_tokens = argmax_rows(logits)
    tokens = jnp.where(greedy, greedy_tokens, jnp.where(truncated, trunc_tokens, full_tokens))
    sampling_lp = jnp.where(greedy, 0.0, jnp.where(truncated, trunc_lp, full_lp))
    # log_softmax at one id per row: a max and an exp-sum over V, no [N, V] array written.
    logprobs = _take(logits, tokens) - jax.nn.logsumexp(logits, axis=-1)
    return tokens, logprobs, sampling_lp
