"""Masked grouped-query attention, one function with several implementations.

`attention(q, k, v, slots, ...)` computes what transformers' eager attention computes for Qwen3 /
OLMo3 (causal, left padding masked, OLMo3's sliding window on some layers); the implementation is
a static choice (`ModelConfig.attention`):

- `dense`: float32 scores [B, K, G, T, S] and a [B, T, S] mask, the reference of the parity tests.
- `blockwise`: keys in blocks of `block_size` with an online softmax (flash attention in pure
  JAX): memory O(T * block) per row instead of O(T * S); its custom VJP recomputes each block's
  scores from the saved log-sum-exp, so the backward pass is bounded the same way. A call with
  S <= block_size takes the dense path (one block; nothing to save).
- `splash`: the Pallas TPU kernel (`jax.experimental.pallas.ops.tpu.splash_attention`); padding
  becomes segment ids (padding 0, tokens 1: a token never sees padding), the causal / sliding
  window a static `CausalMask` / `LocalMask`. `interpret=True` runs it on CPU (tests); under an
  activation-sharding context it runs per shard of its mesh.
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")`; each left-padded row is
  rotated to right padding (its tokens must be one contiguous run, as every batch here is) so
  that cuDNN's sequence lengths express the padding.
- `auto`: splash on TPU, cuDNN on GPU (bfloat16 compute; float32 takes blockwise), blockwise
  elsewhere.

splash and cudnn handle self-attention only (queries and keys the same slots: prefill and the
training forwards); several queries against a cache fall back to blockwise. One query per row
(a decode step) takes `decode_attention` whatever the choice.

Masks are never passed as [B, T, S] arrays: `Slots` holds the query and key slot indices and the
key validity, and each implementation builds what it needs (a block of the mask, segment ids,
sequence lengths).

Shapes: B batch, T queries, S keys, H query heads, K key/value heads, G = H // K, Dh head dim.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tempo_jax.parallel.activations import ActivationSharding

IMPLEMENTATIONS = ("auto", "dense", "blockwise", "splash", "cudnn")

# Logical axes of queries / attention outputs [B, T, H, Dh] and keys / values [B, T, K, Dh]: the
# decoder's activation constraints, and the per-shard layout of the splash kernel.
QUERY_AXES = ("batch", "length", "activation_heads", None)
KEY_AXES = ("batch", "length", "activation_kv_heads", None)

# Bigger than any slot distance: the window of a full-attention layer.
NO_WINDOW = 2**30

# Finite rather than -inf so that a query with no visible key (a padding position) gets a
# uniform softmax instead of NaN, which would poison masked sums downstream.
MASKED_SCORE = float(np.finfo(np.float32).min)

# The splash kernel's tiles are multiples of the TPU lane width.
_LANES = 128
_SPLASH_BLOCK = 512


class Slots(NamedTuple):
    """Which keys a query may see, without a [T, S] array.

    Slots are sequence (or cache) indices, not rotary positions: transformers' causal and
    sliding-window masks compare indices, which for left-padded rows differ from positions only
    by a per-row constant. A query at slot i sees key slot j iff key_valid[b, j] and
    i - window < j <= i.

    Attributes:
      query: [T] int32 slot of each query.
      key: [S] int32 slot of each key.
      key_valid: [B, S] bool, False on padding / empty cache slots.
    """

    query: jax.Array
    key: jax.Array
    key_valid: jax.Array


def einsum_f32(spec: str, a: jax.Array, b: jax.Array, dtype) -> jax.Array:
    """`jnp.einsum(spec, a, b)` of both operands cast to `dtype` (the compute dtype), summed and
    returned in float32: the mixed-precision contraction of the attention and the log-prob head."""
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def resolve(implementation: str, platform: str | None = None, dtype=jnp.float32) -> str:
    """The implementation `auto` stands for on `platform` (default: JAX's default backend)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation != "auto":
        return implementation
    platform = platform or jax.default_backend()
    if platform == "tpu":
        return "splash"
    if platform in ("gpu", "cuda", "rocm") and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    return "blockwise"


def visible(slots: Slots, window: jax.Array | int) -> jax.Array:
    """[B, T, S] bool: valid, causal and inside the window (`window` an int32 scalar)."""
    distance = slots.query[:, None] - slots.key[None, :]
    ok = (distance >= 0) & (distance < window)
    return ok[None, :, :] & slots.key_valid[:, None, :]


def _layer_window(window: int | None, sliding: bool | jax.Array) -> jax.Array | int:
    """This layer's window: `window` where it is sliding, NO_WINDOW otherwise."""
    if window is None or sliding is False:
        return NO_WINDOW
    if sliding is True:
        return window
    return jnp.where(sliding, window, NO_WINDOW).astype(jnp.int32)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    slots: Slots,
    *,
    window: int | None,
    sliding: bool | jax.Array,
    implementation: str,
    dtype: jnp.dtype,
    self_attention: bool,
    block_size: int = 512,
    interpret: bool = False,
    sharding: ActivationSharding | None = None,
) -> jax.Array:
    """Scaled dot-product attention; query head n uses key/value head n // G (`repeat_kv`).

    Args:
      q: [B, T, H, Dh] queries.
      k: [B, S, K, Dh] keys.
      v: [B, S, K, Dh] values.
      slots: query / key slots and key validity.
      window: the model's sliding window (None: no sliding layer).
      sliding: whether this layer uses the window (a Python bool, or a traced bool scalar
        under the layer scan).
      implementation: one of IMPLEMENTATIONS.
      dtype: compute dtype of the probability-weighted sum.
      self_attention: queries and keys are the same slots (T == S): prefill, training.
      block_size: key block of `blockwise`.
      interpret: run the splash kernel in Pallas interpret mode (CPU tests).
      sharding: the activation-sharding context the caller is traced in (splash runs per shard
        of it); None = one device.

    Returns:
      [B, T, H, Dh] in `dtype`.
    """
    if q.shape[1] == 1:
        return decode_attention(q, k, v, slots, _layer_window(window, sliding), dtype=dtype)
    impl = resolve(implementation, dtype=dtype)
    if impl in ("splash", "cudnn") and self_attention:
        fn = functools.partial(
            splash_attention if impl == "splash" else cudnn_attention, dtype=dtype
        )
        if impl == "splash":
            fn = functools.partial(fn, interpret=interpret, sharding=sharding)
        if window is None or sliding is False:
            return fn(q, k, v, slots.key_valid, window=None)
        if sliding is True:
            return fn(q, k, v, slots.key_valid, window=window)
        return jax.lax.cond(
            sliding,
            lambda: fn(q, k, v, slots.key_valid, window=window),
            lambda: fn(q, k, v, slots.key_valid, window=None),
        )
    layer_window = _layer_window(window, sliding)
    if impl == "dense":
        return dense_attention(q, k, v, visible(slots, layer_window), dtype=dtype)
    return blockwise_attention(q, k, v, slots, layer_window, dtype=dtype, block_size=block_size)


# --- dense -------------------------------------------------------------------------------------


def dense_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, dtype: jnp.dtype
) -> jax.Array:
    """Attention over a materialised mask [B, T, S] (True: visible). Returns [B, T, H, Dh]."""
    batch, length, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    q = q.reshape(batch, length, num_kv_heads, num_heads // num_kv_heads, head_dim)
    scores = jnp.einsum(
        "btkgh,bskh->bkgts", q, k.astype(q.dtype), preferred_element_type=jnp.float32
    )
    scores = scores * (head_dim**-0.5)
    scores = jnp.where(mask[:, None, None, :, :], scores, MASKED_SCORE)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = einsum_f32("bkgts,bskh->btkgh", probs, v, dtype)
    return out.reshape(batch, length, num_heads, head_dim).astype(dtype)


# --- one query per row -------------------------------------------------------------------------


def decode_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, slots: Slots, window, *, dtype: jnp.dtype
) -> jax.Array:
    """Attention of one query per row over a cache read in its stored [B, S, K, Dh] layout.

    Scores and the weighted sum are products reduced over head_dim and over slots, with the
    cache converted element by element inside the fused reduction (never a whole-cache copy in
    another dtype or layout). The einsum form is a dot batched over (b, k), which XLA:CPU feeds
    by transposing the whole key and value cache to [B, K, S, Dh] at every step and layer, for
    [G, Dh] x [Dh, S] slivers of work. Sampler benchmark (batch 64, 191 slots, 4 layers):
    decode step 29.7 -> 23.5 ms. (A batched dot over the [B, S * K, Dh] view with other heads'
    pairs masked out was slower: 61 ms.)

    Args:
      q: [B, 1, H, Dh]; k, v: [B, S, K, Dh] (any dtype; accumulation in float32).
      slots: query [1], key [S] slots, key_valid [B, S].
      window: int32 scalar window of this layer.

    Returns:
      [B, 1, H, Dh] in `dtype`.
    """
    batch, _, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    mask = visible(slots, window)[:, 0, :]  # [B, S]
    q = q.reshape(batch, 1, num_kv_heads, num_heads // num_kv_heads, head_dim)
    # [B, 1, K, G, Dh] x [B, S, K, 1, Dh], summed over Dh -> [B, S, K, G]
    scores = jnp.sum(q.astype(jnp.float32) * k[:, :, :, None, :].astype(jnp.float32), axis=-1)
    scores = scores * (head_dim**-0.5)
    scores = jnp.where(mask[:, :, None, None], scores, MASKED_SCORE)
    probs = jax.nn.softmax(scores, axis=1).astype(dtype).astype(jnp.float32)
    # [B, S, K, G, 1] x [B, S, K, 1, Dh], summed over S -> [B, K, G, Dh]
    values = v.astype(dtype)[:, :, :, None, :].astype(jnp.float32)
    out = jnp.sum(probs[..., None] * values, axis=1)
    return out.reshape(batch, 1, num_heads, head_dim).astype(dtype)


# --- blockwise (online softmax over key blocks) ------------------------------------------------


def blockwise_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    slots: Slots,
    window: jax.Array | int,
    *,
    dtype: jnp.dtype,
    block_size: int = 512,
) -> jax.Array:
    """Attention over keys in blocks of `block_size` (see the module docstring).

    Args:
      q: [B, T, H, Dh]; k, v: [B, S, K, Dh]; slots: as in `attention`.
      window: int32 scalar (NO_WINDOW for full attention).
      dtype: compute dtype of the weighted sum (scores and softmax statistics are float32).
      block_size: keys per block; S <= block_size computes one dense block.

    Returns:
      [B, T, H, Dh] in `dtype`.
    """
    if block_size < 1:
        raise ValueError(f"attention block_size must be >= 1, got {block_size}")
    length = k.shape[1]
    if length <= block_size:
        return dense_attention(q, k, v, visible(slots, window), dtype=dtype)
    blocks = math.ceil(length / block_size)
    pad = blocks * block_size - length
    if pad:
        widths = ((0, 0), (0, pad), (0, 0), (0, 0))
        k, v = jnp.pad(k, widths), jnp.pad(v, widths)
        slots = Slots(
            slots.query,
            jnp.pad(slots.key, (0, pad)),
            jnp.pad(slots.key_valid, ((0, 0), (0, pad))),
        )
    window = jnp.asarray(window, jnp.int32)
    out = _flash(q, k, v, slots, window, block_size, jnp.dtype(dtype))
    return out.astype(dtype)


def _key_blocks(k, v, slots: Slots, block: int):
    """Keys, values [n, B, C, K, Dh], key slots [n, C] and validity [n, B, C] per block."""
    batch, length = k.shape[:2]
    n = length // block

    def split(x):  # [B, S, ...] -> [n, B, C, ...]
        return jnp.swapaxes(x.reshape(batch, n, block, *x.shape[2:]), 0, 1)

    return split(k), split(v), slots.key.reshape(n, block), split(slots.key_valid)


def _block_scores(qg, k_c, query_slots, key_slots_c, valid_c, window, scale):
    """Masked float32 scores [B, K, G, T, C] of one key block."""
    scores = jnp.einsum(
        "btkgh,bckh->bkgtc", qg, k_c.astype(qg.dtype), preferred_element_type=jnp.float32
    )
    mask = visible(Slots(query_slots, key_slots_c, valid_c), window)
    return jnp.where(mask[:, None, None], scores * scale, MASKED_SCORE)


def _flash_forward(q, k, v, slots, window, block, dtype):
    batch, length, num_heads, head_dim = q.shape
    num_kv = k.shape[2]
    qg = q.reshape(batch, length, num_kv, num_heads // num_kv, head_dim)
    scale = head_dim**-0.5
    stat_shape = (batch, num_kv, num_heads // num_kv, length)

    def body(carry, xs):
        run_max, run_sum, acc = carry
        k_c, v_c, key_slots_c, valid_c = xs
        scores = _block_scores(qg, k_c, slots.query, key_slots_c, valid_c, window, scale)
        new_max = jnp.maximum(run_max, jnp.max(scores, axis=-1))
        correction = jnp.exp(run_max - new_max)
        probs = jnp.exp(scores - new_max[..., None])
        run_sum = run_sum * correction + jnp.sum(probs, axis=-1)
        acc = acc * correction[..., None] + einsum_f32("bkgtc,bckh->bkgth", probs, v_c, dtype)
        return (new_max, run_sum, acc), None

    init = (
        jnp.full(stat_shape, MASKED_SCORE, jnp.float32),
        jnp.zeros(stat_shape, jnp.float32),
        jnp.zeros((*stat_shape, head_dim), jnp.float32),
    )
    (run_max, run_sum, acc), _ = jax.lax.scan(body, init, _key_blocks(k, v, slots, block))
    out = acc / run_sum[..., None]  # [B, K, G, T, Dh]
    out = jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(batch, length, num_heads, head_dim)
    return out.astype(dtype), run_max + jnp.log(run_sum)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _flash(q, k, v, slots, window, block, dtype):
    return _flash_forward(q, k, v, slots, window, block, dtype)[0]


def _flash_fwd(q, k, v, slots, window, block, dtype):
    out, log_sum = _flash_forward(q, k, v, slots, window, block, dtype)
    return out, (q, k, v, slots, window, out, log_sum)


def _flash_bwd(block, dtype, residuals, d_out):
    """Gradients block by block from the saved log-sum-exp (FlashAttention-2's backward)."""
    q, k, v, slots, window, out, log_sum = residuals
    batch, length, num_heads, head_dim = q.shape
    num_kv = k.shape[2]
    groups = num_heads // num_kv
    qg = q.reshape(batch, length, num_kv, groups, head_dim)
    d_outg = d_out.reshape(qg.shape).astype(jnp.float32)
    # D[t] = sum_h dO[t, h] O[t, h] = sum_s P[t, s] dP[t, s], the softmax's correction term.
    delta = jnp.sum(d_outg * out.reshape(qg.shape).astype(jnp.float32), axis=-1)
    delta = jnp.transpose(delta, (0, 2, 3, 1))  # [B, K, G, T]
    scale = head_dim**-0.5

    def body(d_q, xs):
        k_c, v_c, key_slots_c, valid_c = xs
        scores = _block_scores(qg, k_c, slots.query, key_slots_c, valid_c, window, scale)
        probs = jnp.exp(scores - log_sum[..., None])  # [B, K, G, T, C]
        d_v = einsum_f32("bkgtc,btkgh->bckh", probs, d_outg, dtype)
        d_probs = einsum_f32("btkgh,bckh->bkgtc", d_outg, v_c, dtype)
        d_scores = (probs * (d_probs - delta[..., None]) * scale).astype(dtype)
        d_q = d_q + einsum_f32("bkgtc,bckh->btkgh", d_scores, k_c, dtype)
        d_k = einsum_f32("bkgtc,btkgh->bckh", d_scores, qg, dtype)
        return d_q, (d_k, d_v)

    d_q, (d_k, d_v) = jax.lax.scan(
        body, jnp.zeros(qg.shape, jnp.float32), _key_blocks(k, v, slots, block)
    )

    def merge(x):  # [n, B, C, K, Dh] -> [B, n * C, K, Dh]
        x = jnp.swapaxes(x, 0, 1)
        return x.reshape(batch, -1, *x.shape[3:])

    return (
        d_q.reshape(q.shape).astype(q.dtype),
        merge(d_k).astype(k.dtype),
        merge(d_v).astype(v.dtype),
        None,
        None,
    )


_flash.defvjp(_flash_fwd, _flash_bwd)


# --- splash (Pallas, TPU) ----------------------------------------------------------------------


def _splash_kernel(length: int, num_heads: int, window: int | None, block: int, interpret: bool):
    """The splash kernel for [H, length, Dh] queries (built at trace time from static shapes)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    shape = (length, length)
    if window is None:
        mask = splash.CausalMask(shape)
    else:  # i - window < j <= i
        mask = splash.LocalMask(shape, window_size=(window - 1, 0), offset=0)
    # One block size for every forward and backward tile.
    fields = ("q", "kv", "kv_compute", "q_dkv", "kv_dkv", "kv_dkv_compute", "q_dq", "kv_dq")
    sizes = splash.BlockSizes(**{f"block_{name}": block for name in fields})
    return splash.make_splash_mha(
        splash.MultiHeadMask([mask] * num_heads),
        block_sizes=sizes,
        head_shards=1,
        q_seq_shards=1,
        interpret=interpret,
    )


def splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_valid: jax.Array,
    *,
    window: int | None,
    dtype: jnp.dtype,
    interpret: bool = False,
    sharding: ActivationSharding | None = None,
) -> jax.Array:
    """Causal (or sliding-window) self-attention by the Pallas splash kernel.

    Padding is a segment of its own (id 0): a token (id 1) never sees it, and a padding query
    sees at least itself, so no softmax row is empty. The sequence is padded at the end to a
    multiple of the kernel's tile.

    Args:
      q: [B, T, H, Dh]; k, v: [B, T, K, Dh]; key_valid: [B, T] bool.
      window: sliding window or None (causal).
      dtype: compute dtype of the kernel's operands and output.
      interpret: Pallas interpret mode (runs on CPU).
      sharding: an activation-sharding context (`tempo_jax.parallel.activation_sharding`, which
        every compiled step, forward and sampler is traced in): the kernel then runs per shard
        (`jax.shard_map` over its mesh), q / out split as QUERY_AXES and k / v as KEY_AXES by
        its rules (rows over the batch axes, heads over tensor), the layout the decoder
        constrains them to. A Pallas kernel is opaque to XLA's partitioner, which would
        otherwise gather every operand onto every chip. None: one device.

    Returns:
      [B, T, H, Dh] in `dtype`.

    Raises:
      ValueError: under `sharding`, when its mesh axes do not divide the rows or heads (as
        every activation constraint does, rather than replicate).
    """
    run = functools.partial(_splash_local, window=window, dtype=dtype, interpret=interpret)
    if sharding is None:
        return run(q, k, v, key_valid)
    query = sharding.sharding(q.shape, QUERY_AXES).spec
    keys = sharding.sharding(k.shape, KEY_AXES).spec
    valid = sharding.sharding(key_valid.shape, QUERY_AXES[:2]).spec
    if query[2] != keys[2]:  # each shard's query heads must use its own key / value heads
        raise ValueError(
            f"splash attention: query heads split over {query[2]} but key / value heads over "
            f"{keys[2]}; give the rules activation_heads and activation_kv_heads the same axes"
        )
    return jax.shard_map(
        run,
        mesh=sharding.mesh,
        in_specs=(query, keys, keys, valid),
        out_specs=query,
        check_vma=False,
    )(q, k, v, key_valid)


def _splash_local(q, k, v, key_valid, *, window, dtype, interpret):
    """`splash_attention` on one device's rows and heads."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    batch, length, num_heads, head_dim = q.shape
    padded = -(-length // _LANES) * _LANES
    block = _SPLASH_BLOCK if padded >= _SPLASH_BLOCK else padded
    padded = -(-padded // block) * block
    pad = ((0, 0), (0, padded - length), (0, 0), (0, 0))
    scaled = (q.astype(jnp.float32) * head_dim**-0.5).astype(dtype)
    # [B, T, N, Dh] -> [B, N, T, Dh], the kernel's head-major layout.
    q_h, k_h, v_h = (
        jnp.transpose(jnp.pad(x.astype(dtype), pad), (0, 2, 1, 3)) for x in (scaled, k, v)
    )
    segments = jnp.pad(key_valid.astype(jnp.int32), ((0, 0), (0, padded - length)))
    kernel = _splash_kernel(padded, num_heads, window, block, interpret)

    def one_row(q_r, k_r, v_r, seg_r):
        return kernel(q_r, k_r, v_r, segment_ids=splash.SegmentIds(q=seg_r, kv=seg_r))

    out = jax.vmap(one_row)(q_h, k_h, v_h, segments)  # [B, H, T_pad, Dh]
    return jnp.transpose(out, (0, 2, 1, 3))[:, :length].astype(dtype)


# --- cuDNN (GPU) -------------------------------------------------------------------------------


def _rotate_rows(x: jax.Array, shift: jax.Array) -> jax.Array:
    """x [B, T, ...] with row b rotated left by shift[b] (x[b, (t + shift[b]) % T])."""
    length = x.shape[1]
    index = (jnp.arange(length)[None, :] + shift[:, None]) % length
    index = index.reshape(*index.shape, *([1] * (x.ndim - 2)))
    return jnp.take_along_axis(x, index, axis=1)


def cudnn_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_valid: jax.Array,
    *,
    window: int | None,
    dtype: jnp.dtype,
    implementation: str | None = "cudnn",
) -> jax.Array:
    """Causal (or sliding-window) self-attention by `jax.nn.dot_product_attention`.

    Left-padded rows are rotated so that their tokens start at slot 0 (right padding, which
    cuDNN's sequence lengths express), then rotated back. A row's tokens must be contiguous
    (left padding, tokens, right padding), as in every prompt, rollout and training batch.

    Args:
      q: [B, T, H, Dh]; k, v: [B, T, K, Dh]; key_valid: [B, T] bool.
      window: sliding window or None (causal).
      dtype: compute dtype.
      implementation: passed to `jax.nn.dot_product_attention` ("xla" on CPU in tests).

    Returns:
      [B, T, H, Dh] in `dtype`; padding rows hold whatever the kernel writes there.
    """
    valid = key_valid.astype(bool)
    start = jnp.argmax(valid, axis=1).astype(jnp.int32)
    lengths = jnp.sum(valid, axis=1, dtype=jnp.int32)
    q_r, k_r, v_r = (_rotate_rows(x.astype(dtype), start) for x in (q, k, v))
    out = jax.nn.dot_product_attention(
        q_r,
        k_r,
        v_r,
        scale=q.shape[-1] ** -0.5,
        is_causal=True,
        query_seq_lengths=lengths,
        key_value_seq_lengths=lengths,
        local_window_size=None if window is None else (window - 1, 0),
        implementation=implementation,
    )
    return _rotate_rows(out, (q.shape[1] - start) % q.shape[1]).astype(dtype)
