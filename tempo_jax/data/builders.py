"""tfds builders (offline, array_record): the built-in task and local question files.

Each build lives under `data_dir/<builder>/<config>/<version>/` where the config name is a digest
of everything that determines the rows (task knobs and sizes; file contents, field names, limits),
so a changed config or file builds afresh instead of silently reusing stale rows, and an
unchanged one is reused. Nothing is downloaded; `data_dir` is always explicit (never
~/tensorflow_datasets).

Read back with `open_split(dataset_dir, split)`: a random-access `tfds.data_source` for grain.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds

from tempo_jax.data import arithmetic, records
from tempo_jax.data import row_validation as rv
from tempo_jax.data.local_files import LocalFilesConfig, read_source

_VERSION = tfds.core.Version("1.0.0")
_FILE_FORMAT = "array_record"


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return "h" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclasses.dataclass(eq=False)
class ArithmeticBuilderConfig(tfds.core.BuilderConfig):
    """tfds config carrying the task knobs."""

    task: arithmetic.ArithmeticTaskConfig = dataclasses.field(
        default_factory=arithmetic.ArithmeticTaskConfig
    )


class TempoArithmetic(tfds.core.GeneratorBasedBuilder):
    """The built-in arithmetic task: splits labeled, unlabeled, eval (see `arithmetic`)."""

    VERSION = _VERSION

    def __init__(self, *, task: arithmetic.ArithmeticTaskConfig, data_dir: str, **kwargs):
        config = ArithmeticBuilderConfig(
            name=_digest({"task": dataclasses.asdict(task)}),
            version=_VERSION,
            description=json.dumps(dataclasses.asdict(task), sort_keys=True),
            task=task,
        )
        super().__init__(config=config, data_dir=data_dir, file_format=_FILE_FORMAT, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=records.features())

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in arithmetic.SPLITS}

    def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
        task = self.builder_config.task
        for index, problem in arithmetic.iter_split(task, split):
            row = records.Row(
                question=problem.question,
                answers=(problem.answer,),
                is_labeled=split == "labeled",
                solution=problem.solution,
                row_id=f"{split}/{index}",
            )
            yield f"{index:09d}", records.to_example(row)


@dataclasses.dataclass(eq=False)
class LocalFilesBuilderConfig(tfds.core.BuilderConfig):
    """tfds config carrying the file list and field names."""

    files: LocalFilesConfig | None = None


class TempoLocalFiles(tfds.core.GeneratorBasedBuilder):
    """Questions from local JSONL / Parquet files (see `local_files`).

    Bad rows are skipped and counted at build time (or raise, strict); the counts per file are
    kept in the dataset's metadata under "skipped".
    """

    VERSION = _VERSION

    def __init__(self, *, files: LocalFilesConfig, data_dir: str, **kwargs):
        payload = {
            "sources": [
                {**dataclasses.asdict(s), "sha256": _file_sha256(s.path)}
                if os.path.isfile(s.path)
                else dataclasses.asdict(s)
                for s in files.sources
            ],
            "limits": dataclasses.asdict(files.limits),
            "strict": files.strict,
        }
        config = LocalFilesBuilderConfig(
            name=_digest(payload),
            version=_VERSION,
            description=json.dumps(payload, sort_keys=True),
            files=files,
        )
        self._rows_by_split: dict[str, list[records.Row]] | None = None
        super().__init__(config=config, data_dir=data_dir, file_format=_FILE_FORMAT, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, features=records.features(), metadata=tfds.core.MetadataDict()
        )

    def _read_all(self) -> dict[str, list[records.Row]]:
        files = self.builder_config.files
        by_split: dict[str, list[records.Row]] = {}
        skipped: dict[str, dict[str, int]] = {}
        for source in files.sources:
            rows, skips = read_source(source, files.limits, files.strict)
            skipped[source.path] = dict(skips.counts)
            for split, row in rows:
                by_split.setdefault(split, []).append(row)
        self.info.metadata["skipped"] = skipped
        return by_split

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        by_split = self._read_all()
        return {split: self._generate_examples(rows) for split, rows in by_split.items()}

    def _generate_examples(self, rows: list[records.Row]):
        for i, row in enumerate(rows):
            yield f"{i:09d}", records.to_example(row)


def _prepare(builder: tfds.core.GeneratorBasedBuilder, data_dir: str) -> str:
    try:
        builder.download_and_prepare(download_dir=os.path.join(data_dir, "downloads"))
    except FileExistsError:
        # Another process (a parallel run sharing data_dir) finished the same build first; the
        # directory name is a digest of everything that determines the rows, so its dataset is
        # the one this build would have written.
        if not os.path.isfile(os.path.join(builder.data_dir, "dataset_info.json")):
            raise
    return builder.data_dir


def prepare_arithmetic(task: arithmetic.ArithmeticTaskConfig, data_dir: str) -> str:
    """Builds the built-in task under `data_dir` (reused if built before).

    Returns:
      The dataset directory, for `open_split`.
    """
    return _prepare(TempoArithmetic(task=task, data_dir=os.fspath(data_dir)), os.fspath(data_dir))


def prepare_local_files(files: LocalFilesConfig, data_dir: str) -> str:
    """Builds a dataset of local files under `data_dir` (reused if files and config are unchanged).

    Returns:
      The dataset directory, for `open_split`.

    Raises:
      DataError: a missing file, a file with no valid rows, or (strict) a bad row.
    """
    for source in files.sources:
        if not os.path.isfile(source.path):
            raise rv.DataError(f"{source.path}: no such file")
    return _prepare(TempoLocalFiles(files=files, data_dir=os.fspath(data_dir)), os.fspath(data_dir))


def split_names(dataset_dir: str) -> tuple[str, ...]:
    """The splits a built dataset has."""
    return tuple(sorted(tfds.builder_from_directory(dataset_dir).info.splits.keys()))


def skipped_rows(dataset_dir: str) -> dict[str, dict[str, int]]:
    """Rows skipped at build time: {file: {reason: count}} ({} for the built-in task)."""
    path = os.path.join(dataset_dir, "metadata.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("skipped", {})


def open_split(dataset_dir: str, split: str):
    """A random-access source of one split's records (decoded with `records.from_record`).

    Raises:
      ValueError: the dataset has no such split (the message lists those it has).
    """
    builder = tfds.builder_from_directory(dataset_dir)
    if split not in builder.info.splits:
        raise ValueError(
            f"{dataset_dir}: no split {split!r}; it has {sorted(builder.info.splits.keys())}"
        )
    return builder.as_data_source(split=split)
