"""Host-side state of the paged engine: a chunk's shapes, the decode slots, the admissions' page
copies and the chunk's output rows (numpy arrays, filled call by call by
`tempo_jax.sampling.engine`)."""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

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
