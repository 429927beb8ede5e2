"""Pure building blocks of the decoder: RMSNorm, rotary embeddings, SwiGLU (attention has its own
module, `tempo_jax.models.attention`).

Each function computes exactly what transformers' Qwen3 / OLMo3 modules compute in float32; in
bfloat16 they keep the numerically sensitive parts (norm statistics, rotary angles, softmax,
matmul accumulation) in float32 and round once at the end.

Shapes: B batch, T query length, S key length (T, or the cache length), H query heads,
K key/value heads, G = H // K query heads per key/value head, Dh head dim, D model width.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from tempo_jax.models.config import RopeConfig


def rms_norm(
    x: jax.Array, weight: jax.Array, eps: float, *, axes: int | tuple[int, ...] = -1
) -> jax.Array:
    """RMSNorm over `axes` (statistics in float32), scaled by `weight`; returns x.dtype.

    Args:
      x: [..., *normed] activations.
      weight: broadcastable to the normed trailing dims (e.g. [D], or [H, Dh] for OLMo3's q_norm
        over a whole projection viewed per head).
      eps: added to the mean square.
      axes: the axes whose mean square is taken.
    """
    x32 = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=axes, keepdims=True)
    normed = x32 * jax.lax.rsqrt(variance + eps)
    return (normed * weight.astype(jnp.float32)).astype(x.dtype)


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> tuple[np.ndarray, float]:
    """Inverse frequencies [Dh/2] (float32) and the cos/sin scale, as transformers computes them.

    "default" is plain RoPE; "yarn" blends interpolated and extrapolated frequencies with a
    linear ramp over the correction range (transformers' `_compute_yarn_parameters`).
    """
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    pos_freqs = np.float32(rope.theta) ** exponents
    inv_freq = (np.float32(1.0) / pos_freqs).astype(np.float32)
    if rope.kind == "default":
        return inv_freq, 1.0

    factor = rope.factor
    attention_factor = rope.attention_factor
    if attention_factor is None:
        attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0

    def correction_dim(num_rotations: float) -> float:
        return (
            head_dim
            * math.log(rope.original_max_position_embeddings / (num_rotations * 2 * math.pi))
        ) / (2 * math.log(rope.theta))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = np.clip((np.arange(head_dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation_weight = (1 - ramp).astype(np.float32)
    interpolated = (np.float32(1.0) / (np.float32(factor) * pos_freqs)).astype(np.float32)
    inv_freq = interpolated * (1 - extrapolation_weight) + inv_freq * extrapolation_weight
    return inv_freq.astype(np.float32), float(attention_factor)


def rope_cos_sin(
    positions: jax.Array, rope: RopeConfig, head_dim: int
) -> tuple[jax.Array, jax.Array]:
    """cos, sin tables [B, T, Dh] (float32) for integer positions [B, T]."""
    inv_freq, scale = rope_inv_freq(rope, head_dim)
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles) * scale, jnp.sin(angles) * scale


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates x [B, T, N, Dh] by the tables [B, T, Dh] (half-split layout); returns x.dtype."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


def dense(x: jax.Array, w: jax.Array, *, contract: int = 1) -> jax.Array:
    """x [..., *I] times w [*I, *O] -> [..., *O] as one 2-D matmul [M, prod(I)] @ [prod(I), N].

    The last `contract` dims of x are contracted with the first `contract` dims of w. Merging
    the leading dims of x (and the weight's input / output dims) is a free reshape, and it gives
    the backward pass single-dimension contractions: the weight gradient becomes
    `x2d^T @ g2d` over one M axis, which XLA:CPU emits as one dot on row-major operands. With
    several contracted dims (`btd,btf->df` from an einsum over [B, T, D]) its dot canonicaliser
    transposes the [B, T, F] cotangent into an [F, B * T] copy, fused into the elementwise
    producer, which cost more than the dot it feeds.
    """
    lead = x.shape[: x.ndim - contract]
    inner = math.prod(w.shape[:contract])
    out = w.shape[contract:]
    y = x.reshape(-1, inner) @ w.reshape(inner, -1)
    return y.reshape(*lead, *out)


def swiglu(
    x: jax.Array,
    gate: jax.Array,
    up: jax.Array,
    down: jax.Array,
    *,
    dtype: jnp.dtype,
    constrain_hidden=None,
) -> jax.Array:
    """down(silu(x @ gate) * (x @ up)) for x [B, T, D], gate/up [D, F], down [F, D].

    `constrain_hidden`, if given, is applied to the [B, T, F] hidden activations (a sharding
    constraint from the decoder)."""
    x = x.astype(dtype)
    hidden = jax.nn.silu(dense(x, gate.astype(dtype))) * dense(x, up.astype(dtype))
    if constrain_hidden is not None:
        hidden = constrain_hidden(hidden)
    return dense(hidden, down.astype(dtype))
