"""Batch streams for TEMPO: D_L batches, D_U batches, and mixed batches (the authors' code path).

A `BatchStream` draws each batch from one or more parts (a `RowStream` and how many rows of each
batch it fills), formats and tokenizes prompts, applies the overlong policy (left-truncate, as the
authors do, or drop and draw the next row), counts what it did, and left-pads the result. Its
state is a JSON-serialisable dict (row positions and counters), restored exactly in a new process.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

from tempo_jax.data.batch import OVERLONG_POLICIES, PromptBatch, collate, fit_prompt
from tempo_jax.data.prompt import PromptFormatter
from tempo_jax.data.row_stream import RowStream

LABELED, UNLABELED = "labeled", "unlabeled"
_STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    """Batching of prompts.

    Attributes:
      batch_size: B, prompts per batch (per process when sharded).
      max_prompt_length: P, the longest prompt in tokens.
      overlong: "truncate" (keep the last P tokens, as the authors) or "drop" (skip the row).
      labeled_fraction: mixed streams: the share of each batch drawn from D_L
        (round(B * fraction) rows).
      seed: shuffle seed; each part shuffles with a seed derived from it and the part's name.
      shuffle: shuffle rows (else file order, repeated).
      pad_multiple: 0 pads every batch to P; k > 0 pads to the longest prompt rounded up to k.
    """

    batch_size: int = 8
    max_prompt_length: int = 64
    overlong: str = "truncate"
    labeled_fraction: float = 0.5
    seed: int = 0
    shuffle: bool = True
    pad_multiple: int = 0

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"StreamConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.max_prompt_length < 1:
            raise ValueError(
                f"StreamConfig.max_prompt_length must be >= 1, got {self.max_prompt_length}"
            )
        if self.overlong not in OVERLONG_POLICIES:
            raise ValueError(
                f"StreamConfig.overlong must be one of {OVERLONG_POLICIES}, got {self.overlong!r}"
            )
        if not 0.0 <= self.labeled_fraction <= 1.0:
            raise ValueError(
                f"StreamConfig.labeled_fraction must be in [0, 1], got {self.labeled_fraction}"
            )
        if self.pad_multiple < 0:
            raise ValueError(f"StreamConfig.pad_multiple must be >= 0, got {self.pad_multiple}")

    def labeled_rows_per_batch(self) -> int:
        """Rows of D_L in each mixed batch."""
        k = round(self.batch_size * self.labeled_fraction)
        if 0.0 < self.labeled_fraction < 1.0 and k in (0, self.batch_size):
            raise ValueError(
                f"StreamConfig.labeled_fraction={self.labeled_fraction} with batch_size="
                f"{self.batch_size} leaves one side empty; use a larger batch or 0 / 1"
            )
        return k


def part_seed(seed: int, name: str) -> int:
    """The shuffle seed of part `name` (D_L and D_U are shuffled independently)."""
    return (int(seed) ^ zlib.crc32(name.encode("utf-8"))) % 2**32


@dataclasses.dataclass
class _Part:
    name: str
    rows: RowStream
    per_batch: int
    labeled: bool
    truncated: int = 0
    dropped: int = 0
    consecutive_drops: int = 0


class BatchStream:
    """Endless prompt batches from one or more parts.

    Args:
      parts: (name, rows, rows per batch, labeled) for each part, in batch order.
      formatter: prompt template + tokenizer.
      config: batching config (batch_size must equal the sum of rows per batch).
    """

    def __init__(
        self,
        parts: Sequence[tuple[str, RowStream, int, bool]],
        formatter: PromptFormatter,
        config: StreamConfig,
    ):
        self._parts = [_Part(n, r, k, lab) for n, r, k, lab in parts if k > 0]
        if sum(p.per_batch for p in self._parts) != config.batch_size:
            raise ValueError(
                f"parts fill {sum(p.per_batch for p in self._parts)} rows per batch, "
                f"batch_size is {config.batch_size}"
            )
        if len({p.name for p in self._parts}) != len(self._parts):
            raise ValueError(f"part names must differ: {[p.name for p in self._parts]}")
        self.formatter = formatter
        self.config = config
        self.batches = 0

    def __iter__(self) -> Iterator[PromptBatch]:
        return self

    def _draw(self, part: _Part):
        """The next row of `part` that survives the overlong policy, with its prompt ids."""
        while True:
            row = next(part.rows)
            if part.labeled and not row.is_labeled:
                # The answers of an unlabeled row must never become a training signal.
                raise ValueError(
                    f"{part.name}: row {row.row_id} is unlabeled but the part is D_L; "
                    "point the labeled stream at a labeled split"
                )
            ids, truncated = fit_prompt(
                self.formatter.encode(row.question),
                self.config.max_prompt_length,
                self.config.overlong,
            )
            if ids is None:
                part.dropped += 1
                part.consecutive_drops += 1
                if part.consecutive_drops >= part.rows.num_records:
                    raise ValueError(
                        f"{part.name}: {part.consecutive_drops} prompts in a row are longer than "
                        f"max_prompt_length={self.config.max_prompt_length}; nothing fits"
                    )
                continue
            part.consecutive_drops = 0
            part.truncated += int(truncated)
            return row, ids

    def __next__(self) -> PromptBatch:
        rows, ids, flags = [], [], []
        for part in self._parts:
            for _ in range(part.per_batch):
                row, row_ids = self._draw(part)
                rows.append(row)
                ids.append(row_ids)
                flags.append(part.labeled)
        self.batches += 1
        return collate(
            rows,
            ids,
            is_labeled=flags,
            max_prompt_length=self.config.max_prompt_length,
            pad_id=self.formatter.tokenizer.pad_id,
            pad_multiple=self.config.pad_multiple,
        )

    def stats(self) -> dict[str, int]:
        """Counters: batches, and per part rows read, prompts truncated and dropped."""
        out = {"batches": self.batches}
        for p in self._parts:
            out[f"{p.name}/rows_read"] = p.rows.position
            out[f"{p.name}/truncated"] = p.truncated
            out[f"{p.name}/dropped"] = p.dropped
        return out

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable state: row positions and counters."""
        return {
            "version": _STATE_VERSION,
            "batches": self.batches,
            "parts": {
                p.name: {
                    "rows": p.rows.get_state(),
                    "truncated": p.truncated,
                    "dropped": p.dropped,
                    "consecutive_drops": p.consecutive_drops,
                }
                for p in self._parts
            },
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Resumes from `get_state()` output (possibly from another process)."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"batch stream state version {state.get('version')!r} unsupported")
        saved = state.get("parts", {})
        names = sorted(p.name for p in self._parts)
        if sorted(saved) != names:
            raise ValueError(f"batch stream state has parts {sorted(saved)}, stream has {names}")
        for p in self._parts:
            p.rows.set_state(saved[p.name]["rows"])
            p.truncated = int(saved[p.name]["truncated"])
            p.dropped = int(saved[p.name]["dropped"])
            p.consecutive_drops = int(saved[p.name]["consecutive_drops"])
        self.batches = int(state["batches"])


def _rows(source, config: StreamConfig, name: str, shard_index: int, shard_count: int):
    return RowStream(
        source,
        seed=part_seed(config.seed, name),
        shuffle=config.shuffle,
        shard_index=shard_index,
        shard_count=shard_count,
        name=name,
    )


def labeled_batches(
    source, formatter: PromptFormatter, config: StreamConfig, *, shard_index=0, shard_count=1
) -> BatchStream:
    """D_L batches: every row labeled (E-step / SFT / RLVR)."""
    rows = _rows(source, config, LABELED, shard_index, shard_count)
    return BatchStream([(LABELED, rows, config.batch_size, True)], formatter, config)


def unlabeled_batches(
    source, formatter: PromptFormatter, config: StreamConfig, *, shard_index=0, shard_count=1
) -> BatchStream:
    """D_U batches: every row unlabeled, answers hidden (M-step, evaluation)."""
    rows = _rows(source, config, UNLABELED, shard_index, shard_count)
    return BatchStream([(UNLABELED, rows, config.batch_size, False)], formatter, config)


def mixed_batches(
    labeled_source,
    unlabeled_source,
    formatter: PromptFormatter,
    config: StreamConfig,
    *,
    shard_index=0,
    shard_count=1,
) -> BatchStream:
    """Batches of round(B * labeled_fraction) D_L rows, then D_U rows, flagged by `is_labeled`.

    The two parts shuffle with the same seeds as `labeled_batches` / `unlabeled_batches`.
    """
    k = config.labeled_rows_per_batch()
    return BatchStream(
        [
            (LABELED, _rows(labeled_source, config, LABELED, shard_index, shard_count), k, True),
            (
                UNLABELED,
                _rows(unlabeled_source, config, UNLABELED, shard_index, shard_count),
                config.batch_size - k,
                False,
            ),
        ],
        formatter,
        config,
    )


def one_pass_batches(
    source, formatter: PromptFormatter, config: StreamConfig, *, name: str = "eval"
) -> Iterator[PromptBatch]:
    """Every row of a split once, in stored order, as unlabeled batches (for evaluation).

    The overlong policy applies as in training streams (dropped rows are not evaluated); the last
    batch holds the remainder and may be smaller than `batch_size`.
    """
    rows = RowStream(source, seed=0, shuffle=False, name=name)
    pending_rows, pending_ids = [], []
    for _ in range(rows.num_records):
        row = next(rows)
        ids, _ = fit_prompt(
            formatter.encode(row.question), config.max_prompt_length, config.overlong
        )
        if ids is None:
            continue
        pending_rows.append(row)
        pending_ids.append(ids)
        if len(pending_rows) == config.batch_size:
            yield _unlabeled_batch(pending_rows, pending_ids, formatter, config)
            pending_rows, pending_ids = [], []
    if pending_rows:
        yield _unlabeled_batch(pending_rows, pending_ids, formatter, config)


def _unlabeled_batch(rows, ids, formatter: PromptFormatter, config: StreamConfig) -> PromptBatch:
    return collate(
        rows,
        ids,
        is_labeled=[False] * len(rows),
        max_prompt_length=config.max_prompt_length,
        pad_id=formatter.tokenizer.pad_id,
        pad_multiple=config.pad_multiple,
    )
