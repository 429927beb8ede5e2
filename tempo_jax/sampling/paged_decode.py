"""The paged rollout engine's jitted functions: prefill into pages, multi-step slot decode.

    prefill_into_pages(graphdef, state, prompt_tokens [B, P], prompt_mask [B, P], params [N],
                       seed, first_row, stop, pools, prompt_pages [B, Pp], prompt_rings [B, R],
                       *, spec, layout, weight_shardings) -> (pools, FirstTokens)
    decode_steps(weights, head, pools, slots: SlotState, params [S], seed, stop, copies,
                 *, spec, layout) -> (pools, SlotState, StepOutputs)
    refill_pages(config, weights, pools, tokens [B, W], mask [B, W], full_table, ring_table,
                 start [B], copies, *, spec, layout) -> pools      # recompute preemption

On a mesh (`engine_layout.EngineLayout`) pages and slots are split over row shards: page
numbers in tables and copies are local to the row's shard, and every access through them, as
well as the sampling, runs per shard (`jax.shard_map`); projections and MLP are partitioned by
XLA from the weights' tensor-parallel layout.

Pools (`PagedPools`): per layer k, v [K, pages, page_size, Dh]. Full-attention layers share one
page numbering (a slot's table `full_table` [S, W], logical page j = positions j * ps ...);
sliding-window layers (OLMo3) share another, a ring of R pages per slot (`ring_table` [S, R],
`paged_attention.ring_pages`), so they hold `window` positions, not the whole row. Page 0 of
each pool is scratch: idle slots write there and unused table entries point there.

Numbers: the prefill is the static sampler's (`Policy.prefill` on the same left-padded [B, P]
batch, logits spread to the n samples, token 0 drawn by `decode.step_outcome` with the same row
keys), so token 0 and the prompt's keys and values are the static sampler's. A decode step runs
the model's own block (`decoder._block` with an `attend` that writes the slot's page and calls
`paged_decode_attention`) and the same `step_outcome`; row i's key at step t is
fold_in(fold_in(key(seed), first_row + i), t) whatever slot the row sits in. Only the attention's
reduction order differs from the static cache's (float rounding).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

from tempo_jax.models import attention as model_attention
from tempo_jax.models import decoder as model_decoder
from tempo_jax.models import layers as model_layers
from tempo_jax.models import roles as model_roles
from tempo_jax.models.config import ModelConfig
from tempo_jax.parallel.activations import activation_sharding
from tempo_jax.sampling.decode import _spread, cast_for_compute, step_outcome
from tempo_jax.sampling.engine_layout import (
    HEADS_SPEC,
    POOL_SPEC,
    ROW_SPEC,
    EngineLayout,
)
from tempo_jax.sampling.layer_decode import DecodeWeights, decode_weights
from tempo_jax.sampling.paged_attention import key_positions, paged_decode_attention
from tempo_jax.sampling.params import RowSamplingParams
from tempo_jax.sampling.stopping import StopArrays


@dataclasses.dataclass(frozen=True)
class PagedSpec:
    """Static settings of the engine's executables (hashable).

    Attributes:
      n: samples per prompt (prefill spreads each prompt's logits to n rows).
      max_new_tokens: L.
      max_top_k: candidate cap of top-k / top-p rows.
      page_size: tokens per page.
      steps_per_call: decode steps per `decode_steps` call.
      impl: paged attention impl of full-attention layers ("reference" / "pallas").
      ring: R, ring pages per slot of sliding layers (0 without sliding layers).
    """

    n: int
    max_new_tokens: int
    max_top_k: int
    page_size: int
    steps_per_call: int
    impl: str = "reference"
    ring: int = 0


@flax.struct.dataclass
class PagedPools:
    """Per-layer page pools: L arrays [K, pages, page_size, Dh] each (the layer's kind decides
    which numbering, full or ring, its pages follow)."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]


def init_pools(config: ModelConfig, full_pages: int, ring_pages: int, page_size: int) -> PagedPools:
    """Zero pools: `full_pages` pages for full-attention layers, `ring_pages` for sliding ones."""
    shapes = []
    for kind in config.resolved_layer_types:
        pages = ring_pages if kind == "sliding_attention" else full_pages
        shapes.append((config.num_kv_heads, pages, page_size, config.head_dim))
    zeros = tuple(jnp.zeros(shape, config.compute_dtype) for shape in shapes)
    return PagedPools(k=zeros, v=tuple(jnp.zeros_like(x) for x in zeros))


@flax.struct.dataclass
class FirstTokens:
    """Token 0 of every row of a prefilled chunk, [N] each (window [N, M])."""

    tokens: jax.Array
    logprobs: jax.Array
    sampling_logprobs: jax.Array
    window: jax.Array
    finished: jax.Array
    finish_reason: jax.Array


@flax.struct.dataclass
class SlotState:
    """The decode slots between calls (host <-> device each call).

    Attributes:
      full_table: [S, W] int32 pool pages of full-attention layers (W: the call's width).
      ring_table: [S, R] int32 ring pages of sliding layers (R >= 1; unused without them).
      lengths: [S] int32 tokens in the cache (the next token is fed at this position).
      last_tokens: [S] int32 the token fed next.
      steps: [S] int32 the step t whose token the slot samples next.
      active: [S] bool slot holds a running row.
      row_ids: [S] uint32 the row's index in the whole rollout batch (its key).
      window: [S, M] int32 trailing tokens for stop sequences.
    """

    full_table: jax.Array
    ring_table: jax.Array
    lengths: jax.Array
    last_tokens: jax.Array
    steps: jax.Array
    active: jax.Array
    row_ids: jax.Array
    window: jax.Array


@flax.struct.dataclass
class PageCopies:
    """Page copies applied before a call's first step (admissions): full-layer pages
    src [C] -> dst [C] (a partial last prompt page, copy on write) and sliding-layer ring pages
    ring_src [C, R] -> ring_dst [C, R] (the prompt's ring). Page 0 -> page 0 is a no-op."""

    src: jax.Array
    dst: jax.Array
    ring_src: jax.Array
    ring_dst: jax.Array


@flax.struct.dataclass
class StepOutputs:
    """What a call sampled, [S, steps_per_call] each; `emitted` marks the kept tokens."""

    tokens: jax.Array
    logprobs: jax.Array
    sampling_logprobs: jax.Array
    emitted: jax.Array
    finish_reason: jax.Array  # [S] reason of slots that finished in this call, else 0


def _write_entries(pool: jax.Array, page: jax.Array, offset: jax.Array, x: jax.Array) -> jax.Array:
    """pool [K, P, ps, Dh] with entry (page[s], offset[s]) of every KV head set to x [S, K, Dh].

    Written as a row scatter into the pool viewed as [K * P * ps, Dh] (a free reshape): the
    same scatter over dims 1 and 2 of the 4-d pool made XLA's TPU compiler copy the whole pool
    when a chip holds more than one KV head."""
    heads, pages, page_size, dim = pool.shape
    rows = (jnp.arange(heads)[None, :] * pages + page[:, None]) * page_size + offset[:, None]
    flat = pool.reshape(heads * pages * page_size, dim)
    flat = flat.at[rows.reshape(-1)].set(x.reshape(-1, dim).astype(pool.dtype))
    return flat.reshape(pool.shape)


def _column(table: jax.Array, index: jax.Array) -> jax.Array:
    """table[s, index[s]] for every row s (a per-row gather the partitioner keeps per shard)."""
    return jnp.take_along_axis(table, index[:, None], axis=1)[:, 0]


def _is_sliding(config: ModelConfig) -> tuple[bool, ...]:
    return tuple(kind == "sliding_attention" for kind in config.resolved_layer_types)


def _prompt_pages_values(cache_x, plen, pages, page_size, window):
    """One layer's prefill cache [B, P, K, Dh] as page contents [K, B, pages, ps, Dh]: position
    q of prompt b (slot P - plen + q) at its (ring) page entry; zeros where nothing is held."""
    batch, width = cache_x.shape[:2]
    positions = key_positions(plen, pages, page_size, window)  # [B, pages * ps]
    held = (positions >= 0) & (positions < plen[:, None])
    source = jnp.clip(width - plen[:, None] + positions, 0, width - 1)
    values = jnp.take_along_axis(cache_x, source[:, :, None, None], axis=1)
    values = jnp.where(held[:, :, None, None], values, 0).astype(cache_x.dtype)
    values = values.reshape(batch, pages, page_size, *cache_x.shape[2:])
    return jnp.transpose(values, (3, 0, 1, 2, 4))


def prefill_into_pages(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    prompt_tokens: jax.Array,
    prompt_mask: jax.Array,
    params: RowSamplingParams,
    seed: jax.Array,
    first_row: jax.Array,
    stop: StopArrays,
    pools: PagedPools,
    prompt_pages: jax.Array,
    prompt_rings: jax.Array,
    *,
    spec: PagedSpec,
    layout: EngineLayout,
    weight_shardings: Any,
) -> tuple[PagedPools, FirstTokens]:
    """Prefills B prompts into their pages and samples token 0 of their N = B * n rows.

    Args:
      graphdef, state: the policy (state in any dtype; cast here as the static sampler does).
      prompt_tokens, prompt_mask: [B, P] left-padded prompts.
      params: per-row sampling parameters [N].
      seed, first_row: uint32 scalars (row keys as in `decode.generate_rollouts`).
      stop: EOS ids and stop sequences.
      pools: the page pools (donated by the engine).
      prompt_pages: [B, Pp] full-layer pages of each prompt (page j: positions j * ps ...),
        local to the prompt's row shard; entries past the prompt may be the scratch page 0.
      prompt_rings: [B, R] sliding-layer ring pages holding each prompt's last positions.
      spec: static settings.
      layout: the engine's mesh layout (B divides over its row shards).
      weight_shardings: the state's decode layout (`layout.weight_shardings`).

    Returns:
      the pools with the prompts written, and token 0 of every row.
    """
    c = nnx.merge(graphdef, state).config
    policy = nnx.merge(graphdef, _decode_state(state, c, weight_shardings))
    batch, width = prompt_tokens.shape
    prompt_mask = prompt_mask.astype(jnp.int32)
    with activation_sharding(layout.mesh, layout.rules):
        cache = policy.init_cache(batch, width)
        logits, cache = policy.prefill(prompt_tokens, prompt_mask, cache)
    plen = jnp.sum(prompt_mask, axis=1)
    window = c.sliding_window if c.has_sliding_layers else None

    def write(pool, table, values):  # per shard: its prompts' pages, local numbers
        return pool.at[:, table].set(values.astype(pool.dtype))

    write = layout.local(write, (POOL_SPEC, ROW_SPEC, POOL_SPEC), POOL_SPEC)
    new_k, new_v = list(pools.k), list(pools.v)
    for i, sliding in enumerate(_is_sliding(c)):
        table = prompt_rings if sliding else prompt_pages
        for pool, cache_x in ((new_k, cache.k[i]), (new_v, cache.v[i])):
            values = _prompt_pages_values(
                cache_x, plen, table.shape[1], spec.page_size, window if sliding else None
            )
            pool[i] = write(pool[i], table, values)

    num_rows = batch * spec.n
    logits = _spread(logits, spec.n, 0)
    row_ids = first_row.astype(jnp.uint32) + jnp.arange(num_rows, dtype=jnp.uint32)
    keys = _row_keys(seed, row_ids)
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, jnp.zeros((), jnp.int32))
    active = jnp.ones((num_rows,), bool)
    tokens, logprobs, sampling_lp, window_out, finishing, reason = step_outcome(
        logits, step_keys, params, stop, stop.initial_window(num_rows), active,
        spec.max_new_tokens == 1, spec.max_top_k,
    )  # fmt: skip
    first = FirstTokens(
        tokens=tokens,
        logprobs=logprobs,
        sampling_logprobs=sampling_lp,
        window=window_out,
        finished=finishing,
        finish_reason=jnp.where(finishing, reason, 0).astype(jnp.int32),
    )
    return PagedPools(k=tuple(new_k), v=tuple(new_v)), first


def refill_pages(
    config: ModelConfig,
    weights: DecodeWeights,
    pools: PagedPools,
    tokens: jax.Array,
    mask: jax.Array,
    full_table: jax.Array,
    ring_table: jax.Array,
    start: jax.Array,
    copies: PageCopies,
    *,
    spec: PagedSpec,
    layout: EngineLayout,
) -> PagedPools:
    """Recomputes the keys and values of readmitted preempted rows (recompute preemption).

    Row b's T_b = sum(mask[b]) tokens (its prompt and the response tokens it had fed before it
    was preempted) run as one left-padded prefill through the model's own blocks on the decode
    weights (no copy of the parameters, no contiguous cache: each layer's keys and values go
    straight into the pages); positions [start_b, T_b) are written into the row's pages (full
    layers: `full_table`, sliding layers: the last R pages' worth into its ring), one entry
    each. Positions below start_b (the prompt) stay what the prompt's prefill wrote: its full
    pages are shared, and `copies` (the partial last prompt page and the prompt's ring, as at a
    first admission) are applied first. Padding rows (start_b >= T_b) write nothing.

    Args:
      config: the model config (static).
      weights: from `prepare_weights`.
      pools: the page pools (donated).
      tokens, mask: [B, W] left-padded rows, B divided over the row shards.
      full_table: [B, Wt] the rows' full-layer pages (local numbers), Wt * ps >= T_b.
      ring_table: [B, R] the rows' ring pages.
      start: [B] int32 first position to write.
      copies: PageCopies [B] applied before the writes.
      spec, layout: as in `decode_steps`.

    Returns:
      the pools.
    """
    c = config
    sliding = _is_sliding(c)
    pools = _apply_copies(pools, copies, sliding, layout)
    width = tokens.shape[1]
    ps = spec.page_size
    valid = mask.astype(bool)
    positions = model_decoder.positions_from_mask(valid)
    slots = model_attention.Slots(jnp.arange(width, dtype=jnp.int32),
                                  jnp.arange(width, dtype=jnp.int32), valid)  # fmt: skip
    ctx = model_decoder._attend_context(c, positions, slots, None, False, layout.activations)
    total = jnp.sum(mask.astype(jnp.int32), axis=1)[:, None]
    position = total - width + jnp.arange(width, dtype=jnp.int32)[None, :]  # [B, W] per slot
    wanted = (position >= start[:, None]) & (position >= 0)
    in_ring = position // ps > (total - 1) // ps - ring_table.shape[1]
    offset = jnp.where(position >= 0, position % ps, 0)

    def entries(table, keep, ring):
        index = jnp.maximum(position // ps, 0)
        index = index % table.shape[1] if ring else jnp.minimum(index, table.shape[1] - 1)
        return jnp.where(keep, jnp.take_along_axis(table, index, axis=1), 0)

    pages = {
        False: entries(full_table, wanted, False),
        True: entries(ring_table, wanted & in_ring, True),
    }

    def write(pool, page, off, x):  # per shard: its rows' entries (page 0: none), local pages
        x = jnp.where((page > 0)[:, :, None, None], x, 0)  # no padding garbage in scratch
        heads, dim = x.shape[2:]
        return _write_entries(pool, page.reshape(-1), off.reshape(-1), x.reshape(-1, heads, dim))

    write = layout.local(write, (POOL_SPEC, ROW_SPEC, ROW_SPEC, HEADS_SPEC), POOL_SPEC)
    x = jnp.take(weights.embed, tokens, axis=0).astype(c.compute_dtype)
    new_k, new_v = [], []
    for i, is_sliding in enumerate(sliding):

        def attend(q, k, v, k_pool, v_pool, is_sliding=is_sliding):
            attn = model_attention.attention(
                q, k, v, ctx.slots, window=c.sliding_window if c.has_sliding_layers else None,
                sliding=is_sliding, implementation=c.attention, dtype=c.compute_dtype,
                self_attention=True, block_size=c.attention_block_size, sharding=ctx.sharding,
            )  # fmt: skip
            page = pages[is_sliding]
            return attn, write(k_pool, page, offset, k), write(v_pool, page, offset, v)

        x, k_pool, v_pool = model_decoder._block(
            c, weights.layers[i], x, is_sliding, ctx, pools.k[i], pools.v[i], attend=attend
        )
        new_k.append(k_pool)
        new_v.append(v_pool)
    return PagedPools(k=tuple(new_k), v=tuple(new_v))


def _row_keys(seed: jax.Array, row_ids: jax.Array) -> jax.Array:
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(seed), row_ids)


def _decode_state(state: nnx.State, c: ModelConfig, shardings: Any) -> nnx.State:
    """The state cast to the compute dtype, then laid out for decode (cast first: the reshard
    moves compute-dtype bytes)."""
    cast = cast_for_compute(state, c.compute_dtype)
    return jax.tree.map(jax.lax.with_sharding_constraint, cast, shardings)


def prepare_weights(
    graphdef: nnx.GraphDef, state: nnx.State, *, weight_shardings: Any
) -> tuple[DecodeWeights, jax.Array]:
    """The cast per-layer decode weights and the output projection [V, D] (once per chunk), in
    the decode layout `weight_shardings` (`EngineLayout.weight_shardings`)."""
    config = nnx.merge(graphdef, state).config
    policy = nnx.merge(graphdef, _decode_state(state, config, weight_shardings))
    return decode_weights(policy), policy.output_embedding()


def _apply_copies(
    pools: PagedPools, copies: PageCopies, sliding: tuple[bool, ...], layout: EngineLayout
) -> PagedPools:
    """The admissions' page copies, per row shard (local page numbers)."""

    def copy(pool, src, dst):
        return pool.at[:, dst].set(pool[:, src])

    copy = layout.local(copy, (POOL_SPEC, ROW_SPEC, ROW_SPEC), POOL_SPEC)

    def one(pool, is_sliding):
        if is_sliding:
            return copy(pool, copies.ring_src, copies.ring_dst)
        return copy(pool, copies.src, copies.dst)

    return PagedPools(
        k=tuple(one(x, s) for x, s in zip(pools.k, sliding, strict=True)),
        v=tuple(one(x, s) for x, s in zip(pools.v, sliding, strict=True)),
    )


def decode_steps(
    config: ModelConfig,
    weights: DecodeWeights,
    head: jax.Array,
    pools: PagedPools,
    slots: SlotState,
    params: RowSamplingParams,
    seed: jax.Array,
    stop: StopArrays,
    copies: PageCopies,
    *,
    spec: PagedSpec,
    layout: EngineLayout,
) -> tuple[PagedPools, SlotState, StepOutputs]:
    """`spec.steps_per_call` decode steps of every active slot (see the module docstring).

    Each step feeds `last_tokens` at position `lengths` (writing that page entry of every
    layer), attends over the slot's pages, samples step `steps` with the row's key and stops the
    row on EOS, a stop sequence or its last slot; a stopped slot writes only the scratch page
    and emits nothing for the rest of the call. The host guarantees the table covers every
    position the call writes.

    Args:
      config: the model config (static).
      weights, head: from `prepare_weights`.
      pools: page pools (donated).
      slots: the slot state; params: per-slot sampling parameters [S].
      seed: uint32 scalar; stop: stop criteria; copies: admissions' page copies.
      spec: static settings.
      layout: the engine's mesh layout (slots divide over its row shards; tables and copies
        hold each shard's local page numbers).

    Returns:
      pools, the slot state after the call, and what it sampled.
    """
    c = config
    sliding = _is_sliding(c)
    window = c.sliding_window if c.has_sliding_layers else None
    ps = spec.page_size
    num_slots = slots.lengths.shape[0]
    steps = spec.steps_per_call
    pools = _apply_copies(pools, copies, sliding, layout)
    keys = _row_keys(seed, slots.row_ids)
    dtype = c.compute_dtype
    scale = c.head_dim**-0.5
    dummy = model_attention.Slots(
        jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32), jnp.ones((num_slots, 1), bool)
    )
    activations = layout.activations

    def local_attend(q, k, v, k_pool, v_pool, page, offset, lengths, table, *, is_sliding):
        # One row shard's slots and KV heads. k, v [S, 1, K, Dh] -> the page entry [K, S, Dh].
        k_pool = _write_entries(k_pool, page, offset, k[:, 0])
        v_pool = _write_entries(v_pool, page, offset, v[:, 0])
        attn = paged_decode_attention(
            q[:, 0], k_pool, v_pool, lengths, table,
            impl="reference" if is_sliding else spec.impl,
            sm_scale=scale, window=window if is_sliding else None,
        )  # fmt: skip
        return attn[:, None], k_pool, v_pool

    specs = (HEADS_SPEC,) * 3 + (POOL_SPEC,) * 2 + (ROW_SPEC,) * 4
    attend_per_shard = {
        kind: layout.local(
            functools.partial(local_attend, is_sliding=kind),
            specs,
            (HEADS_SPEC, POOL_SPEC, POOL_SPEC),
        )  # fmt: skip
        for kind in set(sliding)
    }

    # Sampling is row-local: per row shard (logits gathered over tensor only), so that top-k
    # and the sampling branch's condition never gather rows across shards.
    sample_per_shard = layout.local(
        functools.partial(step_outcome, max_top_k=spec.max_top_k),
        (ROW_SPEC, ROW_SPEC, ROW_SPEC, PartitionSpec(), ROW_SPEC, ROW_SPEC, ROW_SPEC),
        ROW_SPEC,
    )

    def one_step(j, carry):
        pools, state, out = carry
        active = state.active
        position = state.lengths
        page_of = position // ps
        in_table = jnp.minimum(page_of, state.full_table.shape[1] - 1)
        full_page = jnp.where(active, _column(state.full_table, in_table), 0)
        ring_page = jnp.where(
            active, _column(state.ring_table, page_of % state.ring_table.shape[1]), 0
        )
        offset = position % ps
        lengths = position + 1
        ctx = model_decoder._attend_context(c, position[:, None], dummy, None, True, activations)
        x = jnp.take(weights.embed, state.last_tokens[:, None], axis=0).astype(dtype)
        new_k, new_v = [], []
        for i, is_sliding in enumerate(sliding):
            page = ring_page if is_sliding else full_page
            table = state.ring_table if is_sliding else state.full_table

            def attend(q, k, v, k_pool, v_pool, page=page, table=table, is_sliding=is_sliding):
                return attend_per_shard[is_sliding](
                    q, k, v, k_pool, v_pool, page, offset, lengths, table
                )

            x, k_pool, v_pool = model_decoder._block(
                c, weights.layers[i], x, is_sliding, ctx, pools.k[i], pools.v[i], attend=attend
            )
            new_k.append(k_pool)
            new_v.append(v_pool)
        hidden = model_layers.rms_norm(x, weights.final_norm, c.rms_norm_eps)
        logits = model_roles._project(hidden[:, 0], head, dtype)
        # Computed split by vocabulary (the head's layout), then gathered for the sampling:
        # otherwise the partitioner may gather the [V, D] head instead, every step.
        logits = jax.lax.with_sharding_constraint(logits, layout.logits)
        step_keys = jax.vmap(jax.random.fold_in)(keys, state.steps)
        # Idle slots draw greedily: a finished sampled row must not run the sampling branches.
        row_params = params.replace(greedy=params.greedy | ~active)
        tokens, logprobs, sampling_lp, window_out, finishing, reason = sample_per_shard(
            logits, step_keys, row_params, stop, state.window, active,
            state.steps == spec.max_new_tokens - 1,
        )  # fmt: skip

        def column(buffer, values, fill):
            values = jnp.where(active, values, fill).astype(buffer.dtype)
            return jax.lax.dynamic_update_slice(buffer, values[:, None], (0, j))

        out = StepOutputs(
            tokens=column(out.tokens, tokens, 0),
            logprobs=column(out.logprobs, logprobs, 0.0),
            sampling_logprobs=column(out.sampling_logprobs, sampling_lp, 0.0),
            emitted=column(out.emitted, active, False),
            finish_reason=jnp.where(finishing, reason, out.finish_reason).astype(jnp.int32),
        )
        state = state.replace(
            lengths=jnp.where(active, lengths, state.lengths),
            last_tokens=jnp.where(active, tokens, state.last_tokens),
            steps=state.steps + active.astype(jnp.int32),
            active=active & ~finishing,
            window=jnp.where(active[:, None], window_out, state.window),
        )
        return PagedPools(k=tuple(new_k), v=tuple(new_v)), state, out

    out = StepOutputs(
        tokens=jnp.zeros((num_slots, steps), jnp.int32),
        logprobs=jnp.zeros((num_slots, steps), jnp.float32),
        sampling_logprobs=jnp.zeros((num_slots, steps), jnp.float32),
        emitted=jnp.zeros((num_slots, steps), bool),
        finish_reason=jnp.zeros((num_slots,), jnp.int32),
    )
    pools, slots, out = jax.lax.fori_loop(0, steps, one_step, (pools, slots, out))
    return pools, slots, out
