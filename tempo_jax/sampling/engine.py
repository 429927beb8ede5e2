"""`Engine`: the paged rollout engine, continuous batching of decode slots over a paged KV cache.

    engine = Engine(policy, max_new_tokens=256, max_prompt_length=512, eos_ids=(eos,),
                    page_size=16, num_slots=32, steps_per_call=16)
    rollouts = engine.generate(state, prompt_tokens, prompt_mask, n=8, sampling=..., seed=step)

Same interface and same tokens as `Sampler` (it is one: bucketing, chunking, `chunk_log` and
validation are the Sampler's; only how one chunk is sampled differs). Per chunk of prompts:

1. Prefill: the chunk's B prompts are prefilled in one call exactly as the static sampler does
   (`paged_decode.prefill_into_pages`), their keys and values written into pool pages, and
   token 0 of every row drawn. Each prompt holds its pages (the allocator's references) until
   its last sample has finished.
2. Decode slots: `num_slots` rows decode at once. A row is admitted into a free slot between
   calls: its table starts with its prompt's full pages (shared, a reference each) and, when
   the prompt's last page is partly filled, a private copy of that page (copy on write), and
   a sliding layer's ring gets a copy of the prompt's ring. Pages for a row's next
   `steps_per_call` tokens are allocated before each call, so a row holds only the pages it
   has filled (plus one call's worth). Admission goes by free pages (vLLM's policy): a
   waiting row takes a free slot when the pool still holds every active row's next call and
   its own; when the active rows' next call does not fit, the most recently admitted row is
   preempted (pages freed, back to the head of the queue). Recompute preemption (vLLM's, the
   default): the row keeps its tokens and log-probs, and when readmitted
   `paged_decode.refill_pages` prefills its prompt and response tokens to recompute their
   keys and values into fresh pages (its prompt's shared pages kept), then it decodes on at
   its next step with its own key. `preemption="restart"`: it decodes again from token 1,
   to the same tokens (they depend only on its key), its pages are all it loses.
3. `paged_decode.decode_steps` runs `steps_per_call` steps of every slot in one jitted call;
   rows that finish inside stop writing and sampling (their slot-steps are the waste). The
   host then copies the call's tokens out, frees finished rows' pages and slots, and admits
   waiting rows. Tables are passed at the width of the longest active row rounded up to a
   power of two, so attention reads only (about) the pages that are filled, and only the
   active slots are passed, in the smallest of a few batch sizes that holds them
   (`models.rollout_time.batch_slots`): when no row waits any more, the batch shrinks with the tail
   instead of stepping empty slots.

Row i's key at step t is fold_in(fold_in(key(seed), first_row + i), t) wherever it decodes, so
the tokens, log-probs and finish reasons are those of `Sampler` (the decode attention's
reduction order differs, and a refilled row's keys and values come from a prefill instead of
its decode steps: float rounding; tests check token-for-token equality). Rows of a
chunk are units of `chunk_log` as in the Sampler, so a preempted rollout resumes bitwise.

Sharding (`engine_layout.EngineLayout`): the run mesh's devices as row shards x
`decode_tensor`; decode weights in the compute dtype split over tensor by the inference rules,
pools by KV heads over tensor and pages over row shards, prompts / rows / slots over row shards.
Each row shard has its own allocator, queue and slots (a prompt's samples decode in its shard),
and one jitted call steps every shard. One device (mesh None) is the 1 x 1 case.
`last_stats` holds the last call's decode slot-steps, kept tokens, preemptions, refills and peak
pages.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any

import jax
import numpy as np

from tempo_jax.models import Policy
from tempo_jax.models.rollout_time import batch_slots
from tempo_jax.sampling import engine_layout as el
from tempo_jax.sampling.engine_host import (
    Buffers,
    ChunkSizes,
    Readmissions,
    Slots,
    first_active,
    pad_prompts,
    page_copies,
)
from tempo_jax.sampling.page_allocator import PageAllocator
from tempo_jax.sampling.paged_attention import resolve_impl, ring_pages
from tempo_jax.sampling.paged_decode import (
    FirstTokens,
    PagedPools,
    PagedSpec,
    SlotState,
    StepOutputs,
    decode_steps,
    init_pools,
    prefill_into_pages,
    prepare_weights,
    refill_pages,
)
from tempo_jax.sampling.params import RowSamplingParams
from tempo_jax.sampling.sampler import Sampler
from tempo_jax.sampling.stopping import StopArrays

PREEMPTIONS = ("recompute", "restart")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class Engine(Sampler):
    """The paged continuous-batching engine behind `Sampler`'s interface (module docstring).

    Attributes (besides the Sampler's):
      page_size, num_slots (all row shards together; 0: the chunk's rows), num_pages (per row
      shard; 0: from the HBM left when the device reports it, else the chunk's rows at full
      length), steps_per_call, impl (paged attention of full layers), layout (the mesh layout).
      last_stats: decode slot_steps, kept_tokens, calls, preemptions and peak_pages (the
        largest over row shards) of the last generate.
    """

    def __init__(
        self,
        policy: Policy,
        *,
        page_size: int = 16,
        num_slots: int = 0,
        num_pages: int = 0,
        steps_per_call: int = 16,
        attention_impl: str | None = None,
        mesh: jax.sharding.Mesh | None = None,
        rules: Any = None,
        decode_tensor: int = 1,
        preemption: str = "recompute",
        **sampler_kwargs: Any,
    ):
        """Args: the Sampler's, plus
        page_size: tokens per page.
        num_slots: decode slots (rows decoding at once) over all row shards, rounded up to a
          multiple of them; 0 = the rows of a chunk.
        num_pages: full-attention pool pages of each row shard (its scratch page included);
          0 = what `HBM_FRACTION` of the device's memory leaves (`engine_layout`), or, where
          devices report no memory (CPU), every row of a chunk at full length.
        steps_per_call: decode steps per jitted call.
        attention_impl: "reference" or "pallas"; None = from the model's attention setting.
        mesh: the run's mesh (its devices, in order, become the decode mesh: rows over
          devices / decode_tensor shards, weights and KV heads over decode_tensor); None = the
          first local device. Rollouts come back as host arrays.
        rules: the run's logical-axis rules (decode uses their `inference_rules`).
        decode_tensor: the decode weights' and KV heads' split (1 = every chip holds whole
          weights and decodes its own rows).
        preemption: what a preempted row does when readmitted: "recompute" (it keeps its
          tokens; a prefill recomputes its keys and values, then it decodes on) or "restart"
          (it decodes again from token 1).
        """
        if preemption not in PREEMPTIONS:
            raise ValueError(f"Engine: preemption must be one of {PREEMPTIONS}, got {preemption!r}")
        for name, value, least in (
            ("page_size", page_size, 1),
            ("num_slots", num_slots, 0),
            ("num_pages", num_pages, 0),
            ("steps_per_call", steps_per_call, 1),
            ("decode_tensor", decode_tensor, 1),
        ):
            if not isinstance(value, (int, np.integer)) or value < least:
                raise ValueError(f"Engine: {name} must be an int >= {least}, got {value!r}")
        super().__init__(policy, **sampler_kwargs)
        self.layout = el.EngineLayout.create(mesh, rules, int(decode_tensor), policy.config)
        self.page_size = int(page_size)
        self.num_slots = int(num_slots)
        self.num_pages = int(num_pages)
        self.steps_per_call = int(steps_per_call)
        self.preemption = preemption
        platform = self.layout.mesh.devices.flat[0].platform  # a topology's for AOT compiles
        self.impl = attention_impl or resolve_impl(self.config.attention, platform)
        c = self.config
        self.ring = ring_pages(c.sliding_window, page_size) if c.has_sliding_layers else 1
        self.last_stats: dict[str, int] = {}
        self._weight_axes = el.weight_axes(policy)
        self._budget_pages: dict[tuple, int] = {}
        self._pools: dict[tuple, Any] = {}
        self._jitted: dict[tuple, Any] = {}
        self._shapes: set[tuple] = set()

    @property
    def num_compilations(self) -> int:
        return len(self._shapes)

    # --- one chunk ------------------------------------------------------------------------------

    def _call(self, state, tokens, mask, rows, seed, first_row, stop_arrays, n, bucket,
              real_prompts=None):  # fmt: skip
        """Samples the chunk's first `real_prompts` prompts (all by default); host Rollouts."""
        lay = self.layout
        real = tokens.shape[0] if real_prompts is None else real_prompts
        state = self._on_mesh(state)
        sizes = self._sizes(tokens.shape[0], n, bucket, state)
        tokens, mask, rows = pad_prompts(tokens, mask, rows, n, self.layout.data)
        batch, d = sizes.prompts, lay.data
        per_prompt_shard, per_slot_shard = batch // d, sizes.slots
        num_rows = real * n
        plen = np.asarray(mask, np.int32).sum(axis=1)
        ps, steps, max_new = self.page_size, self.steps_per_call, self.max_new_tokens
        ring = self.ring
        spec = PagedSpec(n, max_new, self.max_top_k, ps, steps, self.impl, ring)

        def shard_of_prompt(p: int) -> int:
            return p // per_prompt_shard

        allocators = [PageAllocator(sizes.full_pages) for _ in range(d)]
        row_need = max(_cdiv(int(x) + max_new - 1, ps) - int(x) // ps for x in plen[:real])
        for i in range(d):
            prompt_need = sum(
                _cdiv(int(plen[p]), ps) for p in range(real) if shard_of_prompt(p) == i
            )
            if sizes.full_pages - 1 < prompt_need + row_need:
                # With this much, the oldest row of a shard always fits: it never stalls.
                raise ValueError(
                    f"rollout.paged.num_pages={sizes.full_pages} holds {sizes.full_pages - 1} "
                    f"pages, fewer than a row shard's prompts ({prompt_need}) plus one row at "
                    f"full length ({row_need}) of {ps} tokens"
                )

        # Prompt pages (local numbers of the prompt's shard), held until its samples finish.
        prompt_pages = np.zeros((batch, sizes.prompt_width), np.int32)
        held: list[list[int]] = [[] for _ in range(batch)]
        for p in range(real):
            held[p] = allocators[shard_of_prompt(p)].allocate(_cdiv(int(plen[p]), ps))
            prompt_pages[p, : len(held[p])] = held[p]
        local_prompt = np.arange(batch) % per_prompt_shard
        prompt_rings = (1 + per_slot_shard * ring + local_prompt[:, None] * ring
                        + np.arange(ring)).astype(np.int32)  # fmt: skip

        pools = self._take_pools(sizes)
        prefill = self._jit("prefill", spec, state)
        self._shapes.add(("prefill", batch, n, bucket, stop_arrays.table.shape))
        host_in = (tokens, mask, rows)
        placed = lay.put(host_in, (lay.rows, lay.rows, jax.tree.map(lambda _: lay.rows, rows)))
        scalars = lay.put((np.uint32(seed), np.uint32(first_row)), lay.replicated)
        stop_placed = lay.put(stop_arrays, lay.replicated)
        pools, first = prefill(state, *placed, *scalars, stop_placed, pools,
                               *lay.put((prompt_pages, prompt_rings), lay.rows))  # fmt: skip
        first = el.host(first)
        weights, head = self._jit("weights", spec, state)(state)

        out = Buffers.create(num_rows, max_new, self.pad_id)
        out.record_first(first, num_rows)
        waiting = [collections.deque() for _ in range(d)]
        unfinished = np.zeros(batch, np.int64)  # samples of each prompt still running
        for r in range(num_rows):
            if not first.finished[r]:
                waiting[shard_of_prompt(r // n)].append(r)
                unfinished[r // n] += 1
        for p in range(real):
            if unfinished[p] == 0:
                allocators[shard_of_prompt(p)].release(held[p])

        slots = Slots.empty(d * per_slot_shard, sizes.per_slot, ring, stop_arrays.window)
        slots.ring[:] = 1 + (np.arange(d * per_slot_shard) % per_slot_shard)[:, None] * ring
        slots.ring[:] += np.arange(ring)
        row_params = {name: np.asarray(getattr(rows, name)) for name in
                      ("temperature", "top_k", "top_p", "greedy")}  # fmt: skip
        decode = self._jit("decode", dataclasses.replace(spec, n=0), None)
        kept = np.zeros(num_rows, np.int64)  # tokens each row has emitted in decode calls
        stats = {"slot_steps": 0, "kept_tokens": 0, "calls": 0, "preemptions": 0,
                 "refills": 0, "refill_tokens": 0, "longest_refill": 0}  # fmt: skip
        back = Readmissions.create(self._refill_rows(per_prompt_shard, bucket), d)
        prompts = [np.asarray(tokens[p])[np.asarray(mask[p]) > 0] for p in range(real)]
        admitted = np.zeros(d, np.int64)  # admissions per row shard (readmissions included)
        seed_placed = scalars[0]

        while any(waiting) or slots.active.any():
            copies = [([], [], [], []) for _ in range(d)]
            back.clear()
            for i in range(d):
                in_shard = np.arange(i * per_slot_shard, (i + 1) * per_slot_shard)
                admitted[i] = self._schedule(
                    in_shard, slots, allocators[i], waiting[i], plen, n, first, held, first_row,
                    row_params, copies[i], prompt_rings, kept, stats, int(admitted[i]), back, i,
                )  # fmt: skip
            width = self._grow_tables(slots, plen, n, allocators, per_slot_shard, max_new)
            if any(back.slots):
                refill_in = back.batch(slots, prompts, out.tokens, n, self.pad_id, ps,
                                       bucket + max_new - 1)  # fmt: skip
                self._shapes.add(("refill", refill_in[0].shape))
                pools = self._jit("refill", dataclasses.replace(spec, n=0), None)(
                    weights, pools, *lay.put(refill_in, lay.rows)
                )
                lengths = [int(slots.lengths[s]) for x in back.slots for s in x]
                stats["refills"] += len(lengths)
                stats["refill_tokens"] += sum(lengths)
                stats["longest_refill"] = max(stats["longest_refill"], *lengths)
            # Each shard runs its active slots only, in the smallest batch (`batch_slots`) that
            # holds the busiest shard's: once no row waits, the batch shrinks with the tail.
            busiest = max(int(slots.active[i * per_slot_shard:(i + 1) * per_slot_shard].sum())
                          for i in range(d))  # fmt: skip
            size = batch_slots(busiest, per_slot_shard)
            chosen = np.concatenate([
                first_active(slots.active, i * per_slot_shard, per_slot_shard, size)
                for i in range(d)
            ])  # fmt: skip
            state_in, params = slots.state(chosen, width)
            self._shapes.add(("decode", size, width, stop_arrays.table.shape))
            pools, new_state, step_out = decode(
                weights, head, pools, lay.put(state_in, lay.rows), lay.put(params, lay.rows),
                seed_placed, stop_placed,
                lay.put(page_copies(copies, per_slot_shard, ring), lay.rows),
            )  # fmt: skip
            new_state, step_out = el.host((new_state, step_out))
            stats["calls"] += 1
            stats["slot_steps"] += len(chosen) * steps
            for j, s in enumerate(chosen):
                if not slots.active[s]:
                    continue
                row = int(slots.row[s])
                emitted = out.record_steps(row, int(slots.steps[s]), step_out, j)
                kept[row] += emitted
                stats["kept_tokens"] += emitted
                if not new_state.active[j]:
                    out.finish(row, int(new_state.steps[j]), int(step_out.finish_reason[j]))
                    slots.release(s, allocators[s // per_slot_shard])
                    p = row // n
                    unfinished[p] -= 1
                    if unfinished[p] == 0:
                        allocators[shard_of_prompt(p)].release(held[p])
            for name in ("lengths", "last_tokens", "steps", "active", "window"):
                getattr(slots, name)[chosen] = getattr(new_state, name)
        self._pools[sizes] = pools
        peak = max(a.peak_in_use for a in allocators)
        self.last_stats = {**stats, "peak_pages": peak}
        return out.rollouts(tokens[:real], mask[:real], n)

    def _schedule(self, in_shard, slots, allocator, waiting, plen, n, first, held, first_row,
                  row_params, copies, prompt_rings, kept, stats, admitted, back,
                  shard) -> int:  # fmt: skip
        """Admission by free pages in one row shard (vLLM's policy, on this shard's pool): while
        its active rows' pages for the coming call exceed the free pages, the most recently
        admitted row is preempted (its pages freed; under "recompute" it keeps its tokens and
        `back` its state, readmission prefills them again, at most `back.cap` a call; under
        "restart" it decodes again from token 1: its tokens depend only on its key);
        otherwise free slots take waiting rows while the free pages cover their first call
        too. Returns the shard's admission count."""
        need = {int(s): self._call_pages(slots, s, plen, n) for s in in_shard if slots.active[s]}
        preempted = False
        while sum(need.values()) > allocator.num_free:
            s = max(need, key=lambda k: slots.order[k])
            if len(need) == 1:  # the pool check in `_call` makes this unreachable
                raise RuntimeError("a row shard's pool cannot hold its oldest row")
            row = int(slots.row[s])
            stats["preemptions"] += 1
            if self.preemption == "restart":
                stats["kept_tokens"] -= int(kept[row])
                kept[row] = 0
            else:
                back.save(row, slots, s)
            slots.release(s, allocator)
            waiting.appendleft(row)
            del need[s]
            preempted = True
        if preempted:  # no admission while the pool is short (it would be preempted again)
            return admitted
        ps, steps = self.page_size, self.steps_per_call
        for s in in_shard[slots.row[in_shard] < 0]:
            if not waiting:
                break
            row = waiting[0]
            p = row // n
            saved = back.saved.get(row)
            if saved is not None and len(back.slots[shard]) >= back.cap:
                break  # this call's refill is full
            shared = int(plen[p]) // ps
            length = int(plen[p]) + (saved[0] - 1 if saved else 0)
            last = min(length + steps, int(plen[p]) + self.max_new_tokens - 1)
            if sum(need.values()) + _cdiv(last, ps) - shared > allocator.num_free:
                break  # the pool is full: wait for a row to finish
            waiting.popleft()
            slots.admit(int(s), row, int(plen[p]), first, held[p], self.page_size, first_row,
                        row_params, allocator, back.copies[shard] if saved else copies,
                        prompt_rings[p], back.saved.pop(row, None))  # fmt: skip
            if saved:
                back.slots[shard].append(int(s))
            slots.order[s] = admitted
            admitted += 1
            need[int(s)] = self._call_pages(slots, s, plen, n)
        return admitted

    def _refill_rows(self, prompts_local: int, bucket: int) -> int:
        """Readmissions a refill call takes per row shard: its [m, P + L - 1] activations at
        most the chunk prefill's [B / d, P] (one at least)."""
        return max(prompts_local * bucket // (bucket + self.max_new_tokens - 1), 1)

    def refill_rows(self, num_prompts: int, bucket: int) -> int:
        """Readmissions per row shard a refill call of a chunk of `num_prompts` prompts takes."""
        return self._refill_rows(self._sizes(num_prompts, 1, bucket).prompts // self.layout.data,
                                 bucket)  # fmt: skip

    def _call_pages(self, slots: Slots, s: int, plen: np.ndarray, n: int) -> int:
        """Pages slot s's row must still get before the coming call."""
        row_plen = int(plen[int(slots.row[s]) // n])
        last = min(int(slots.lengths[s]) + self.steps_per_call, row_plen + self.max_new_tokens - 1)
        return max(_cdiv(last, self.page_size) - len(slots.shared[s]) - len(slots.private[s]), 0)

    def _grow_tables(self, slots, plen, n, allocators, per_shard, max_new) -> int:
        """Allocates the pages of every active row's next call; returns the table width to pass
        (pages of the longest active row after the call, rounded up to a power of two)."""
        ps = self.page_size
        widest = 1
        for s in np.flatnonzero(slots.active):
            row_plen = int(plen[int(slots.row[s]) // n])
            last = min(int(slots.lengths[s]) + self.steps_per_call, row_plen + max_new - 1)
            pages = _cdiv(last, ps)
            have = len(slots.shared[s]) + len(slots.private[s])
            if pages > have:
                new = allocators[s // per_shard].allocate(pages - have)
                slots.table[s, have:pages] = new
                slots.private[s].extend(new)
            widest = max(widest, pages)
        width = 1 << (widest - 1).bit_length()
        return min(width, slots.table.shape[1])

    # --- shapes, placement and executables ------------------------------------------------------

    def _on_mesh(self, state):
        """The state as the jitted functions take it: arrays on other devices than the decode
        mesh's (a test's default-device state on a larger mesh) are laid out on it."""
        mesh = self.layout.mesh
        devices = set(mesh.devices.flat)

        def placed(x) -> bool:
            on = getattr(getattr(x, "sharding", None), "device_set", None)
            return on is not None and on <= devices and (len(on) > 1 or mesh.size == 1)

        if all(placed(x) for x in jax.tree.leaves(state)):
            return state
        return jax.device_put(state, self.layout.weight_shardings(state))

    def _sizes(self, batch: int, n: int, bucket: int, state: Any = None) -> ChunkSizes:
        """The shapes of a chunk of `batch` prompts (padded here to the row shards) of width
        `bucket` with n samples each; `state` (concrete) lets an unset pool size come from the
        devices' free memory, once per shape."""
        ps, d = self.page_size, self.layout.data
        prompts_local = _cdiv(batch, d)
        slots = _cdiv(self.num_slots or batch * n, d)
        per_slot = _cdiv(bucket + self.max_new_tokens - 1, ps)
        prompt_width = _cdiv(bucket, ps)
        ring_pool = 1 + (slots + prompts_local) * self.ring
        full = self.num_pages
        if not full and state is not None:
            key = (batch, n, bucket)
            if key not in self._budget_pages:
                self._budget_pages[key] = self._pages_from_memory(state, prompts_local, slots,
                                                                  bucket)  # fmt: skip
            full = self._budget_pages[key]
        full = full or 1 + prompts_local * prompt_width + slots * per_slot
        return ChunkSizes(prompts_local * d, slots, per_slot, prompt_width, full, ring_pool)

    def _pages_from_memory(self, state, prompts: int, slots: int, bucket: int) -> int:
        """Pool pages per row shard from the devices' free memory (0 where they report none)."""
        free = el.device_budget_bytes(self.layout.mesh, el.HBM_FRACTION)
        if free is None:
            return 0
        free -= self.decode_weight_bytes(state)
        pages = el.engine_pool_pages(self.config, self.layout, self.page_size, self.ring, slots,
                                     prompts, bucket, free)  # fmt: skip
        return el.same_on_every_process(pages)

    def decode_weight_bytes(self, state: Any) -> int:
        """Bytes per chip of the decode weights (compute dtype, decode layout) of `state`."""
        abstract = jax.eval_shape(self._jit("weights", None, state), state)
        return el.tree_bytes_per_chip(abstract, self._weight_shardings())

    def pool_pages(self, state: Any, free_bytes: int, num_prompts: int, n: int,
                   bucket: int) -> int:  # fmt: skip
        """Full-attention pool pages per row shard for a chunk of `num_prompts` prompts when
        each chip has `free_bytes` left beside the resident state (before the decode weights):
        what `generate` sizes from device memory (`tempo-jax compile` passes its budget)."""
        sizes = self._sizes(num_prompts, n, bucket)
        free = free_bytes - self.decode_weight_bytes(state)
        return el.engine_pool_pages(self.config, self.layout, self.page_size, self.ring,
                                    sizes.slots, sizes.prompts // self.layout.data, bucket,
                                    free)  # fmt: skip

    def chunk_sizes(self, num_prompts: int, n: int, bucket: int) -> ChunkSizes:
        """The shapes of a chunk of `num_prompts` prompts (pool pages: without device memory)."""
        return self._sizes(num_prompts, n, bucket)

    def _weight_shardings(self):
        return self.layout.decode_weight_shardings(self._weight_axes)

    def _pool_shardings(self) -> PagedPools:
        layers = self.config.num_layers
        return PagedPools(k=(self.layout.pool,) * layers, v=(self.layout.pool,) * layers)

    def _take_pools(self, sizes: ChunkSizes):
        """The pools of this size from the last call (donated through the calls), or new ones
        made in place on their shards."""
        pools = self._pools.pop(sizes, None)
        if pools is None:
            d = self.layout.data
            make = functools.partial(init_pools, self.config, d * sizes.full_pages,
                                     d * sizes.ring_pages, self.page_size)  # fmt: skip
            pools = jax.jit(make, out_shardings=self._pool_shardings())()
        return pools

    def _jit(self, kind: str, spec: PagedSpec | None, state: Any):
        """The jitted prefill / weights / decode. Arguments come placed (host values by
        `layout.put`, abstract ones carrying their shardings); outputs are laid out explicitly:
        pools by KV heads and row shards, rows and slots over the row shards, decode weights by
        the inference rules."""
        lay = self.layout
        key = (kind, spec)
        if key in self._jitted:
            return self._jitted[key]
        weight_shardings = lay.weight_shardings(state) if state is not None else None
        if kind == "prefill":
            fn = functools.partial(prefill_into_pages, self._graphdef, spec=spec, layout=lay,
                                   weight_shardings=weight_shardings)  # fmt: skip
            first = FirstTokens(*(lay.rows,) * 6)
            jitted = jax.jit(fn, donate_argnums=(7,), out_shardings=(self._pool_shardings(), first))
        elif kind == "refill":
            fn = functools.partial(refill_pages, self.config, spec=spec, layout=lay)
            jitted = jax.jit(fn, donate_argnums=(1,), out_shardings=self._pool_shardings())
        elif kind == "decode":
            fn = functools.partial(decode_steps, self.config, spec=spec, layout=lay)
            outs = (self._pool_shardings(), SlotState(*(lay.rows,) * 8),
                    StepOutputs(*(lay.rows,) * 5))  # fmt: skip
            jitted = jax.jit(fn, donate_argnums=(2,), out_shardings=outs)
        else:
            fn = functools.partial(prepare_weights, self._graphdef,
                                   weight_shardings=weight_shardings)  # fmt: skip
            jitted = jax.jit(fn, out_shardings=self._weight_shardings())
        if spec is not None:
            self._jitted[key] = jitted
        return jitted

    def abstract_args(self, kind: str, state: Any, num_prompts: int, n: int, bucket: int,
                      stop_arrays: StopArrays, full_pages: int = 0) -> tuple:  # fmt: skip
        """Abstract arguments (with their shardings) of the "prefill", "refill", "weights" or
        "decode" call of a chunk of `num_prompts` prompts of width `bucket` with n samples, the
        decode and the refill at their widest; `full_pages` per row shard (0: as `generate`
        would size it without device memory). `state` may be abstract; its shardings are kept
        (none: laid out for decode)."""
        lay = self.layout
        sizes = self._sizes(num_prompts, n, bucket)
        batch = sizes.prompts
        if full_pages:
            sizes = dataclasses.replace(sizes, full_pages=full_pages)

        def like(shape, dtype, sharding):
            return jax.ShapeDtypeStruct(shape, np.dtype(dtype), sharding=sharding)

        def rows(count):
            return RowSamplingParams(
                temperature=like((count,), np.float32, lay.rows),
                top_k=like((count,), np.int32, lay.rows),
                top_p=like((count,), np.float32, lay.rows),
                greedy=like((count,), bool, lay.rows),
            )

        shardings = lay.weight_shardings(state)
        abstract = jax.tree.map(
            lambda x, s: like(x.shape, x.dtype, getattr(x, "sharding", None) or s),
            state, shardings,
        )  # fmt: skip
        stop = jax.tree.map(lambda x: like(x.shape, x.dtype, lay.replicated), stop_arrays)
        scalar = like((), np.uint32, lay.replicated)
        d, ring = lay.data, self.ring
        pools = jax.tree.map(
            lambda x, s: like(x.shape, x.dtype, s),
            jax.eval_shape(lambda: init_pools(self.config, d * sizes.full_pages,
                                              d * sizes.ring_pages, self.page_size)),
            self._pool_shardings(),
        )  # fmt: skip
        if kind == "weights":
            return (abstract,)
        if kind == "prefill":
            prompts = like((batch, bucket), np.int32, lay.rows)
            return (abstract, prompts, prompts, rows(batch * n), scalar, scalar, stop, pools,
                    like((batch, sizes.prompt_width), np.int32, lay.rows),
                    like((batch, ring), np.int32, lay.rows))  # fmt: skip
        weights, head = jax.tree.map(
            lambda x, s: like(x.shape, x.dtype, s),
            jax.eval_shape(self._jit("weights", None, state), abstract),
            self._weight_shardings(),
        )  # fmt: skip
        if kind == "refill":  # the widest: m rows a shard of P + L - 1 tokens
            rows_in = d * self.refill_rows(num_prompts, bucket)
            width = bucket + self.max_new_tokens - 1
            seq = like((rows_in, width), np.int32, lay.rows)
            table = like((rows_in, _cdiv(width, self.page_size)), np.int32, lay.rows)
            copies = page_copies([([], [], [], [])] * d, rows_in // d, ring)
            copies = jax.tree.map(lambda x: like(x.shape, x.dtype, lay.rows), copies)
            return (weights, pools, seq, seq, table, like((rows_in, ring), np.int32, lay.rows),
                    like((rows_in,), np.int32, lay.rows), copies)  # fmt: skip
        slots = d * sizes.slots
        empty = Slots.empty(slots, sizes.per_slot, ring, stop_arrays.window)
        state_in, params = empty.state(np.arange(slots), sizes.per_slot)
        copies = page_copies([([], [], [], [])] * d, sizes.slots, ring)
        to = functools.partial(jax.tree.map, lambda x: like(x.shape, x.dtype, lay.rows))
        return (weights, head, pools, to(state_in), to(params), scalar, stop, to(copies))

    def lower(self, kind: str, state: Any, num_prompts: int, n: int, bucket: int,
              stop_arrays: StopArrays, full_pages: int = 0) -> jax.stages.Lowered:  # fmt: skip
        """The "prefill", "refill", "weights" or "decode" call of a chunk, lowered from abstract
        arguments (`abstract_args`); nothing is allocated."""
        spec = PagedSpec(n, self.max_new_tokens, self.max_top_k, self.page_size,
                         self.steps_per_call, self.impl, self.ring)  # fmt: skip
        if kind in ("decode", "refill"):
            spec = dataclasses.replace(spec, n=0)
        args = self.abstract_args(kind, state, num_prompts, n, bucket, stop_arrays, full_pages)
        return self._jit(kind, spec, state).lower(*args)
