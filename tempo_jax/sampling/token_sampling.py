"""One sampling step: logits [N, V] -> next tokens, their untempered and sampling log-probs.

Pure and shape-static: per-row parameters are arrays (`RowSamplingParams`), the only static
number is `max_top_k`. Three kinds of rows share one call:

  greedy rows: argmax of the logits.
  full rows (top_k == 0 and top_p == 1): Gumbel-max over the whole vocabulary, i.e. an exact
    categorical draw from softmax(logits / T) without sorting anything.
  truncated rows (top_k > 0 or top_p < 1): `lax.top_k(logits / T, max_top_k)`, then the row's
    top-k mask, then the nucleus over those (already sorted) candidates, then Gumbel-max among
    the survivors. Top-k before nucleus keeps the sort at max_top_k values instead of V.

The full and truncated branches sit under `lax.cond` on "does any row need it", so an all-greedy
batch (evaluation, the benchmark) pays only for an argmax and the log-softmax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tempo_jax.sampling.params import RowSamplingParams


def _gumbel(keys: jax.Array, width: int) -> jax.Array:
    """[N, width] float32 Gumbel noise, one independent stream per row key."""
    return jax.vmap(lambda k: jax.random.gumbel(k, (width,), jnp.float32))(keys)


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
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    greedy = params.greedy | (params.temperature <= 0)
    truncated = ~greedy & ((params.top_k > 0) | (params.top_p < 1.0))
    full = ~greedy & ~truncated
    temperature = jnp.where(greedy, 1.0, params.temperature)
    scaled = logits / temperature[:, None]
    nothing = (jnp.zeros((num_rows,), jnp.int32), jnp.zeros((num_rows,), jnp.float32))

    def draw_full():
        choice = jnp.argmax(scaled + _gumbel(keys, vocab), axis=-1).astype(jnp.int32)
        return choice, _take(jax.nn.log_softmax(scaled, axis=-1), choice)

    def draw_truncated():
        masked, ids = candidate_logits(scaled, params.top_k, params.top_p, max_top_k)
        slot = jnp.argmax(masked + _gumbel(keys, masked.shape[-1]), axis=-1).astype(jnp.int32)
        return _take(ids, slot), _take(jax.nn.log_softmax(masked, axis=-1), slot)

    full_tokens, full_lp = jax.lax.cond(jnp.any(full), draw_full, lambda: nothing)
    trunc_tokens, trunc_lp = jax.lax.cond(jnp.any(truncated), draw_truncated, lambda: nothing)
    greedy_tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    tokens = jnp.where(greedy, greedy_tokens, jnp.where(truncated, trunc_tokens, full_tokens))
    sampling_lp = jnp.where(greedy, 0.0, jnp.where(truncated, trunc_lp, full_lp))
    return tokens, _take(log_probs, tokens), sampling_lp
