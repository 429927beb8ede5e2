"""Where metrics go: `metrics.jsonl` (one JSON object per step), TensorBoard, and the console.

Only process 0 writes. Every file goes through `tempo_jax.train.storage`, so a workdir may be a
local directory or a bucket (`gs://...`). JSONL lines are durable per step (fsynced locally, the
object rewritten on a bucket) so that a crash loses nothing already logged; on resume, records
past the restored step are dropped from metrics.jsonl and from the TensorBoard event files
(`MetricWriters.truncate_after`), so both read as if the run never stopped: one value per step.
Non-finite values are written as such (NaN / inf in JSON and in TensorBoard), never dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from tempo_jax.train import event_files, storage


def _to_jsonable(value: Any) -> Any:
    """Scalars (numpy / jax 0-d arrays included) to plain Python floats, ints, str or bool."""
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    arr = np.asarray(value)
    if arr.ndim == 0:
        if arr.dtype.kind in "iu":
            return int(arr)
        if arr.dtype.kind == "b":
            return bool(arr)
        f = float(arr)
        # JSON has no NaN/inf; keep them readable and parseable by json.loads (allow_nan default).
        return f
    raise TypeError(f"metric value must be a scalar, got shape {arr.shape}")


class JsonlWriter:
    """Appends one JSON object per call to `path`."""

    def __init__(self, path: storage.PathLike):
        self.path = storage.absolute(path)

    def write(self, record: Mapping[str, Any]) -> None:
        line = json.dumps({k: _to_jsonable(v) for k, v in record.items()}, sort_keys=True)
        storage.append(self.path, line + "\n")

    def truncate_after(self, step: int, key: str = "step") -> int:
        """Drops records whose `key` is past `step` (and a torn last line); returns how many were
        kept."""
        if not storage.exists(self.path):
            return 0
        kept = [line + "\n" for line, record in _records(self.path) if record.get(key, -1) <= step]
        storage.write_atomic(self.path, "".join(kept))
        return len(kept)


def _records(path: storage.PathLike) -> Iterator[tuple[str, dict[str, Any]]]:
    """(line, record) for every parseable line of a metrics file."""
    for line in storage.read_text(path).split("\n"):
        try:
            yield line, json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a crash mid-write


def read_jsonl(path: storage.PathLike) -> list[dict[str, Any]]:
    """All records of a metrics file (torn lines skipped)."""
    return [record for _, record in _records(path)]


class TensorBoardWriter:
    """Scalars to TensorBoard event files under `logdir` (`event_files`); NaN and inf are written
    as such, and each step's scalars are durable once `write` returns. The event file is opened
    at the first write, so that `truncate_after` on resume rewrites only the files of earlier
    runs."""

    def __init__(self, logdir: storage.PathLike):
        self.logdir = storage.absolute(logdir)
        self._writer: event_files.EventFileWriter | None = None

    def truncate_after(self, step: int) -> int:
        """Drops the events of steps after `step` from earlier runs' event files (a resumed run
        writes them again); returns how many were dropped."""
        if self._writer is not None:
            raise RuntimeError("truncate_after must come before the first write")
        return event_files.purge_after(self.logdir, step)

    def write(self, step: int, record: Mapping[str, Any]) -> None:
        scalars = {}
        for key, value in record.items():
            if key == "step" or isinstance(value, str):
                continue
            try:
                scalars[key] = float(np.asarray(value))
            except (TypeError, ValueError):
                continue
        if self._writer is None:
            self._writer = event_files.EventFileWriter(self.logdir)
        self._writer.add_scalars(step, scalars)


class ProgressBar:
    """Console progress with phase, step, a few key metrics and ETA (tqdm)."""

    def __init__(self, total: int, initial: int = 0, keys: tuple[str, ...] = (), enabled=True):
        from tqdm import tqdm

        self._keys = keys
        self._bar = tqdm(
            total=total, initial=initial, disable=not enabled, dynamic_ncols=True, unit="step"
        )

    def update(self, record: Mapping[str, Any]) -> None:
        postfix = {"phase": record.get("phase", "")}
        for key in self._keys:
            if key in record and record[key] is not None:
                postfix[key.split("/")[-1]] = f"{float(record[key]):.3g}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


class MetricWriters:
    """All sinks of one run. Non-zero processes get a writer that writes nothing."""

    def __init__(
        self,
        workdir: str,
        total_steps: int,
        initial_step: int = 0,
        progress_keys: tuple[str, ...] = (),
        is_main_process: bool = True,
        progress: bool = True,
    ):
        self.enabled = is_main_process
        self.jsonl = JsonlWriter(os.path.join(workdir, "metrics.jsonl"))
        self._tb = TensorBoardWriter(os.path.join(workdir, "tensorboard")) if self.enabled else None
        self._bar = ProgressBar(
            total_steps, initial_step, progress_keys, enabled=self.enabled and progress
        )

    def truncate_after(self, step: int) -> None:
        """On resume (or a fresh start, step -1): drops the records past `step` that a run which
        did not reach its next checkpoint left in metrics.jsonl and TensorBoard."""
        if not self.enabled:
            return
        self.jsonl.truncate_after(step)
        self._tb.truncate_after(step)

    def write(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(record)
        self._tb.write(int(record["step"]), record)
        self._bar.update(record)

    def close(self) -> None:
        self._bar.close()
