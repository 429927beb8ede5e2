"""`Engine`: the paged rollout engine, continuous batching of decode slots over a paged KV cache.

    engine = Engine(policy, max_new_tokens=256, max_prompt_length=512, eos_ids=(eos,),
                    page_size=16, num_slots=32, steps_per_call=16)
    rollouts = engine.generate(state, prompt_tokens, prompt_mask, n=8, sampling=..., seed=step)

Same interface and same tokens as `Sampler` (it is one: bucketing, chunking, `chunk_log` and
validation are the Sampler's; only how one chunk is sampled differs). Per chunk of prompts:

1. Prefill: the chunk's B prompts are prefilled in one call exactly as the static sampler does
   (`paged_decode.prefill_into_pages`), their keys and values written into pool pages, and
   token 0 of every row drawn. Each prompt holds its pages (the allocator's references) until
   its last sample has been admitted to a slot.
2. Decode slots: `num_slots` rows decode at once. A row is admitted into a free slot between
   calls: its table starts with its prompt's full pages (shared, a reference each) and, when
   the prompt's last page is partly filled, a private copy of that page (copy on write), and
   a sliding layer's ring gets a copy of the prompt's ring. Pages for a row's next
   `steps_per_call` tokens are allocated before each call, so a row holds only the pages it
   has filled (plus one call's worth); admission reserves a row's worst case, so a row once
   admitted never waits for a page.
3. `paged_decode.decode_steps` runs `steps_per_call` steps of every slot in one jitted call;
   rows that finish inside stop writing and sampling (their slot-steps are the waste). The
   host then copies the call's tokens out, frees finished rows' pages and slots, and admits
   waiting rows. Tables are passed at the width of the longest active row rounded up to a
   power of two, so attention reads only (about) the pages that are filled, and only the
   active slots are passed, in the smallest power of two that holds them: when no row waits
   any more, the batch shrinks with the tail instead of stepping empty slots.

Row i's key at step t is fold_in(fold_in(key(seed), first_row + i), t) wherever it decodes, so
the tokens, log-probs and finish reasons are those of `Sampler` (the decode attention's
reduction order differs, a float rounding; tests check token-for-token equality). Rows of a
chunk are units of `chunk_log` as in the Sampler, so a preempted rollout resumes bitwise.

One device (of a mesh, its first); `last_stats` holds the last call's decode
slot-steps, kept tokens and peak pages.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any

import jax
import numpy as np

from tempo_jax.models import Policy
from tempo_jax.sampling.page_allocator import SCRATCH_PAGE, PageAllocator
from tempo_jax.sampling.paged_attention import resolve_impl, ring_pages
from tempo_jax.sampling.paged_decode import (
    PageCopies,
    PagedSpec,
    SlotState,
    decode_steps,
    init_pools,
    prefill_into_pages,
    prepare_weights,
)
from tempo_jax.sampling.params import RowSamplingParams
from tempo_jax.sampling.rollouts import Rollouts
from tempo_jax.sampling.sampler import Sampler
from tempo_jax.sampling.stopping import StopArrays


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclasses.dataclass
class _Slots:
    """Host copy of the decode slots (numpy arrays of `SlotState` plus per-slot bookkeeping)."""

    table: np.ndarray  # [S, pages_per_slot] int32
    ring: np.ndarray  # [S, R]
    lengths: np.ndarray
    last_tokens: np.ndarray
    steps: np.ndarray
    active: np.ndarray
    row_ids: np.ndarray
    window: np.ndarray
    params: dict[str, np.ndarray]
    row: np.ndarray  # [S] row of the chunk in the slot, -1 when free
    shared: list[list[int]]  # prompt pages the slot's row references
    private: list[list[int]]  # pages the slot's row owns


class Engine(Sampler):
    """The paged continuous-batching engine behind `Sampler`'s interface (module docstring).

    Attributes (besides the Sampler's):
      page_size, num_slots (0: the chunk's rows), num_pages (0: sized for the chunk's rows at
      full length), steps_per_call, impl (paged attention of full layers).
      last_stats: decode slot_steps, kept_tokens, calls and peak_pages of the last generate.
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
        **sampler_kwargs: Any,
    ):
        """Args: the Sampler's, plus
        page_size: tokens per page.
        num_slots: decode slots (rows decoding at once); 0 = the rows of a chunk.
        num_pages: full-attention pool pages (the scratch page included); 0 = enough for every
          row of a chunk at full length, so admission never waits for pages.
        steps_per_call: decode steps per jitted call.
        attention_impl: "reference" or "pallas"; None = from the model's attention setting.
        mesh: None, or a mesh whose devices this process addresses: the engine runs on its
          first device (the parameters are gathered there once per chunk; Rollouts come back
          as host arrays, as the Sampler's chunked calls do).
        """
        for name, value, least in (
            ("page_size", page_size, 1),
            ("num_slots", num_slots, 0),
            ("num_pages", num_pages, 0),
            ("steps_per_call", steps_per_call, 1),
        ):
            if not isinstance(value, (int, np.integer)) or value < least:
                raise ValueError(f"Engine: {name} must be an int >= {least}, got {value!r}")
        self._device = None
        if mesh is not None:
            local = {d.id for d in jax.local_devices()}
            if any(d.id not in local for d in mesh.devices.flat):
                raise ValueError(
                    f"the paged rollout engine runs on one device of this process; mesh "
                    f"{dict(mesh.shape)} spans several processes (use rollout.engine='static')"
                )
            self._device = mesh.devices.flat[0]
        super().__init__(policy, **sampler_kwargs)
        self.page_size = int(page_size)
        self.num_slots = int(num_slots)
        self.num_pages = int(num_pages)
        self.steps_per_call = int(steps_per_call)
        self.impl = attention_impl or resolve_impl(self.config.attention)
        c = self.config
        self.ring = ring_pages(c.sliding_window, page_size) if c.has_sliding_layers else 1
        self.last_stats: dict[str, int] = {}
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
        if self._device is not None:
            state = jax.device_put(state, self._device)
        batch = tokens.shape[0]
        real = batch if real_prompts is None else real_prompts
        num_rows = real * n
        plen = np.asarray(mask, np.int32).sum(axis=1)
        ps, steps, max_new = self.page_size, self.steps_per_call, self.max_new_tokens
        num_slots, per_slot, prompt_width, full_pages, ring_pool = self._sizes(batch, n, bucket)
        ring = self.ring
        spec = PagedSpec(n, max_new, self.max_top_k, ps, steps, self.impl, ring)
        prompt_need = sum(_cdiv(int(x), ps) for x in plen[:real])
        row_need = max(_cdiv(int(x) + max_new - 1, ps) - int(x) // ps for x in plen[:real])
        if full_pages - 1 < prompt_need + row_need:
            # With this much, a row always fits once the slots are empty: admission never stalls.
            raise ValueError(
                f"rollout.paged.num_pages={full_pages} holds {full_pages - 1} pages, fewer than "
                f"the chunk's prompts ({prompt_need}) plus one row at full length ({row_need}) "
                f"of {ps} tokens"
            )
        allocator = PageAllocator(full_pages)

        # Prompt pages: full layers from the allocator, sliding rings after the slots' rings.
        prompt_pages = np.zeros((batch, prompt_width), np.int32)
        held: list[list[int]] = [[] for _ in range(batch)]
        for p in range(real):
            held[p] = allocator.allocate(_cdiv(int(plen[p]), ps))
            prompt_pages[p, : len(held[p])] = held[p]
        ring_base = 1 + num_slots * ring
        prompt_rings = (ring_base + np.arange(batch)[:, None] * ring + np.arange(ring)).astype(
            np.int32
        )

        pools = self._take_pools(full_pages, ring_pool)
        prefill = self._jit("prefill", spec, stop_arrays)
        self._shapes.add(("prefill", batch, n, bucket, stop_arrays.table.shape))
        pools, first = prefill(state, tokens, mask, rows, np.uint32(seed), np.uint32(first_row),
                               stop_arrays, pools, prompt_pages, prompt_rings)  # fmt: skip
        first = jax.device_get(first)
        weights, head = self._jit("weights", spec, None)(state)

        out = _Buffers.create(num_rows, max_new, self.pad_id)
        out.record_first(first, num_rows)
        waiting = collections.deque(i for i in range(num_rows) if not first.finished[i])
        unadmitted = np.bincount(np.asarray(list(waiting), np.int64) // n, minlength=batch)
        for p in range(real):
            if unadmitted[p] == 0:
                allocator.release(held[p])

        slots = self._empty_slots(num_slots, per_slot, stop_arrays.window)
        slots.ring[:] = 1 + np.arange(num_slots)[:, None] * ring + np.arange(ring)
        row_params = {name: np.asarray(getattr(rows, name)) for name in
                      ("temperature", "top_k", "top_p", "greedy")}  # fmt: skip
        decode = self._jit("decode", dataclasses.replace(spec, n=0), stop_arrays)
        reserved = np.zeros(num_slots, np.int64)  # pages a slot's row may still allocate
        stats = {"slot_steps": 0, "kept_tokens": 0, "calls": 0}

        while waiting or slots.active.any():
            copies = ([], [], [], [])
            for s in np.flatnonzero(slots.row < 0):
                if not waiting:
                    break
                row = waiting[0]
                p = row // n
                shared = int(plen[p]) // ps
                need = _cdiv(int(plen[p]) + max_new - 1, ps) - shared
                if allocator.num_free - int(reserved.sum()) < need:
                    break  # the pool is full: wait for a row to finish
                waiting.popleft()
                reserved[s] = need
                self._admit(slots, s, row, p, first, held, shared, plen, first_row, row_params,
                            allocator, copies, prompt_rings, reserved)  # fmt: skip
                unadmitted[p] -= 1
                if unadmitted[p] == 0:
                    allocator.release(held[p])
            width = self._grow_tables(slots, plen, n, allocator, reserved, max_new)
            # The call runs the active slots only, in the smallest power of two (at most
            # num_slots) that holds them: once no row waits, the batch shrinks with the tail.
            running = np.flatnonzero(slots.active)
            size = min(num_slots, 1 << (len(running) - 1).bit_length())
            chosen = np.concatenate([running, np.flatnonzero(~slots.active)])[:size]
            state_in = SlotState(
                full_table=slots.table[chosen, :width],
                ring_table=slots.ring[chosen],
                lengths=slots.lengths[chosen],
                last_tokens=slots.last_tokens[chosen],
                steps=slots.steps[chosen],
                active=slots.active[chosen],
                row_ids=slots.row_ids[chosen],
                window=slots.window[chosen],
            )
            params = RowSamplingParams(**{k: v[chosen] for k, v in slots.params.items()})
            self._shapes.add(("decode", size, width, stop_arrays.table.shape))
            pools, new_state, step_out = decode(
                weights, head, pools, state_in, params, np.uint32(seed), stop_arrays,
                _copies(copies, num_slots, ring),
            )  # fmt: skip
            new_state, step_out = jax.device_get((new_state, step_out))
            stats["calls"] += 1
            stats["slot_steps"] += size * steps
            stats["kept_tokens"] += int(step_out.emitted.sum())
            for j, s in enumerate(running):
                row = int(slots.row[s])
                out.record_steps(row, int(slots.steps[s]), step_out, j)
                if not new_state.active[j]:
                    out.finish(row, int(new_state.steps[j]), int(step_out.finish_reason[j]))
                    allocator.release(slots.shared[s] + slots.private[s])
                    slots.shared[s], slots.private[s] = [], []
                    slots.table[s] = SCRATCH_PAGE
                    slots.row[s] = -1
                    reserved[s] = 0
            for name in ("lengths", "last_tokens", "steps", "active", "window"):
                getattr(slots, name)[chosen] = getattr(new_state, name)
        self._pools[(full_pages, ring_pool)] = pools
        self.last_stats = {**stats, "peak_pages": allocator.peak_in_use}
        return out.rollouts(tokens[:real], mask[:real], n)

    def _admit(self, slots, s, row, p, first, held, shared, plen, first_row, row_params,
               allocator, copies, prompt_rings, reserved):  # fmt: skip
        """Puts chunk row `row` (of prompt p) into free slot s (tables, state, page copies)."""
        slots.shared[s] = held[p][:shared]
        allocator.share(slots.shared[s])
        slots.private[s] = []
        slots.table[s] = SCRATCH_PAGE
        slots.table[s, :shared] = slots.shared[s]
        if int(plen[p]) % self.page_size:  # copy on write of the partly filled prompt page
            (page,) = allocator.allocate(1)
            reserved[s] -= 1
            slots.private[s].append(page)
            slots.table[s, shared] = page
            copies[0].append(held[p][shared])
            copies[1].append(page)
        copies[2].append(prompt_rings[p])
        copies[3].append(slots.ring[s].copy())
        slots.row[s] = row
        slots.lengths[s] = plen[p]
        slots.last_tokens[s] = first.tokens[row]
        slots.steps[s] = 1
        slots.active[s] = True
        slots.row_ids[s] = first_row + row
        slots.window[s] = first.window[row]
        for name, values in row_params.items():
            slots.params[name][s] = values[row]

    def _grow_tables(self, slots, plen, n, allocator, reserved, max_new) -> int:
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
                new = allocator.allocate(pages - have)
                reserved[s] -= len(new)
                slots.table[s, have:pages] = new
                slots.private[s].extend(new)
            widest = max(widest, pages)
        width = 1 << (widest - 1).bit_length()
        return min(width, slots.table.shape[1])

    def _empty_slots(self, num_slots: int, per_slot: int, window: int) -> _Slots:
        zeros = functools.partial(np.zeros, num_slots)
        return _Slots(
            table=np.zeros((num_slots, per_slot), np.int32),
            ring=np.zeros((num_slots, self.ring), np.int32),
            lengths=zeros(np.int32),
            last_tokens=zeros(np.int32),
            steps=zeros(np.int32),
            active=zeros(bool),
            row_ids=zeros(np.uint32),
            window=np.full((num_slots, window), -1, np.int32),
            params={
                "temperature": np.ones(num_slots, np.float32),
                "top_k": zeros(np.int32),
                "top_p": np.ones(num_slots, np.float32),
                "greedy": np.ones(num_slots, bool),
            },
            row=np.full(num_slots, -1, np.int64),
            shared=[[] for _ in range(num_slots)],
            private=[[] for _ in range(num_slots)],
        )

    def _sizes(self, batch: int, n: int, bucket: int) -> tuple[int, int, int, int, int]:
        """(slots, table pages per slot, pages per prompt, full-layer pool pages, ring pool
        pages) of a chunk of `batch` prompts of width `bucket` with n samples each."""
        ps = self.page_size
        num_slots = self.num_slots or batch * n
        per_slot = _cdiv(bucket + self.max_new_tokens - 1, ps)
        prompt_width = _cdiv(bucket, ps)
        full_pages = self.num_pages or 1 + batch * prompt_width + num_slots * per_slot
        return num_slots, per_slot, prompt_width, full_pages, 1 + (num_slots + batch) * self.ring

    def _take_pools(self, full_pages: int, ring_pool: int):
        """The pools of this size from the last call (donated through the calls), or new ones."""
        key = (full_pages, ring_pool)
        pools = self._pools.pop(key, None)
        if pools is None:
            pools = init_pools(self.config, full_pages, ring_pool, self.page_size)
            if self._device is not None:
                pools = jax.device_put(pools, self._device)
        return pools

    def _jit(self, kind: str, spec: PagedSpec, stop: StopArrays | None):
        key = (kind, spec)
        if key not in self._jitted:
            if kind == "prefill":
                fn = functools.partial(prefill_into_pages, self._graphdef, spec=spec)
                self._jitted[key] = jax.jit(fn, donate_argnums=(7,))
            elif kind == "decode":
                fn = functools.partial(decode_steps, self.config, spec=spec)
                self._jitted[key] = jax.jit(fn, donate_argnums=(2,))
            else:
                self._jitted[key] = jax.jit(functools.partial(prepare_weights, self._graphdef))
        return self._jitted[key]


def _copies(copies: tuple[list, list, list, list], num_slots: int, ring: int) -> PageCopies:
    """The admissions' page copies padded to fixed shapes with scratch -> scratch no-ops."""
    src = np.zeros(num_slots, np.int32)
    dst = np.zeros(num_slots, np.int32)
    src[: len(copies[0])] = copies[0]
    dst[: len(copies[1])] = copies[1]
    ring_src = np.zeros((num_slots, ring), np.int32)
    ring_dst = np.zeros((num_slots, ring), np.int32)
    if copies[2]:
        ring_src[: len(copies[2])] = np.stack(copies[2])
        ring_dst[: len(copies[3])] = np.stack(copies[3])
    return PageCopies(src=src, dst=dst, ring_src=ring_src, ring_dst=ring_dst)


@dataclasses.dataclass
class _Buffers:
    """The chunk's output rows on the host, filled call by call."""

    tokens: np.ndarray
    logprobs: np.ndarray
    sampling_logprobs: np.ndarray
    lengths: np.ndarray
    finish_reason: np.ndarray

    @classmethod
    def create(cls, num_rows: int, max_new: int, pad_id: int) -> _Buffers:
        return cls(
            tokens=np.full((num_rows, max_new), pad_id, np.int32),
            logprobs=np.zeros((num_rows, max_new), np.float32),
            sampling_logprobs=np.zeros((num_rows, max_new), np.float32),
            lengths=np.zeros(num_rows, np.int32),
            finish_reason=np.zeros(num_rows, np.int32),
        )

    def record_first(self, first, num_rows: int) -> None:
        self.tokens[:, 0] = first.tokens[:num_rows]
        self.logprobs[:, 0] = first.logprobs[:num_rows]
        self.sampling_logprobs[:, 0] = first.sampling_logprobs[:num_rows]
        done = np.asarray(first.finished[:num_rows])
        self.lengths[done] = 1
        self.finish_reason[done] = first.finish_reason[:num_rows][done]

    def record_steps(self, row: int, step: int, out, s: int) -> None:
        count = int(out.emitted[s].sum())
        self.tokens[row, step : step + count] = out.tokens[s, :count]
        self.logprobs[row, step : step + count] = out.logprobs[s, :count]
        self.sampling_logprobs[row, step : step + count] = out.sampling_logprobs[s, :count]

    def finish(self, row: int, length: int, reason: int) -> None:
        self.lengths[row] = length
        self.finish_reason[row] = reason

    def rollouts(self, prompt_tokens: np.ndarray, prompt_mask: np.ndarray, n: int) -> Rollouts:
        num_rows, max_new = self.tokens.shape
        response_mask = (np.arange(max_new)[None, :] < self.lengths[:, None]).astype(np.int32)
        return Rollouts(
            prompt_tokens=np.repeat(np.asarray(prompt_tokens, np.int32), n, axis=0),
            prompt_mask=np.repeat(np.asarray(prompt_mask, np.int32), n, axis=0),
            tokens=self.tokens,
            response_mask=response_mask,
            lengths=self.lengths,
            finish_reason=self.finish_reason,
            logprobs=self.logprobs,
            sampling_logprobs=self.sampling_logprobs,
            group_ids=np.arange(num_rows, dtype=np.int32) // n,
            samples_per_prompt=n,
        )
