"""The Pallas paged decode kernel (interpret mode on CPU) against a gather-and-mask reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas import tpu as pltpu

from tempo_jax.sampling.paged_attention_tpu import (
    paged_decode_attention_pallas,
    pages_per_compute_block,
)


def _reference(q, k_pages, v_pages, lengths, page_indices, sm_scale):
    """Each slot's pages gathered into [S, K, T, D] keys, positions >= length masked."""
    slots, heads, dim = q.shape
    kv_heads, _, page_size, _ = k_pages.shape
    keys = k_pages[:, page_indices].reshape(kv_heads, slots, -1, dim)  # [K, S, T, D]
    values = v_pages[:, page_indices].reshape(kv_heads, slots, -1, dim)
    groups = q.reshape(slots, kv_heads, heads // kv_heads, dim).astype(jnp.float32)
    scores = jnp.einsum("skgd,kstd->skgt", groups, keys.astype(jnp.float32)) * sm_scale
    visible = jnp.arange(keys.shape[2])[None, :] < lengths[:, None]  # [S, T]
    scores = jnp.where(visible[:, None, None, :], scores, -jnp.inf)
    out = jnp.einsum("skgt,kstd->skgd", jax.nn.softmax(scores, axis=-1), values.astype(jnp.float32))
    return out.reshape(slots, heads, dim)


def test_pallas_paged_decode_matches_gather_reference():
    heads, kv_heads = 4, 2  # grouped-query: 2 query heads per KV head
    slots, dim, page_size, pages_per_slot, pool = 3, 128, 16, 4, 14
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((slots, heads, dim)), jnp.float32)
    k_pages = jnp.asarray(rng.standard_normal((kv_heads, pool, page_size, dim)), jnp.float32)
    v_pages = jnp.asarray(rng.standard_normal((kv_heads, pool, page_size, dim)), jnp.float32)
    # Slots hold scattered, non-overlapping pool pages; lengths end mid-page and at a page edge.
    page_indices = jnp.asarray(rng.permutation(pool)[: slots * pages_per_slot].reshape(slots, -1))
    page_indices = page_indices.astype(jnp.int32)
    lengths = jnp.asarray([1, 37, 64], jnp.int32)
    scale = 1 / math.sqrt(dim)
    with pltpu.force_tpu_interpret_mode():
        out = paged_decode_attention_pallas(
            q, k_pages, v_pages, lengths, page_indices, sm_scale=scale
        )
    expected = _reference(q, k_pages, v_pages, lengths, page_indices, scale)
    assert out.shape == (slots, heads, dim) and out.dtype == q.dtype
    # The kernel's dots run at the TPU's default precision (bfloat16 passes) even in interpret
    # mode: values of magnitude ~1 agree to ~1e-2.
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=2e-2)
    # ...which is far tighter than forgetting the scale (or the length mask) would be.
    unscaled = _reference(q, k_pages, v_pages, lengths, page_indices, 1.0)
    assert np.abs(np.asarray(out[1:] - unscaled[1:])).max() > 0.2
    # Slot 0 sees one key: its output is that key's value row for each query head's group.
    first = v_pages[:, page_indices[0, 0], 0]  # [K, D]
    np.testing.assert_allclose(
        np.asarray(out[0]), np.repeat(np.asarray(first), heads // kv_heads, axis=0), atol=2e-2
    )


def test_pages_per_compute_block_divides_and_fits_block():
    assert pages_per_compute_block(4, 16) == 4  # 64 tokens: one block
    assert pages_per_compute_block(1152, 16) == 32  # 512 tokens
    assert pages_per_compute_block(1152, 128) == 4
    assert pages_per_compute_block(7, 128) == 1  # 7 is prime and 7 x 128 > 512
