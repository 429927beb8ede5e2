"""FLOPs and roofline seconds of one call of each kind of compiled function (`tempo-jax compile`).

FLOPs are analytic (`tempo_jax.models.flops`; XLA's `cost_analysis()` counts a loop body once):
what one call executes on all chips together, remat recomputation included. The roofline time is
the FLOPs at the chips' peak FLOP/s, and for a decode step the bytes it reads (its weights and
its KV cache) at the HBM bandwidth when that is slower.

    flops, seconds = train_call(model, chip, chips, rows=8, prompt=16, response=8, head=True,
                                backward=True, remat=False)

Shapes and units: FLOPs, bytes per chip and seconds; lengths in tokens.
"""

from __future__ import annotations

from tempo_jax.models.config import ModelConfig
from tempo_jax.models.flops import forward_flops
from tempo_jax.parallel.topology import ChipSpec


def train_call(
    model: ModelConfig,
    chip: ChipSpec,
    chips: int,
    *,
    rows: int,
    prompt: int,
    response: int,
    head: bool,
    backward: bool,
    remat: bool,
) -> tuple[float, float]:
    """(FLOPs, seconds) of a forward or train step over [rows, prompt + response] tokens.

    Args:
      model, chip, chips: the model and the chips the call is split over.
      rows, prompt, response: the batch [rows, prompt + response].
      head: whether the [V, D] output projection runs at the response positions (the policy's
        log-probs; a critic's value head is negligible).
      backward: a train step (backward = 2 x forward) rather than a forward.
      remat: the step replays the trunk's forward in its backward.
    """
    width = prompt + response
    forward = forward_flops(model, rows, width, head_positions=response if head else 0)
    flops = forward
    if backward:
        trunk = forward_flops(model, rows, width, head_positions=0)
        # The chunked log-prob VJP replays the head's logits: 4 x the head's forward.
        flops = trunk * (3 + int(remat)) + (forward - trunk) * 4
    return float(flops), flops / (chips * chip.peak_flops)


def prefill_call(
    model: ModelConfig, chip: ChipSpec, chips: int, *, rows: int, prompt: int
) -> tuple[float, float]:
    """(FLOPs, seconds) of the paged engine's prefill of [rows, prompt] tokens on `chips`."""
    flops = forward_flops(model, rows, prompt, head_positions=1)
    return float(flops), flops / (chips * chip.peak_flops)


def engine_decode_call(
    model: ModelConfig,
    chip: ChipSpec,
    chips: int,
    *,
    slots: int,
    context: int,
    steps: int,
    step_bytes: int,
) -> tuple[float, float]:
    """(FLOPs, seconds) of one paged-engine decode call on `chips`: `steps` steps of all `slots`
    at `context` tokens (their widest table), each chip reading `step_bytes` (its weights and
    its slots' pages) a step."""
    step = forward_flops(model, slots, 1, head_positions=1, context=context)
    seconds = steps * max(step / (chips * chip.peak_flops), step_bytes / chip.hbm_bandwidth)
    return float(steps * step), seconds


def static_sampler_call(
    model: ModelConfig,
    chip: ChipSpec,
    chips: int,
    *,
    rows: int,
    prefill_rows: int,
    prompt: int,
    response: int,
    step_bytes: int,
) -> tuple[float, float]:
    """(FLOPs, seconds) of the static sampler's call: a prefill of [prefill_rows, prompt] and
    response - 1 decode steps of `rows` rows, each step reading `step_bytes` per chip (its weight
    shard and its whole cache slice)."""
    flops = forward_flops(model, prefill_rows, prompt, head_positions=1)
    seconds = flops / (chips * chip.peak_flops)
    for t in range(1, response):
        step = forward_flops(model, rows, 1, head_positions=1, context=prompt + t - 1)
        flops += step
        seconds += max(step / (chips * chip.peak_flops), step_bytes / chip.hbm_bandwidth)
    return float(flops), seconds
