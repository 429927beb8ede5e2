"""Decode attention over a paged KV cache: one query per decode slot, keys read through pages.

    paged_decode_attention(q [S, H, Dh], k_pages, v_pages [K, total_pages, page_size, Dh],
                           lengths [S], page_indices [S, pages_per_slot], *, impl, sm_scale,
                           window=None) -> [S, H, Dh]

The pool layout is that of `jax.experimental.pallas.ops.tpu.paged_attention`: slot s's
logical page j (positions j * page_size ... ) is pool page `page_indices[s, j]`, and the slot
holds `lengths[s]` tokens (positions 0 .. lengths[s] - 1; the query is the last of them).

impl="reference" (CPU and GPU): gathers only the pages of each slot's page table (so the work is
proportional to the table's width, which the engine bounds by the longest active row), masks
positions >= length and computes what `models.attention.decode_attention` computes, in the same
float32 formulation (elementwise products summed over head_dim, a softmax with the same masked
score, probabilities cast to the compute dtype, a float32 weighted sum), so the logits match the
static sampler's to float rounding of the reduction order.

impl="pallas" (TPU): `tempo_jax.sampling.paged_attention_tpu.paged_decode_attention_pallas`,
imported when first used. It has no window: sliding-window layers always take the reference.

window (OLMo3's sliding layers): the table is then the slot's ring of R pages, position q at
ring page (q // page_size) % R, offset q % page_size; with R >= ceil(window / page_size) + 1 the
ring always holds the last `window` positions (see `ring_pages`). A key is visible iff its
position is in (length - 1 - window, length - 1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tempo_jax.models.attention import MASKED_SCORE

IMPLS = ("reference", "pallas")
_PALLAS_MODULE = "tempo_jax.sampling.paged_attention_tpu"


def ring_pages(window: int, page_size: int) -> int:
    """R: pages of a sliding layer's ring, enough to hold the last `window` positions while the
    page of the next write is being filled."""
    return -(-window // page_size) + 1


def resolve_impl(attention: str, platform: str | None = None) -> str:
    """The paged impl for a model's `attention` setting: splash / auto on TPU -> pallas."""
    platform = platform or jax.default_backend()
    if platform == "tpu" and attention in ("auto", "splash"):
        return "pallas"
    return "reference"


def key_positions(lengths: jax.Array, width: int, page_size: int, window: int | None) -> jax.Array:
    """[S, width * page_size] int32 position held by each gathered key entry of each slot
    (negative or >= length where the entry holds nothing visible)."""
    entries = jnp.arange(width * page_size, dtype=jnp.int32)
    if window is None:
        return jnp.broadcast_to(entries[None, :], (lengths.shape[0], entries.shape[0]))
    # Ring: entry (r, o) holds the newest position q <= current with (q // ps) % R == r.
    current = (lengths - 1)[:, None]
    ring_page, offset = entries // page_size, entries % page_size
    current_page = current // page_size
    page = current_page - jnp.mod(current_page - ring_page[None, :], width)
    return page * page_size + offset[None, :]


def visible_keys(lengths: jax.Array, width: int, page_size: int, window: int | None) -> jax.Array:
    """[S, width * page_size] bool: the entry holds a position the slot's query attends to."""
    positions = key_positions(lengths, width, page_size, window)
    current = (lengths - 1)[:, None]
    ok = (positions >= 0) & (positions <= current)
    if window is not None:
        ok &= current - positions < window
    return ok


def paged_decode_attention(
    q: jax.Array,
    k_pages: jax.Array,
    v_pages: jax.Array,
    lengths: jax.Array,
    page_indices: jax.Array,
    *,
    impl: str,
    sm_scale: float,
    window: int | None = None,
) -> jax.Array:
    """Attention of one query per slot over its pages (see the module docstring).

    Args:
      q: [S, H, Dh] queries (H = G * K; query head n uses key head n // G).
      k_pages, v_pages: [K, total_pages, page_size, Dh] pools.
      lengths: [S] int32 tokens in each slot's cache, the query's own included.
      page_indices: [S, pages] int32 pool pages of each slot (ring pages with `window`).
      impl: "reference" or "pallas".
      sm_scale: score scale (head_dim ** -0.5).
      window: sliding window (ring tables) or None.

    Returns:
      [S, H, Dh] in q's dtype.

    Raises:
      ValueError: an unknown impl; ImportError naming the module when the Pallas adapter is
        missing.
    """
    if impl not in IMPLS:
        raise ValueError(f"paged attention impl must be one of {IMPLS}, got {impl!r}")
    if impl == "pallas" and window is None:
        try:
            from tempo_jax.sampling import paged_attention_tpu
        except ImportError as error:
            raise ImportError(
                f"paged attention impl='pallas' needs {_PALLAS_MODULE} "
                "(paged_decode_attention_pallas), which is not installed"
            ) from error
        return paged_attention_tpu.paged_decode_attention_pallas(
            q, k_pages, v_pages, lengths, page_indices, sm_scale=sm_scale
        )
    return _reference(q, k_pages, v_pages, lengths, page_indices, sm_scale, window)


def _reference(q, k_pages, v_pages, lengths, page_indices, sm_scale, window):
    """Gather-and-mask in `decode_attention`'s float32 formulation."""
    slots, num_heads, head_dim = q.shape
    num_kv, _, page_size, _ = k_pages.shape
    width = page_indices.shape[1]
    dtype = q.dtype

    # Gathered as [K, S, T, Dh] (a free reshape of the pool's own layout: no transpose of the
    # gathered keys); scores [K, S, T, G].
    k = k_pages[:, page_indices].reshape(num_kv, slots, width * page_size, head_dim)
    v = v_pages[:, page_indices].reshape(num_kv, slots, width * page_size, head_dim)
    mask = visible_keys(lengths, width, page_size, window)  # [S, T]
    qg = jnp.transpose(q.reshape(slots, num_kv, num_heads // num_kv, head_dim), (1, 0, 2, 3))
    # [K, S, 1, G, Dh] x [K, S, T, 1, Dh], summed over Dh -> [K, S, T, G]
    scores = jnp.sum(
        qg[:, :, None].astype(jnp.float32) * k[:, :, :, None, :].astype(jnp.float32), axis=-1
    )
    scores = scores * sm_scale
    scores = jnp.where(mask[None, :, :, None], scores, MASKED_SCORE)
    probs = jax.nn.softmax(scores, axis=2).astype(dtype).astype(jnp.float32)
    values = v.astype(dtype)[:, :, :, None, :].astype(jnp.float32)
    out = jnp.sum(probs[..., None] * values, axis=2)  # [K, S, G, Dh]
    return jnp.transpose(out, (1, 0, 2, 3)).reshape(slots, num_heads, head_dim).astype(dtype)
