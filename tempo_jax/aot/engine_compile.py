"""The paged rollout engine's functions (`tempo_jax.sampling.engine.Engine`) lowered for a
topology without running them, and what `tempo-jax compile` reports about them.

    compiled = engine_executable(engine, params, call, width, pool_pages, stop_arrays)
    pages = engine_pool_pages(engine, params, call, width, free_bytes)

The engine runs on its decode mesh (`Engine.layout`: the run mesh's devices as row shards x
`rollout.paged.decode_tensor`), so each function compiles for the whole topology with the
arguments' shardings: the policy's parameters in their training layout (prefill, weights), the
decode weights in compute dtype split over tensor, the pools by KV heads and row shards, the
prompts, rows and slots over the row shards. Shapes follow `Engine._call`: the chunk's B =
`call.prompts` prompts (padded to the row shards) of width P = `data.max_prompt_length`, S
slots (`rollout.paged.num_slots`, 0 = the chunk's rows), tables of `ceil((P + L - 1) /
page_size)` pages (the widest the engine passes), `pool_pages` full-attention pages per row
shard and one ring per slot and prompt on sliding layers. Memory: `memory_analysis()` is per
chip.
"""

from __future__ import annotations

import math
from typing import Any

import jax

from tempo_jax.models import ModelConfig, roofline
from tempo_jax.parallel.topology import ChipSpec
from tempo_jax.sampling.engine import Engine
from tempo_jax.sampling.engine_layout import page_bytes_per_chip
from tempo_jax.tempo import functions as fns

_KINDS = {fns.ENGINE_PREFILL: "prefill", fns.ENGINE_REFILL: "refill", fns.ENGINE_DECODE: "decode"}


def engine_executable(
    engine: Engine,
    params: Any,
    call: fns.Call,
    width: int,
    pool_pages: int,
    stop_arrays: Any,
) -> jax.stages.Compiled:
    """Compiles `call` (ENGINE_PREFILL, ENGINE_REFILL or ENGINE_DECODE) for the engine's decode
    mesh.

    Args:
      engine: the run's Engine (its layout, page size, slots, steps per call, attention impl).
      params: the policy's abstract parameters (with their training shardings).
      call: the planned call (its prompts and samples give the chunk).
      width: the prompt width P.
      pool_pages: full-attention pages of a row shard's pool, scratch included.
      stop_arrays: the run's stop criteria as arrays.
    """
    kind = _KINDS[call.function]
    lowered = engine.lower(kind, params, call.prompts, call.samples, width, stop_arrays,
                           pool_pages)  # fmt: skip
    return lowered.compile()


def engine_pool_pages(
    engine: Engine, params: Any, call: fns.Call, width: int, free_bytes: int
) -> int:
    """Pool pages per row shard when each chip has `free_bytes` beside the run's states:
    `rollout.paged.num_pages`, or (0) what the decode weights, the prefill's cache and the
    engine's workspace leave (`Engine.pool_pages`, as a run sizes it from device memory)."""
    if engine.num_pages:
        return engine.num_pages
    return engine.pool_pages(params, free_bytes, call.prompts, call.samples, width)


def engine_shape_detail(engine: Engine, call: fns.Call, width: int, pages: int) -> str:
    """What the call's shape in words adds to its rows and tokens: the decode mesh, and for the
    decode its slots and pages over the row shards."""
    lay = engine.layout
    detail = f", decode mesh {lay.data} rows x {lay.tensor} tensor"
    if call.function == fns.ENGINE_REFILL:
        rows = lay.data * engine.refill_rows(call.prompts, width)
        detail += f", {rows} readmitted rows of {width + engine.max_new_tokens - 1} tokens"
    if call.function == fns.ENGINE_DECODE:
        sizes = engine.chunk_sizes(call.prompts, call.samples, width)
        detail += (
            f", {lay.data * sizes.slots} slots ({sizes.slots} a row shard), "
            f"{engine.steps_per_call} steps a call, {pages} pages of {engine.page_size} a row "
            "shard"
        )
    return detail


def engine_flops_and_roofline(
    engine: Engine,
    model: ModelConfig,
    call: fns.Call,
    width: int,
    response: int,
    chip: ChipSpec,
    weight_bytes: int,
) -> tuple[float, float]:
    """Analytic FLOPs of one call on all chips and its time at the chips' peak
    (`models.roofline`): the prefill at peak FLOP/s; a decode call's `steps_per_call` steps of
    every slot at full context, each chip reading its decode weights (`weight_bytes`) and its
    slots' whole tables."""
    lay = engine.layout
    chips = lay.data * lay.tensor
    if call.function == fns.ENGINE_PREFILL:
        return roofline.prefill_call(model, chip, chips, rows=call.prompts, prompt=width)
    if call.function == fns.ENGINE_REFILL:
        rows = lay.data * engine.refill_rows(call.prompts, width)
        return roofline.prefill_call(model, chip, chips, rows=rows, prompt=width + response - 1)
    sizes = engine.chunk_sizes(call.prompts, call.samples, width)
    table = math.ceil((width + response - 1) / engine.page_size)
    step_bytes = weight_bytes
    step_bytes += sizes.slots * table * page_bytes_per_chip(model, engine.page_size, lay.tensor)
    return roofline.engine_decode_call(
        model,
        chip,
        chips,
        slots=lay.data * sizes.slots,
        context=width + response,
        steps=engine.steps_per_call,
        step_bytes=step_bytes,
    )
