"""The decode step the sampler's loop runs: layers unrolled over weights sliced once, outside.

`Policy.decode_step` runs the blocks under `lax.scan` over the stacked [L, ...] parameters and
caches (right for compile time and for training). Inside the sampler's `while_loop` that costs
about half the decode speed on CPU, measured on the benchmark model (4 layers, D 256, V 32k,
batch 64): each step the scan dynamic-slices every layer's weights out of the stacked arrays
(a weight-sized copy per layer, which XLA does not hoist out of the loop), and rebuilds the
stacked [L, B, S, K, Dh] cache from the scan's per-layer outputs (a whole-cache copy per step)
instead of updating one slot in place.

Here the weights are sliced per layer and cast to the compute dtype once, before the loop
(`DecodeWeights`), the loop carries one [B, S, K, Dh] cache per layer (updated in place), and the
step calls the model's own block function layer by layer, so the numbers are the model's: the
teacher-forced tests check them against `Policy.__call__` to 1e-5.

This module reads two private names of `tempo_jax.models.decoder` (`_block`, `_attend_context`):
the block is the model's, not a copy, so an architecture change cannot leave the sampler behind
silently.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from tempo_jax.models import KV_CACHE_LOGICAL_AXES, KVCache, Policy
from tempo_jax.models import attention as model_attention
from tempo_jax.models import decoder as model_decoder
from tempo_jax.models import layers as model_layers
from tempo_jax.parallel.activations import current_activation_sharding

# Logical axes of one layer's cache [B, S, K, Dh].
LAYER_CACHE_LOGICAL_AXES = KV_CACHE_LOGICAL_AXES[1:]


@flax.struct.dataclass
class LayerCaches:
    """Per-layer keys and values: L arrays [B, S, K, Dh] each."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]


@flax.struct.dataclass
class DecodeWeights:
    """A policy's decoder weights laid out for the loop (built once per rollout).

    Attributes:
      embed: [V, D] input embedding.
      layers: L dicts name -> that layer's parameter (matmul weights in the compute dtype).
      final_norm: [D].
    """

    embed: jax.Array
    layers: tuple[dict[str, jax.Array], ...]
    final_norm: jax.Array


def decode_weights(policy: Policy) -> DecodeWeights:
    """Slices the stacked block parameters per layer (call outside the loop)."""
    stacked = policy.model.layers.arrays()
    count = policy.config.num_layers
    per_layer = tuple({name: value[i] for name, value in stacked.items()} for i in range(count))
    return DecodeWeights(
        embed=policy.model.embed_tokens[...],
        layers=per_layer,
        final_norm=policy.model.norm[...],
    )


def split_cache(cache: KVCache) -> LayerCaches:
    """[L, B, S, K, Dh] -> L arrays [B, S, K, Dh] (a one-time copy)."""
    count = cache.k.shape[0]
    return LayerCaches(
        k=tuple(cache.k[i] for i in range(count)), v=tuple(cache.v[i] for i in range(count))
    )


def decode_step(
    policy: Policy,
    weights: DecodeWeights,
    tokens: jax.Array,
    positions: jax.Array,
    key_mask: jax.Array,
    caches: LayerCaches,
    index: jax.Array,
) -> tuple[jax.Array, LayerCaches]:
    """`Policy.decode_step` over per-layer weights and caches.

    Args:
      policy: the policy (for its config and output projection).
      weights: from `decode_weights(policy)`.
      tokens: [B] ids fed now.
      positions: [B] rotary positions of those tokens.
      key_mask: [B, S] bool, True on cache slots holding real tokens (slot `index` is added).
      caches: per-layer caches [B, S, K, Dh].
      index: int32 scalar, the slot written now (same for every row).

    Returns:
      logits [B, V] float32 of the next token and the updated caches.
    """
    c = policy.config
    key_slots = jnp.arange(caches.k[0].shape[1], dtype=jnp.int32)
    query_slots = index + jnp.arange(1, dtype=jnp.int32)
    key_valid = key_mask.astype(bool) | (key_slots == index)[None, :]
    slots = model_attention.Slots(query_slots, key_slots, key_valid)
    ctx = model_decoder._attend_context(
        c, positions[:, None], slots, index, True, current_activation_sharding()
    )

    x = jnp.take(weights.embed, tokens[:, None], axis=0).astype(c.compute_dtype)
    new_k, new_v = [], []
    for i, kind in enumerate(c.resolved_layer_types):
        x, k, v = model_decoder._block(
            c, weights.layers[i], x, kind == "sliding_attention", ctx, caches.k[i], caches.v[i]
        )
        new_k.append(k)
        new_v.append(v)
    hidden = model_layers.rms_norm(x, weights.final_norm, c.rms_norm_eps)
    logits = policy.logits_from_hidden(hidden[:, 0])
    return logits, LayerCaches(k=tuple(new_k), v=tuple(new_v))
