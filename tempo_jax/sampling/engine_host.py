"""Host-side state of the paged engine: a chunk's shapes, the decode slots, the admissions' page
copies and the chunk's output rows (numpy arrays, filled call by call by
`tempo_jax.sampling.engine`)."""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from tempo_jax.sampling.page_allocator import SCRATCH_PAGE, PageAllocator
from tempo_jax.sampling.paged_decode import PageCopies, SlotState
from tempo_jax.sampling.params import RowSamplingParams
from tempo_jax.sampling.rollouts import Rollouts


@dataclasses.dataclass(frozen=True)
class ChunkSizes:
    """The shapes of one chunk's engine calls (pages and slots are per row shard).

    Attributes:
      prompts: B, the chunk's prompts padded to a multiple of the row shards.
      slots: decode slots per row shard.
      per_slot: table pages of a row at full length.
      prompt_width: table pages of a prompt.
      full_pages: full-attention pool pages per row shard (its scratch page included).
      ring_pages: sliding-layer ring pages per row shard (scratch, one ring per slot and prompt).
    """

    prompts: int
    slots: int
    per_slot: int
    prompt_width: int
    full_pages: int
    ring_pages: int


@dataclasses.dataclass
class Slots:
    """Host copy of the decode slots of every row shard ([S] = shards x slots per shard, shard i
    holding slots [i S/d, (i + 1) S/d)) plus per-slot bookkeeping."""

    table: np.ndarray  # [S, pages_per_slot] int32, the shard's local page numbers
    ring: np.ndarray  # [S, R]
    lengths: np.ndarray
    last_tokens: np.ndarray
    steps: np.ndarray
    active: np.ndarray
    row_ids: np.ndarray
    window: np.ndarray
    params: dict[str, np.ndarray]
    row: np.ndarray  # [S] row of the chunk in the slot, -1 when free
    order: np.ndarray  # [S] admission count of the slot's row (the latest is preempted first)
    shared: list[list[int]]  # prompt pages the slot's row references
    private: list[list[int]]  # pages the slot's row owns

    @classmethod
    def empty(cls, num_slots: int, per_slot: int, ring: int, window: int) -> Slots:
        zeros = functools.partial(np.zeros, num_slots)
        return cls(
            table=np.zeros((num_slots, per_slot), np.int32),
            ring=np.zeros((num_slots, ring), np.int32),
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
            order=zeros(np.int64),
            shared=[[] for _ in range(num_slots)],
            private=[[] for _ in range(num_slots)],
        )

    def release(self, s: int, allocator: PageAllocator) -> None:
        """Frees slot s and drops its row's page references."""
        allocator.release(self.shared[s] + self.private[s])
        self.shared[s], self.private[s] = [], []
        self.table[s] = SCRATCH_PAGE
        self.row[s] = -1
        self.active[s] = False

    def admit(self, s, row, prompt_length, first, prompt_pages, page_size, first_row, row_params,
              allocator, copies, prompt_ring, saved=None) -> None:  # fmt: skip
        """Puts chunk row `row` into free slot s: tables (its prompt's full pages `prompt_pages`
        shared, a private copy of a partly filled last one), state, and the admission's page
        copies appended to `copies` (src, dst, ring_src, ring_dst). A preempted row (`saved`:
        its steps, last token and stop window) resumes where it was."""
        shared = prompt_length // page_size
        self.shared[s] = prompt_pages[:shared]
        allocator.share(self.shared[s])
        self.private[s] = []
        self.table[s] = SCRATCH_PAGE
        self.table[s, :shared] = self.shared[s]
        if prompt_length % page_size:  # copy on write of the partly filled prompt page
            (page,) = allocator.allocate(1)
            self.private[s].append(page)
            self.table[s, shared] = page
            copies[0].append(prompt_pages[shared])
            copies[1].append(page)
        copies[2].append(prompt_ring)
        copies[3].append(self.ring[s].copy())
        self.row[s] = row
        self.active[s] = True
        self.row_ids[s] = first_row + row
        if saved is None:
            self.lengths[s] = prompt_length
            self.last_tokens[s] = first.tokens[row]
            self.steps[s] = 1
            self.window[s] = first.window[row]
        else:
            self.steps[s], self.last_tokens[s], self.window[s] = saved
            self.lengths[s] = prompt_length + saved[0] - 1
        for name, values in row_params.items():
            self.params[name][s] = values[row]

    def state(self, chosen: np.ndarray, width: int) -> tuple[SlotState, RowSamplingParams]:
        """The device inputs of the slots `chosen` (tables `width` pages wide)."""
        return SlotState(
            full_table=self.table[chosen, :width],
            ring_table=self.ring[chosen],
            lengths=self.lengths[chosen],
            last_tokens=self.last_tokens[chosen],
            steps=self.steps[chosen],
            active=self.active[chosen],
            row_ids=self.row_ids[chosen],
            window=self.window[chosen],
        ), RowSamplingParams(**{k: v[chosen] for k, v in self.params.items()})


@dataclasses.dataclass
class Readmissions:
    """Recompute preemption's host state: what a preempted row keeps (its response tokens and
    log-probs stay in `Buffers`) and the rows a call readmits, whose keys and values
    `paged_decode.refill_pages` recomputes before the call.

    Attributes:
      cap: readmissions per row shard and call (their prefill's batch).
      saved: row -> (steps, last token, stop window) at its preemption.
      slots: per row shard, the slots readmitted for the coming call.
      copies: per row shard, their admission page copies (src, dst, ring_src, ring_dst).
    """

    cap: int
    saved: dict[int, tuple[int, int, np.ndarray]]
    slots: list[list[int]]
    copies: list[tuple[list, list, list, list]]

    @classmethod
    def create(cls, cap: int, shards: int) -> Readmissions:
        return cls(cap, {}, [[] for _ in range(shards)], [([], [], [], []) for _ in range(shards)])

    def save(self, row: int, slots: Slots, s: int) -> None:
        self.saved[row] = (int(slots.steps[s]), int(slots.last_tokens[s]), slots.window[s].copy())

    def clear(self) -> None:
        for i in range(len(self.slots)):
            self.slots[i] = []
            self.copies[i] = ([], [], [], [])

    def batch(self, slots: Slots, prompts: list[np.ndarray], responses: np.ndarray, n: int,
              pad_id: int, page_size: int, max_width: int) -> tuple:  # fmt: skip
        """The refill's inputs for the readmitted slots (`refill_pages`): tokens, mask [d m, W]
        (W: a power of two, at most `max_width`; m: a power of two), full and ring tables,
        start [d m] and the page copies; row shard i's rows at [i m, (i + 1) m).

        Args:
          slots: the host slots (tables already cover every position the refill writes).
          prompts: each prompt's tokens, unpadded; responses: Buffers.tokens [rows, L].
        """
        shards = len(self.slots)
        per = 1 << (max(len(x) for x in self.slots) - 1).bit_length()
        rows = [(i, j, s) for i, chosen in enumerate(self.slots) for j, s in enumerate(chosen)]
        longest = max(int(slots.lengths[s]) for _, _, s in rows)
        width = min(1 << (longest - 1).bit_length(), max_width)
        tokens = np.full((shards * per, width), pad_id, np.int32)
        mask = np.zeros((shards * per, width), np.int32)
        mask[:, -1] = 1  # padding rows: one token, nothing written (start 1)
        start = np.ones(shards * per, np.int32)
        pages = -(-width // page_size)
        full = np.zeros((shards * per, pages), np.int32)
        ring = np.zeros((shards * per, slots.ring.shape[1]), np.int32)
        for i, j, s in rows:
            b, row = i * per + j, int(slots.row[s])
            prompt = prompts[row // n]
            fed = int(slots.lengths[s]) - len(prompt)  # response tokens before the last one
            seq = np.concatenate([prompt, responses[row, :fed]])
            tokens[b, width - len(seq) :] = seq
            mask[b, width - len(seq) :] = 1
            start[b] = len(prompt)
            full[b] = slots.table[s, :pages]
            ring[b] = slots.ring[s]
        return tokens, mask, full, ring, start, page_copies(self.copies, per, ring.shape[1])


def pad_prompts(tokens, mask, rows, n: int, shards: int):
    """A chunk's prompts [B, P] (and their rows' parameters [B n]) padded by repeating the last
    prompt to a multiple of `shards` row shards (the repeats are prefilled, never decoded)."""
    batch = tokens.shape[0]
    padded = -(-batch // shards) * shards
    if padded == batch:
        return tokens, mask, rows
    pick = np.minimum(np.arange(padded), batch - 1)
    row_pick = (pick[:, None] * n + np.arange(n)[None, :]).reshape(-1)
    rows = jax.tree.map(lambda x: np.asarray(x)[row_pick], rows)
    return np.asarray(tokens)[pick], np.asarray(mask)[pick], rows


def first_active(active: np.ndarray, start: int, count: int, size: int) -> np.ndarray:
    """`size` slots of the shard [start, start + count): its active ones first, then idle ones."""
    index = np.arange(start, start + count)
    return np.concatenate([index[active[index]], index[~active[index]]])[:size]


def page_copies(copies: list[tuple[list, list, list, list]], per_shard: int, ring: int):
    """Each row shard's admission copies (`copies[i]`: src, dst, ring_src, ring_dst lists) padded
    to `per_shard` entries with scratch -> scratch no-ops: PageCopies [shards x per_shard]."""
    shards = len(copies)
    src = np.zeros((shards, per_shard), np.int32)
    dst = np.zeros((shards, per_shard), np.int32)
    ring_src = np.zeros((shards, per_shard, ring), np.int32)
    ring_dst = np.zeros((shards, per_shard, ring), np.int32)
    for i, (s, d, rs, rd) in enumerate(copies):
        src[i, : len(s)] = s
        dst[i, : len(d)] = d
        if rs:
            ring_src[i, : len(rs)] = np.stack(rs)
            ring_dst[i, : len(rd)] = np.stack(rd)
    return PageCopies(
        src=src.reshape(-1),
        dst=dst.reshape(-1),
        ring_src=ring_src.reshape(shards * per_shard, ring),
        ring_dst=ring_dst.reshape(shards * per_shard, ring),
    )


@dataclasses.dataclass
class Buffers:
    """The chunk's output rows on the host, filled call by call."""

    tokens: np.ndarray
    logprobs: np.ndarray
    sampling_logprobs: np.ndarray
    lengths: np.ndarray
    finish_reason: np.ndarray

    @classmethod
    def create(cls, num_rows: int, max_new: int, pad_id: int) -> Buffers:
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

    def record_steps(self, row: int, step: int, out, s: int) -> int:
        """Writes slot s's kept tokens of the call from step `step`; returns their count."""
        count = int(out.emitted[s].sum())
        self.tokens[row, step : step + count] = out.tokens[s, :count]
        self.logprobs[row, step : step + count] = out.logprobs[s, :count]
        self.sampling_logprobs[row, step : step + count] = out.sampling_logprobs[s, :count]
        return count

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
