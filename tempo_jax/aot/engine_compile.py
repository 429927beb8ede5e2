"""The paged rollout engine's jitted functions (`tempo_jax.sampling.engine.Engine`) lowered for a
topology without running them: abstract arguments of one rollout chunk's prefill and multi-step
decode, with the page pool sized from the HBM the run leaves.

    lowered = engine_executable(engine, params, call, pool_pages, device)   # compiled

The engine runs on one device (its mesh's first), so each function compiles for one chip of the
topology with every argument on it. Shapes follow `Engine._call`: the chunk's B = `call.prompts`
prompts of width P = `data.max_prompt_length`, S slots (`rollout.paged.num_slots`, 0 = the
chunk's rows), tables of `ceil((P + L - 1) / page_size)` pages (the widest the engine passes),
`pool_pages` full-attention pages and one ring of `ring_pages` pages per slot and prompt on
sliding layers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from tempo_jax.models import ModelConfig
from tempo_jax.sampling.engine import Engine, _copies
from tempo_jax.sampling.paged_decode import PagedSpec, SlotState, init_pools
from tempo_jax.sampling.params import RowSamplingParams, SamplingParams
from tempo_jax.tempo import functions as fns

# Full-attention pool pages kept when the budget would allow fewer (the engine's own minimum:
# the chunk's prompts plus one row at full length is checked when it runs).
MIN_POOL_PAGES = 2


def pool_pages_for_budget(model: ModelConfig, page_size: int, budget_bytes: int, ring: int,
                          ring_slots: int) -> int:  # fmt: skip
    """Full-attention pool pages (scratch included) that fit `budget_bytes` on one device after
    the sliding layers' rings (`ring_slots` rings of `ring` pages)."""
    per_token = 2 * model.num_kv_heads * model.head_dim * np.dtype(model.compute_dtype).itemsize
    sliding = sum(k == "sliding_attention" for k in model.resolved_layer_types)
    full = model.num_layers - sliding
    ring_bytes = (1 + ring_slots * ring) * page_size * per_token * sliding if sliding else 0
    page_bytes = page_size * per_token * max(full, 1)
    return max(int((budget_bytes - ring_bytes) // page_bytes), MIN_POOL_PAGES)


def _on(device: jax.Device, tree: Any) -> Any:
    """Abstract copies of a tree's arrays (host or abstract) placed on `device`."""
    one = jax.sharding.SingleDeviceSharding(device)

    def place(x):
        x = x if hasattr(x, "shape") and hasattr(x, "dtype") else np.asarray(x)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one)

    return jax.tree.map(place, tree)


def _shapes(engine: Engine, call: fns.Call, width: int) -> tuple[int, int, int]:
    """(slots, table pages, ring pool pages) of a chunk of `call.prompts` prompts."""
    slots = engine.num_slots or call.prompts * call.samples
    per_slot = math.ceil((width + engine.max_new_tokens - 1) / engine.page_size)
    return slots, per_slot, 1 + (slots + call.prompts) * engine.ring


def engine_executable(
    engine: Engine,
    params: Any,
    call: fns.Call,
    width: int,
    pool_pages: int,
    device: jax.Device,
    stop_arrays: Any,
) -> jax.stages.Compiled:
    """Compiles `call` (ENGINE_PREFILL or ENGINE_DECODE) for `device`.

    Args:
      engine: the run's Engine (its page size, slots, steps per call, attention impl).
      params: the policy's abstract parameters (any sharding; placed on `device`).
      call: the planned call (its prompts and samples give the chunk).
      width: the prompt width P.
      pool_pages: full-attention pages of the pool, scratch included.
      device: where the engine runs.
      stop_arrays: the run's stop criteria as arrays.
    """
    c = engine.config
    slots, per_slot, ring_pool = _shapes(engine, call, width)
    spec = PagedSpec(call.samples, engine.max_new_tokens, engine.max_top_k, engine.page_size,
                     engine.steps_per_call, engine.impl, engine.ring)  # fmt: skip
    state = _on(device, params)
    pools = _on(device, jax.eval_shape(lambda: init_pools(c, pool_pages, ring_pool,
                                                          engine.page_size)))  # fmt: skip
    stop = _on(device, stop_arrays)
    scalar = jax.ShapeDtypeStruct((), np.uint32, sharding=jax.sharding.SingleDeviceSharding(device))
    if call.function == fns.ENGINE_PREFILL:
        rows = SamplingParams().rows(call.prompts, call.samples, engine.max_top_k)
        tokens = np.zeros((call.prompts, width), np.int32)
        prompt_pages = np.zeros((call.prompts, math.ceil(width / engine.page_size)), np.int32)
        prompt_rings = np.zeros((call.prompts, engine.ring), np.int32)
        fn = engine._jit("prefill", spec, None)  # the very function the engine runs
        args = (state, *_on(device, (tokens, tokens, rows)), scalar, scalar, stop, pools,
                *_on(device, (prompt_pages, prompt_rings)))  # fmt: skip
        return fn.lower(*args).compile()
    weights, head = jax.eval_shape(engine._jit("weights", spec, None), params)
    empty = engine._empty_slots(slots, per_slot, stop_arrays.window)
    slot_state = SlotState(
        full_table=empty.table, ring_table=empty.ring, lengths=empty.lengths,
        last_tokens=empty.last_tokens, steps=empty.steps, active=empty.active,
        row_ids=empty.row_ids, window=empty.window,
    )  # fmt: skip
    copies = _copies(([], [], [], []), slots, engine.ring)
    fn = engine._jit("decode", dataclasses.replace(spec, n=0), None)
    args = (
        *_on(device, (weights, head)), pools, *_on(device, (slot_state,
        RowSamplingParams(**empty.params))), scalar, stop, _on(device, copies),
    )  # fmt: skip
    return fn.lower(*args).compile()
