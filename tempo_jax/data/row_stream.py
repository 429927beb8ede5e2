"""An endless, seeded, resumable stream of the rows of one split (grain.MapDataset).

Row k of the stream is `MapDataset.source(split).shuffle(seed).repeat(None)[k * shards + shard]`:
grain's shuffle draws a new permutation each epoch, and a MapDataset is random access, so the whole
iterator state is one integer (`position`). The state is a small JSON dict; restoring it in any
process gives the same next rows. It also records the seed, record count and sharding, and
restoring into a stream built differently is an error rather than a silent jump.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import grain

from tempo_jax.data import records

_STATE_KEYS = ("position", "seed", "num_records", "shuffle", "shard_index", "shard_count")


class RowStream:
    """Rows of one split, reshuffled every epoch, forever.

    Args:
      source: a random-access source of records (`builders.open_split`), or of `Row`s.
      seed: shuffle seed in [0, 2**32).
      shuffle: shuffle (else file order, repeated).
      shard_index: which of `shard_count` disjoint interleaved shards this process reads.
      shard_count: number of shards (e.g. jax.process_count()).
      name: used in error messages.
    """

    def __init__(
        self,
        source: Sequence[Any],
        *,
        seed: int,
        shuffle: bool = True,
        shard_index: int = 0,
        shard_count: int = 1,
        name: str = "rows",
    ):
        self.num_records = len(source)
        if self.num_records == 0:
            raise ValueError(f"{name}: the split is empty")
        if not 0 <= seed < 2**32:
            raise ValueError(f"{name}: seed must be in [0, 2**32), got {seed}")
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"{name}: shard_index {shard_index} not in [0, {shard_count})")
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.shard_index = int(shard_index)
        self.shard_count = int(shard_count)
        self.name = name
        ds = grain.MapDataset.source(source)
        if shuffle:
            ds = ds.shuffle(seed=self.seed)
        self._ds = ds.repeat(None)  # reseeds each epoch: a fresh order per pass
        self.position = 0

    def _global_index(self, position: int) -> int:
        return position * self.shard_count + self.shard_index

    @property
    def epoch(self) -> int:
        """Completed passes over the split (of all shards together)."""
        return self._global_index(self.position) // self.num_records

    def __iter__(self) -> Iterator[records.Row]:
        return self

    def __next__(self) -> records.Row:
        record = self._ds[self._global_index(self.position)]
        self.position += 1
        return record if isinstance(record, records.Row) else records.from_record(record)

    def get_state(self) -> dict[str, Any]:
        """The position and what it is relative to (JSON-serialisable)."""
        return {
            "position": self.position,
            "seed": self.seed,
            "num_records": self.num_records,
            "shuffle": self.shuffle,
            "shard_index": self.shard_index,
            "shard_count": self.shard_count,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Resumes from `get_state()` output.

        Raises:
          ValueError: the state is malformed or belongs to a stream built differently.
        """
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"{self.name}: iterator state lacks {missing}")
        mine = self.get_state()
        differ = [k for k in _STATE_KEYS if k != "position" and state[k] != mine[k]]
        if differ:
            raise ValueError(
                f"{self.name}: iterator state is for a different stream: "
                + ", ".join(f"{k} saved {state[k]!r} vs now {mine[k]!r}" for k in differ)
            )
        position = state["position"]
        if not isinstance(position, int) or isinstance(position, bool) or position < 0:
            raise ValueError(f"{self.name}: bad position {position!r} in iterator state")
        self.position = position
