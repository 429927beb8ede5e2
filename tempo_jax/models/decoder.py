"""The Qwen3 / OLMo3 decoder trunk in Flax NNX: embedding, L blocks, final RMSNorm; KV cache.

Layer stacking: every block parameter is stored once for all layers with a leading `layers` axis
(logical name "layers") and the blocks run under `jax.lax.scan`. XLA then compiles one block
body whatever the depth, so compile time on CPU (and TPU) stays flat from the 2-layer test model
to the 40-layer Qwen3-14B, where an unrolled Python loop would grow linearly; the stacked axis
also gives the sharding layer one `layers` dimension to leave replicated or to pipeline later.
OLMo3's per-layer attention pattern survives the scan as a per-layer `is_sliding` flag scanned
alongside the parameters: it selects that layer's window (full or sliding) and rotary
table. The stacked parameters live directly on `DecoderLayers` (no nnx.vmap / nnx.scan), so
their `logical_axes` metadata is exactly what is written below and the forward is a plain scan
over arrays, which keeps `nnx.split` / `nnx.merge` pure functions trivially correct. The trunk
itself is one `jax.jit` with the config static, so eager calls of a model (tests, notebooks)
compile once per config and shape instead of re-tracing the scan every call; inside the
caller's own jit / grad it is inlined.

Block (per layer l, x the residual stream, transformers' semantics):
  qwen3: h = x + Attn(RMSNorm(x));  out = h + MLP(RMSNorm(h)); q/k RMSNorm per head over head_dim.
  olmo3: h = x + RMSNorm(Attn(x));  out = h + RMSNorm(MLP(h)); q/k RMSNorm over the whole
         projection (H * Dh values); sliding layers see only the last `sliding_window` slots.

Padding: batches are left-padded. Positions (for RoPE) are `cumsum(attention_mask) - 1` clipped
at 0 and padded keys are masked; padding queries produce finite garbage that callers mask out.

Sharding: traced inside `tempo_jax.parallel.activation_sharding(mesh, rules)`, the residual
stream is constrained to (batch, length, activation_embed), queries / attention outputs to
(batch, length, activation_heads, -), keys / values to (batch, length, activation_kv_heads, -)
and the MLP hidden to (batch, length, activation_mlp), so activations stay split by rows (and
heads over `tensor`) whatever the parameters' layout; the splash attention kernel runs per shard
of that same layout (`attention.splash_attention`). Outside such a context the model is
mesh-agnostic and the constraints are not applied.

KV cache: `KVCache(k, v)` with k, v [L, B, S_max, K, Dh] in the compute dtype; logical axes
`KV_CACHE_LOGICAL_AXES`. Slot s of row b holds the key/value of the token fed at slot s; the
sampler tracks which slots are real with a [B, S_max] bool `key_mask`. See `Decoder.prefill`
and `Decoder.decode`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from tempo_jax.models import attention, layers
from tempo_jax.models.attention import KEY_AXES, QUERY_AXES
from tempo_jax.models.config import ModelConfig
from tempo_jax.parallel.activations import (
    ActivationSharding,
    constrain,
    current_activation_sharding,
)

KV_CACHE_LOGICAL_AXES = ("layers", "batch", "cache_length", "kv_heads", "head_dim")
# Logical axes of the activations the blocks constrain (see tempo_jax.parallel.activations;
# queries / attention outputs and keys / values: attention.QUERY_AXES / KEY_AXES).
RESIDUAL_AXES = ("batch", "length", "activation_embed")  # x [B, T, D]
MLP_AXES = ("batch", "length", "activation_mlp")  # MLP hidden [B, T, F]


@flax.struct.dataclass
class KVCache:
    """Preallocated keys and values of every layer.

    Attributes:
      k: [L, B, S_max, K, Dh] rotated keys, compute dtype.
      v: [L, B, S_max, K, Dh] values, compute dtype.
    """

    k: jax.Array
    v: jax.Array

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_length(self) -> int:
        return self.k.shape[2]


def init_cache(
    config: ModelConfig, batch_size: int, max_length: int, dtype: object = None
) -> KVCache:
    """An all-zero cache for `batch_size` rows of up to `max_length` tokens (prompt + response).

    Args:
      config: the model's config.
      batch_size: rows B.
      max_length: slots S_max.
      dtype: cache dtype; defaults to the compute dtype `config.dtype`.
    """
    shape = (config.num_layers, batch_size, max_length, config.num_kv_heads, config.head_dim)
    dtype = config.compute_dtype if dtype is None else jnp.dtype(dtype)
    return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """Rotary positions [B, T] int32 of a left-padded batch: cumsum(mask) - 1, clipped at 0."""
    mask = attention_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)


def _param(init, key, shape, dtype, axes) -> nnx.Param:
    return nnx.Param(init(key, shape, dtype), logical_axes=axes)


class DecoderLayers(nnx.Module):
    """The L decoder blocks; every parameter has a leading [L] axis named "layers".

    Parameter names follow transformers' module names so that checkpoint conversion is a
    renaming plus reshape (see `tempo_jax.models.hf_io`).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        n, d, f = c.num_layers, c.hidden_size, c.intermediate_size
        h, k, dh = c.num_heads, c.num_kv_heads, c.head_dim
        dtype = c.weight_dtype
        normal = nnx.initializers.normal(c.initializer_range)
        ones = nnx.initializers.ones

        def matrix(shape, axes):
            return _param(normal, rngs.params(), (n, *shape), dtype, ("layers", *axes))

        def norm(shape, axes):
            return _param(ones, rngs.params(), (n, *shape), dtype, ("layers", *axes))

        if c.arch == "qwen3":
            self.input_layernorm = norm((d,), ("embed",))
        self.q_proj = matrix((d, h, dh), ("embed", "heads", "head_dim"))
        self.k_proj = matrix((d, k, dh), ("embed", "kv_heads", "head_dim"))
        self.v_proj = matrix((d, k, dh), ("embed", "kv_heads", "head_dim"))
        self.o_proj = matrix((h, dh, d), ("heads", "head_dim", "embed"))
        if c.arch == "qwen3":
            self.q_norm = norm((dh,), ("head_dim",))
            self.k_norm = norm((dh,), ("head_dim",))
        else:
            self.q_norm = norm((h, dh), ("heads", "head_dim"))
            self.k_norm = norm((k, dh), ("kv_heads", "head_dim"))
        self.post_attention_layernorm = norm((d,), ("embed",))
        if c.arch == "olmo3":
            self.post_feedforward_layernorm = norm((d,), ("embed",))
        self.gate_proj = matrix((d, f), ("embed", "mlp"))
        self.up_proj = matrix((d, f), ("embed", "mlp"))
        self.down_proj = matrix((f, d), ("mlp", "embed"))

    def arrays(self) -> dict[str, jax.Array]:
        """The stacked parameter arrays by name, for the scan."""
        return {
            name: value[...] for name, value in vars(self).items() if isinstance(value, nnx.Param)
        }


class _Attend(NamedTuple):
    """Per-call (layer-independent) inputs of a block."""

    rope_full: tuple[jax.Array, jax.Array]  # cos, sin [B, T, Dh]
    rope_sliding: tuple[jax.Array, jax.Array]
    slots: attention.Slots  # query / key slots and key validity (no [B, T, S] mask)
    index: jax.Array | None  # int32 scalar: cache slot of the first query; None without cache
    attend_cache: bool  # attend over the whole cache (decode) or only the new chunk (prefill)
    sharding: ActivationSharding | None = None  # activation constraints; None = none


def _shard(x: jax.Array, names: tuple, sharding: ActivationSharding | None) -> jax.Array:
    return x if sharding is None else constrain(x, names, sharding)


def _attend_context(
    c: ModelConfig,
    positions: jax.Array,
    slots: attention.Slots,
    index: jax.Array | None,
    attend_cache: bool,
    sharding: ActivationSharding | None,
) -> _Attend:
    """Rotary tables of both layer kinds for `positions` [B, T], with the call's slots and
    activation-sharding context."""
    rope_full = layers.rope_cos_sin(positions, c.rope, c.head_dim)
    if c.resolved_sliding_rope == c.rope:
        rope_sliding = rope_full
    else:
        rope_sliding = layers.rope_cos_sin(positions, c.resolved_sliding_rope, c.head_dim)
    return _Attend(rope_full, rope_sliding, slots, index, attend_cache, sharding)


def _block(
    config: ModelConfig,
    p: dict[str, jax.Array],
    x: jax.Array,
    is_sliding: jax.Array,
    ctx: _Attend,
    cache_k: jax.Array | None,
    cache_v: jax.Array | None,
    attend: Callable | None = None,
):
    """One decoder block. x [B, T, D] -> ([B, T, D], updated cache_k, cache_v or None).

    `attend(q [B, T, H, Dh], k, v [B, T, K, Dh], cache_k, cache_v) -> (attn [B, T, H, Dh],
    cache_k, cache_v)` replaces the contiguous cache's update and attention when given (the
    paged rollout engine's pools, `tempo_jax.sampling.paged_decode`); the projections, norms,
    rotary and MLP stay this function's."""
    c = config
    dtype = c.compute_dtype
    eps = c.rms_norm_eps
    x = _shard(x, RESIDUAL_AXES, ctx.sharding)

    attn_in = layers.rms_norm(x, p["input_layernorm"], eps) if c.arch == "qwen3" else x
    q = layers.dense(attn_in, p["q_proj"].astype(dtype))
    k = layers.dense(attn_in, p["k_proj"].astype(dtype))
    v = layers.dense(attn_in, p["v_proj"].astype(dtype))
    if c.arch == "qwen3":
        q = layers.rms_norm(q, p["q_norm"], eps)
        k = layers.rms_norm(k, p["k_norm"], eps)
    else:
        q = layers.rms_norm(q, p["q_norm"], eps, axes=(-2, -1))
        k = layers.rms_norm(k, p["k_norm"], eps, axes=(-2, -1))

    if c.has_sliding_layers:
        cos = jnp.where(is_sliding, ctx.rope_sliding[0], ctx.rope_full[0])
        sin = jnp.where(is_sliding, ctx.rope_sliding[1], ctx.rope_full[1])
    else:
        cos, sin = ctx.rope_full
    q = _shard(layers.apply_rope(q, cos, sin), QUERY_AXES, ctx.sharding)
    k = _shard(layers.apply_rope(k, cos, sin), KEY_AXES, ctx.sharding)
    v = _shard(v, KEY_AXES, ctx.sharding)

    if attend is not None:
        attn, cache_k, cache_v = attend(q, k, v, cache_k, cache_v)
        return _block_output(c, p, x, attn, ctx), cache_k, cache_v
    if cache_k is not None:
        start = (0, ctx.index, 0, 0)
        cache_k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), start)
        cache_v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), start)
        if ctx.attend_cache:
            k, v = cache_k, cache_v
    attn = attention.attention(
        q,
        k,
        v,
        ctx.slots,
        window=c.sliding_window if c.has_sliding_layers else None,
        sliding=is_sliding,
        implementation=c.attention,
        dtype=dtype,
        self_attention=not ctx.attend_cache,
        block_size=c.attention_block_size,
        sharding=ctx.sharding,
    )
    return _block_output(c, p, x, attn, ctx), cache_k, cache_v


def _block_output(
    c: ModelConfig, p: dict[str, jax.Array], x: jax.Array, attn: jax.Array, ctx: _Attend
) -> jax.Array:
    """The rest of a block after attention: output projection, residuals, norms and MLP."""
    dtype = c.compute_dtype
    eps = c.rms_norm_eps
    attn = _shard(attn, QUERY_AXES, ctx.sharding)
    attn_out = layers.dense(attn, p["o_proj"].astype(dtype), contract=2)

    def mlp(hidden: jax.Array) -> jax.Array:
        return _shard(hidden, MLP_AXES, ctx.sharding)

    if c.arch == "qwen3":
        x = x + attn_out
        mlp_in = layers.rms_norm(x, p["post_attention_layernorm"], eps)
        x = x + layers.swiglu(
            mlp_in, p["gate_proj"], p["up_proj"], p["down_proj"], dtype=dtype, constrain_hidden=mlp
        )
    else:
        x = x + layers.rms_norm(attn_out, p["post_attention_layernorm"], eps)
        mlp_out = layers.swiglu(
            x, p["gate_proj"], p["up_proj"], p["down_proj"], dtype=dtype, constrain_hidden=mlp
        )
        x = x + layers.rms_norm(mlp_out, p["post_feedforward_layernorm"], eps)
    return _shard(x, RESIDUAL_AXES, ctx.sharding)


class Decoder(nnx.Module):
    """Embedding -> L blocks -> final RMSNorm. Outputs final-normed hidden states [B, T, D].

    Attributes:
      config: the ModelConfig (static; part of the graphdef).
      embed_tokens: [V, D] Param, logical axes ("vocab", "embed").
      layers: DecoderLayers, stacked [L, ...] Params.
      norm: [D] Param, logical axes ("embed",).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        normal = nnx.initializers.normal(config.initializer_range)
        self.embed_tokens = _param(
            normal,
            rngs.params(),
            (config.vocab_size, config.hidden_size),
            config.weight_dtype,
            ("vocab", "embed"),
        )
        self.layers = DecoderLayers(config, rngs=rngs)
        self.norm = _param(
            nnx.initializers.ones,
            rngs.params(),
            (config.hidden_size,),
            config.weight_dtype,
            ("embed",),
        )

    def __call__(self, tokens: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """Full forward over a left-padded batch, no cache.

        Args:
          tokens: [B, T] int token ids (any id at padding).
          attention_mask: [B, T] bool or int, 1 on real tokens.

        Returns:
          [B, T, D] final-normed hidden states in the compute dtype.
        """
        valid = attention_mask.astype(bool)
        slots = jnp.arange(tokens.shape[1], dtype=jnp.int32)
        hidden, _ = self._run(
            tokens, positions_from_mask(valid), valid, slots, slots, None, None, False
        )
        return hidden

    def prefill(
        self, tokens: jax.Array, attention_mask: jax.Array, cache: KVCache
    ) -> tuple[jax.Array, KVCache]:
        """Runs a left-padded prompt and writes its keys/values into cache slots [0, P).

        Args:
          tokens: [B, P] prompt ids, left-padded.
          attention_mask: [B, P], 1 on real prompt tokens.
          cache: a cache with S_max >= P (e.g. from `init_cache`); its content is overwritten
            in slots [0, P) and ignored by this call.

        Returns:
          hidden [B, P, D] (final-normed), updated cache. The next token of row b then goes to
          slot P with position sum(attention_mask[b]), and key_mask starts as attention_mask
          padded with False to S_max.
        """
        valid = attention_mask.astype(bool)
        slots = jnp.arange(tokens.shape[1], dtype=jnp.int32)
        return self._run(
            tokens,
            positions_from_mask(valid),
            valid,
            slots,
            slots,
            cache,
            jnp.zeros((), jnp.int32),
            False,
        )

    def decode(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        key_mask: jax.Array,
        cache: KVCache,
        index: jax.Array | int,
    ) -> tuple[jax.Array, KVCache]:
        """Feeds T new tokens per row (T = 1 for sampling) at cache slots [index, index + T).

        Args:
          tokens: [B, T] ids.
          positions: [B, T] int rotary positions of those tokens (the sampler's per-row count
            of real tokens before each one).
          key_mask: [B, S_max] bool, True on cache slots holding real tokens. The slots written
            by this call are always treated as valid (they hold the tokens being fed).
          cache: the cache to read and update.
          index: int32 scalar, first slot to write; same for every row.

        Returns:
          hidden [B, T, D] (final-normed) and the updated cache.
        """
        length = tokens.shape[1]
        index = jnp.asarray(index, jnp.int32)
        query_slots = index + jnp.arange(length, dtype=jnp.int32)
        key_slots = jnp.arange(cache.max_length, dtype=jnp.int32)
        written = (key_slots >= index) & (key_slots < index + length)
        valid = key_mask.astype(bool) | written[None, :]
        return self._run(tokens, positions, valid, query_slots, key_slots, cache, index, True)

    def _run(
        self, tokens, positions, key_valid, query_slots, key_slots, cache, index, attend_cache
    ):
        return _decoder_forward(
            _trunk_config(self.config),
            attend_cache,
            current_activation_sharding(),
            self.embed_tokens[...],
            self.layers.arrays(),
            self.norm[...],
            tokens,
            positions,
            key_valid,
            query_slots,
            key_slots,
            cache,
            index,
        )


def _trunk_config(config: ModelConfig) -> ModelConfig:
    """The config with fields the trunk ignores set to fixed values, so that models differing
    only in those (a tied and an untied policy, a policy and its critic) share one compile."""
    return dataclasses.replace(
        config,
        tie_word_embeddings=False,
        max_position_embeddings=1,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        initializer_range=1.0,
        param_dtype="float32",  # the arrays' own dtypes are part of the jit cache key anyway
    )


# jit with the (hashable) config static: eager calls of a model reuse one compiled executable
# per config and shape instead of re-tracing the scan each call; under an outer jit / grad the
# inner jit is inlined and costs nothing.
# The activation-sharding context is static too: a trace under one mesh is never reused for
# another (or for an unconstrained call).
@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _decoder_forward(
    c: ModelConfig,
    attend_cache: bool,
    sharding: ActivationSharding | None,
    embed: jax.Array,
    stacked: dict[str, jax.Array],
    final_norm: jax.Array,
    tokens: jax.Array,
    positions: jax.Array,
    key_valid: jax.Array,
    query_slots: jax.Array,
    key_slots: jax.Array,
    cache: KVCache | None,
    index: jax.Array | None,
) -> tuple[jax.Array, KVCache | None]:
    """The trunk as a pure function of arrays; see Decoder.__call__ / prefill / decode."""
    x = _shard(jnp.take(embed, tokens, axis=0).astype(c.compute_dtype), RESIDUAL_AXES, sharding)

    slots = attention.Slots(query_slots, key_slots, key_valid)
    ctx = _attend_context(c, positions, slots, index, attend_cache, sharding)
    is_sliding = jnp.asarray(
        [kind == "sliding_attention" for kind in c.resolved_layer_types], dtype=bool
    )

    def body(x, xs):
        params, sliding, cache_k, cache_v = xs
        x, cache_k, cache_v = _block(c, params, x, sliding, ctx, cache_k, cache_v)
        return x, (cache_k, cache_v)

    if c.remat:
        body = jax.checkpoint(body)
    cache_xs = (None, None) if cache is None else (cache.k, cache.v)
    x, (new_k, new_v) = jax.lax.scan(body, x, (stacked, is_sliding, *cache_xs))
    hidden = _shard(layers.rms_norm(x, final_norm, c.rms_norm_eps), RESIDUAL_AXES, sharding)
    new_cache = None if cache is None else KVCache(k=new_k, v=new_v)
    return hidden, new_cache
