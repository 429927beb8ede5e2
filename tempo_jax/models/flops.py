"""Analytic FLOPs of the decoder, counted from the config (XLA's `cost_analysis()` counts a loop
body once, so it misses a factor of the layer count, the micro-batches or the decode steps).

A matmul [M, K] x [K, N] is 2 M K N FLOPs. Per token and layer the trunk multiplies by
q / k / v / o and the three MLP matrices; attention costs 4 H Dh FLOPs per (query, visible
key) pair (scores and the weighted sum), counted over the keys each query may see: the causal
prefix, cut at the window on sliding layers (the useful work; a dense kernel that computes the
masked half too spends up to twice that on attention). Norms, rotary tables, softmax and the
optimizer are elementwise and left out.
"""

from __future__ import annotations

from tempo_jax.models.config import ModelConfig


def layer_matmul_params(config: ModelConfig) -> int:
    """Weights one token multiplies by in one block: D (2 H Dh + 2 K Dh) + 3 D F."""
    c = config
    attention = c.hidden_size * (2 * c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    return attention + 3 * c.hidden_size * c.intermediate_size


def sum_min(first: int, last: int, cap: int) -> int:
    """sum(min(x, cap) for x in range(first, last + 1)), in O(1)."""
    if last < first:
        return 0
    below_last = min(last, cap)
    below = (first + below_last) * (below_last - first + 1) // 2 if below_last >= first else 0
    above = (last - max(first, cap + 1) + 1) * cap if last > cap else 0
    return below + above


def visible_keys(config: ModelConfig, length: int, context: int = 0) -> int:
    """Sum over layers and over `length` new queries of the keys each sees.

    Query i (0-based) of a chunk that follows `context` cached tokens sees context + i + 1 keys
    on a full-attention layer, at most `sliding_window` on a sliding one.
    """
    total = 0
    for kind in config.resolved_layer_types:
        cap = config.sliding_window if kind == "sliding_attention" else context + length
        total += sum_min(context + 1, context + length, cap)
    return total


def forward_flops(
    config: ModelConfig, rows: int, length: int, *, head_positions: int, context: int = 0
) -> int:
    """FLOPs of one forward pass over `rows` x `length` new tokens.

    Args:
      config: the model.
      rows: sequences.
      length: new tokens per sequence.
      head_positions: positions per row whose [V, D] output projection runs: the L response
        slots of a log-prob pass, 1 per sampled token; 0 for a critic (its [D] value head is
        negligible).
      context: tokens already in the KV cache before this chunk (decode / chunked prefill).
    """
    c = config
    trunk = 2 * c.num_layers * layer_matmul_params(c) * rows * length
    attention = 4 * c.num_heads * c.head_dim * rows * visible_keys(c, length, context)
    return trunk + attention + 2 * c.hidden_size * c.vocab_size * rows * head_positions
