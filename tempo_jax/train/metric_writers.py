"""Where metrics go: `metrics.jsonl` (one JSON object per step), TensorBoard, and the console.

Only process 0 writes. JSONL lines are flushed and fsynced per step so that a crash loses nothing
already logged; on resume, lines past the restored step are dropped (`truncate_after`) so the
file reads as if the run never stopped.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np


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

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(self, record: Mapping[str, Any]) -> None:
        line = json.dumps({k: _to_jsonable(v) for k, v in record.items()}, sort_keys=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_after(self, step: int) -> int:
        """Drops records with `step > step` (and a torn last line); returns how many were kept."""
        if not os.path.exists(self.path):
            return 0
        kept = [
            line if line.endswith("\n") else line + "\n"
            for line, record in _records(self.path)
            if record.get("step", -1) <= step
        ]
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        return len(kept)


def _records(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(line, record) for every parseable line of a metrics file."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                yield line, json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash mid-write


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """All records of a metrics file (torn lines skipped)."""
    return [record for _, record in _records(path)]


class TensorBoardWriter:
    """Scalars to TensorBoard event files under `logdir` (tensorboardX, no TensorFlow needed)."""

    def __init__(self, logdir: str):
        from tensorboardX import SummaryWriter  # imported lazily: heavy and optional in tests

        self._writer = SummaryWriter(logdir=logdir, flush_secs=30)

    def write(self, step: int, record: Mapping[str, Any]) -> None:
        for key, value in record.items():
            if key == "step" or isinstance(value, str):
                continue
            try:
                scalar = float(np.asarray(value))
            except (TypeError, ValueError):
                continue
            if math.isfinite(scalar):
                self._writer.add_scalar(key, scalar, global_step=step)

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()


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

    def write(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(record)
        self._tb.write(int(record["step"]), record)
        self._bar.update(record)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        self._bar.close()
