"""Decode attention over a paged KV cache on TPU: jax's Pallas `paged_attention` kernel behind the
engine's interface.

    out = paged_decode_attention_pallas(q, k_pages, v_pages, lengths, page_indices,
                                        sm_scale=1 / sqrt(head_dim))

Shapes: S decode slots, Hq query heads, K key/value heads (Hq % K == 0, grouped-query attention),
D head dim, P pages in the pool, p tokens per page, pages_per_slot pages a slot may hold.

- q [S, Hq, D]: one query per slot (the token being decoded).
- k_pages, v_pages [K, P, p, D]: one layer's pool (the engine's layout, which is the kernel's).
- lengths [S] int32: keys of each slot (its filled tokens, the new one included); the kernel
  reads only the pages that hold them, which is what makes paged decode cheaper than reading the
  whole [rows, max_length] cache.
- page_indices [S, pages_per_slot] int32: the pool page of each of a slot's logical pages
  (entries past a slot's length are never read).

The kernel computes softmax(q k^T) v without a scale, so q is scaled by `sm_scale` first (in
float32, then cast back to the cache dtype the kernel multiplies in). A slot of length 0 has no
keys: the kernel's output for it is undefined, and the engine ignores empty slots.

On CPU the kernel runs under `jax.experimental.pallas.tpu.force_tpu_interpret_mode()` (tests); the
engine's CPU / GPU path is its pure-JAX gather-and-mask attention.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention

# Tokens of keys one kernel block holds in VMEM (x2 for double buffering, x2 for K and V): 512
# bfloat16 tokens of D = 128 are 128 KiB a buffer, well inside v5p / v6e VMEM.
BLOCK_TOKENS = 512


def pages_per_compute_block(pages_per_slot: int, page_size: int) -> int:
    """The largest divisor of `pages_per_slot` whose pages hold at most `BLOCK_TOKENS` tokens
    (at least 1: the kernel needs pages_per_slot % pages_per_compute_block == 0)."""
    best = 1
    for d in range(1, pages_per_slot + 1):
        if pages_per_slot % d == 0 and d * page_size <= BLOCK_TOKENS:
            best = d
    return best


def paged_decode_attention_pallas(
    q: jax.Array,
    k_pages: jax.Array,
    v_pages: jax.Array,
    lengths: jax.Array,
    page_indices: jax.Array,
    *,
    sm_scale: float,
) -> jax.Array:
    """One decode step's attention for every slot, reading only filled pages.

    Args:
      q: [S, Hq, D] queries.
      k_pages, v_pages: [K, P, p, D] one layer's page pool.
      lengths: [S] int32 filled tokens per slot (> 0 for slots whose output is used).
      page_indices: [S, pages_per_slot] int32 pool pages of each slot.
      sm_scale: the softmax scale (1 / sqrt(D) for Qwen3 / OLMo3).

    Returns:
      [S, Hq, D] in q's dtype.
    """
    slots, heads, head_dim = q.shape
    kv_heads, _, page_size, _ = k_pages.shape
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} KV heads")
    scaled = (q.astype(jnp.float32) * sm_scale).astype(k_pages.dtype)
    block = pages_per_compute_block(page_indices.shape[1], page_size)
    out = paged_attention(
        scaled,
        k_pages,
        v_pages,
        lengths.astype(jnp.int32),
        page_indices.astype(jnp.int32),
        pages_per_compute_block=block,
    )
    return out.reshape(slots, heads, head_dim).astype(q.dtype)
