"""Local question files (JSONL or Parquet) as validated rows.

Field names are configurable, so files are used as users download them, e.g.

    DAPO-Math-17k (processed):  LocalSource(path, split="labeled", question_field="prompt",
                                            answer_field="solution")
    DAPO-Math-17k (original):   question_field="prompt" (a list of chat messages: the last user
                                message is the question), answer_field="reward_model.ground_truth"
    AIME 2024 / 2025:           LocalSource(path, split="unlabeled", question_field="problem",
                                            answer_field="answer")
    one mixed file:             LocalSource(path, is_labeled_field="is_labeled")  (rows are routed
                                to the "labeled" / "unlabeled" splits by their flag)
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

from tempo_jax.data import row_validation as rv
from tempo_jax.data.records import Row, check_split_name

_FORMATS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}


@dataclasses.dataclass(frozen=True)
class LocalSource:
    """One file and how to read it.

    Attributes:
      path: a .jsonl (one JSON object per line) or .parquet file.
      split: the split its rows go to; '' routes each row by `is_labeled_field` to "labeled" or
        "unlabeled".
      question_field: the question (text, or a list of chat messages); dots walk nested objects.
      answer_field: the ground truth (text, a number, or a list of them).
      is_labeled_field: a per-row boolean flag ('' = rows are labeled iff split == "labeled").
      solution_field: a worked solution for SFT ('' = none).
      format: "jsonl" | "json" (one array of objects, or JSON lines) | "parquet" ('' = from the
        file extension: .jsonl, .json, .parquet).
      name: prefix of the row ids, "<name>:<row>" ('' = the file's base name).
    """

    path: str
    split: str = ""
    question_field: str = "question"
    answer_field: str = "answer"
    is_labeled_field: str = ""
    solution_field: str = ""
    format: str = ""
    name: str = ""

    def __post_init__(self):
        if not self.path:
            raise ValueError("LocalSource.path is empty")
        if self.split:
            check_split_name(self.split, f"LocalSource({self.path}).split")
        elif not self.is_labeled_field:
            raise ValueError(
                f"LocalSource({self.path}): give a split, or an is_labeled_field to route rows by"
            )
        if not self.question_field or not self.answer_field:
            raise ValueError(
                f"LocalSource({self.path}): question_field and answer_field are needed"
            )
        if self.format not in ("", *_FORMATS.values()):
            raise ValueError(
                f"LocalSource({self.path}).format must be one of {sorted(set(_FORMATS.values()))}, "
                f"got {self.format!r}"
            )

    def row_id_prefix(self) -> str:
        """`name`, else the file's base name."""
        return self.name or os.path.basename(self.path)

    def file_format(self) -> str:
        """The format in use: `format`, else from the extension."""
        if self.format:
            return self.format
        ext = os.path.splitext(self.path)[1].lower()
        if ext not in _FORMATS:
            raise ValueError(
                f"{self.path}: cannot tell the format from extension {ext!r}; "
                "set LocalSource.format to 'jsonl', 'json' or 'parquet'"
            )
        return _FORMATS[ext]


def _jsonl_rows(path: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object or RowSkipped) per non-blank line."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield number, rv.RowSkipped(rv.NON_UTF8, f"line is not UTF-8: {e}")
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                yield number, rv.RowSkipped(rv.BAD_JSON, str(e))


def _json_rows(path: str) -> Iterator[tuple[int, Any]]:
    """A .json file: one array of objects (rows numbered from 1), else read as JSON lines."""
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    if not head.startswith(b"["):
        yield from _jsonl_rows(path)
        return
    try:
        with open(path, encoding="utf-8") as f:
            items = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        # One document: a bad byte or bracket spoils the whole file, not one row.
        raise rv.DataError(f"{path}: not a readable JSON array: {e}") from e
    yield from enumerate(items, start=1)


def _parquet_rows(path: str) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq  # only Parquet users pay for the import

    try:
        reader = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid family
        raise rv.DataError(f"{path}: not a readable Parquet file: {e}") from e
    number = 0
    for batch in reader.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            number += 1
            yield number, row


def read_objects(path: str, file_format: str) -> Iterator[tuple[int, Any]]:
    """(1-based row number, parsed object or `RowSkipped`) of each row of a "jsonl" | "json" |
    "parquet" file."""
    return {"jsonl": _jsonl_rows, "json": _json_rows, "parquet": _parquet_rows}[file_format](path)


def _row(source: LocalSource, obj: Any, number: int, limits: rv.RowLimits) -> tuple[str, Row]:
    if not isinstance(obj, Mapping):
        raise rv.RowSkipped(rv.NOT_AN_OBJECT, f"expected an object, got {type(obj).__name__}")
    question = rv.coerce_question(
        rv.get_field(obj, source.question_field), source.question_field, limits
    )
    answers = rv.coerce_answers(rv.get_field(obj, source.answer_field), source.answer_field, limits)
    if source.is_labeled_field:
        is_labeled = rv.coerce_flag(
            rv.get_field(obj, source.is_labeled_field), source.is_labeled_field
        )
    else:
        is_labeled = source.split == "labeled"
    split = source.split or ("labeled" if is_labeled else "unlabeled")
    solution = ""
    if source.solution_field:
        solution = rv.coerce_solution(
            rv.get_field(obj, source.solution_field), source.solution_field, limits
        )
    row_id = f"{source.row_id_prefix()}:{number}"
    return split, Row(question, answers, is_labeled, solution, row_id)


def read_source(
    source: LocalSource, limits: rv.RowLimits | None = None, strict: bool = False
) -> tuple[list[tuple[str, Row]], rv.SkipLog]:
    """Reads and validates every row of one file.

    Args:
      source: the file and its field names.
      limits: longest accepted fields (None = `RowLimits()` defaults).
      strict: raise `DataError` (naming file, row and field) on the first bad row.

    Returns:
      ([(split, row), ...] in file order, the skip log with counts per reason).

    Raises:
      DataError: the file is missing or unreadable, has no valid rows, or (strict) a bad row.
    """
    limits = limits if limits is not None else rv.RowLimits()
    path = source.path
    if not os.path.isfile(path):
        raise rv.DataError(f"{path}: no such file")
    skips = rv.SkipLog(path, strict=strict)
    rows = []
    for number, obj in read_objects(path, source.file_format()):
        try:
            if isinstance(obj, rv.RowSkipped):
                raise obj
            rows.append(_row(source, obj, number, limits))
        except rv.RowSkipped as err:
            skips.skip(number, err)
    if not rows:
        raise rv.DataError(f"{path}: no valid rows (skipped: {skips.summary()})")
    if skips.counts:
        rv.log.warning("%s: kept %d rows, skipped %s", path, len(rows), skips.summary())
    return rows, skips


@dataclasses.dataclass(frozen=True)
class LocalFilesConfig:
    """A dataset made of local files.

    Attributes:
      sources: the files; several may feed one split (e.g. AIME 2024 and 2025 as "unlabeled").
      limits: longest accepted fields.
      strict: raise on the first bad row instead of skipping it.
    """

    sources: tuple[LocalSource, ...]
    limits: rv.RowLimits = dataclasses.field(default_factory=rv.RowLimits)
    strict: bool = False

    def __post_init__(self):
        if not self.sources:
            raise ValueError("LocalFilesConfig.sources is empty")
        object.__setattr__(self, "sources", tuple(self.sources))
        seen: dict[str, str] = {}
        for source in self.sources:
            prefix = source.row_id_prefix()
            if prefix in seen:
                # Row ids identify rows in logs and evaluation; two files must not share them.
                raise ValueError(
                    f"LocalFilesConfig: {seen[prefix]} and {source.path} would share row ids "
                    f"'{prefix}:N'; give one a distinct LocalSource.name"
                )
            seen[prefix] = source.path
