"""Validation of input rows: coercion of each field, skip reasons, counts, strict mode.

A bad row is skipped with a counted, logged reason, or (strict mode) raises a `DataError` that
names the file, the row number (1-based: the line of a JSONL file) and the field.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

# Why a row was skipped. Stable names: they appear in logs and dataset metadata.
MISSING_FIELD = "missing_field"
EMPTY_FIELD = "empty_field"
WRONG_TYPE = "wrong_type"
NON_UTF8 = "non_utf8"
TOO_LONG = "too_long"
BAD_JSON = "bad_json"
NOT_AN_OBJECT = "not_an_object"
REASONS = (MISSING_FIELD, EMPTY_FIELD, WRONG_TYPE, NON_UTF8, TOO_LONG, BAD_JSON, NOT_AN_OBJECT)


class DataError(ValueError):
    """Input data that cannot be used; the message names the file (and row and field)."""


class RowSkipped(Exception):
    """Raised by the coercion functions; becomes a skip or (strict) a `DataError`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class RowLimits:
    """Longest accepted fields, in characters; longer rows are skipped as `too_long`.

    Attributes:
      max_question_chars: a question (after chat-message unwrapping).
      max_answer_chars: each ground-truth answer.
      max_answers: ground truths per row.
      max_solution_chars: a worked solution.
    """

    max_question_chars: int = 32_768
    max_answer_chars: int = 1_024
    max_answers: int = 16
    max_solution_chars: int = 65_536

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 1:
                raise ValueError(f"RowLimits.{f.name} must be >= 1, got {getattr(self, f.name)}")


class SkipLog:
    """Counts skipped rows per reason; raises instead in strict mode.

    Args:
      path: the file being read (named in messages).
      strict: raise `DataError` on the first bad row instead of skipping it.
    """

    def __init__(self, path: str, strict: bool = False):
        self.path = path
        self.strict = strict
        self.counts: collections.Counter[str] = collections.Counter()
        self.first: dict[str, str] = {}

    def skip(self, row_number: int, err: RowSkipped) -> None:
        """Records (or, strict, raises on) one bad row."""
        message = f"{self.path}: row {row_number}: {err.reason}: {err.detail}"
        if self.strict:
            raise DataError(message)
        if err.reason not in self.counts:
            self.first[err.reason] = message
            log.warning("skipping bad row (first of its kind): %s", message)
        self.counts[err.reason] += 1

    def summary(self) -> str:
        """ "reason=count, ..." for messages."""
        return ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())) or "none"


def get_field(row: Mapping[str, Any], name: str) -> Any:
    """`row[name]`, where a dotted name walks nested objects ("reward_model.ground_truth")."""
    value: Any = row
    for i, part in enumerate(name.split(".")):
        if not isinstance(value, Mapping):
            raise RowSkipped(
                WRONG_TYPE,
                f"field {name!r}: {'.'.join(name.split('.')[:i])!r} "
                f"is {type(value).__name__}, not an object",
            )
        if part not in value or value[part] is None:
            raise RowSkipped(MISSING_FIELD, f"field {name!r} is missing")
        value = value[part]
    return value


def _text(value: Any, field: str) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RowSkipped(NON_UTF8, f"field {field!r}: {e}") from None
    if not isinstance(value, str):
        raise RowSkipped(WRONG_TYPE, f"field {field!r} is {type(value).__name__}, not text")
    try:  # lone surrogates (from JSON \udXXX escapes) cannot be written as UTF-8
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RowSkipped(NON_UTF8, f"field {field!r}: {e}") from None
    return value


def _check_length(text: str, limit: int, field: str) -> None:
    if len(text) > limit:
        raise RowSkipped(TOO_LONG, f"field {field!r} has {len(text)} characters (limit {limit})")


def coerce_question(value: Any, field: str, limits: RowLimits) -> str:
    """Question text; a list of chat messages gives the content of its last user message."""
    if isinstance(value, list) and value and all(isinstance(m, Mapping) for m in value):
        users = [m for m in value if m.get("role") == "user"]
        if not users or "content" not in users[-1]:
            raise RowSkipped(WRONG_TYPE, f"field {field!r}: messages without a user content")
        value = users[-1]["content"]
    text = _text(value, field)
    if not text.strip():
        raise RowSkipped(EMPTY_FIELD, f"field {field!r} is empty")
    _check_length(text, limits.max_question_chars, field)
    return text


def _scalar_answer(value: Any, field: str) -> str:
    if isinstance(value, bool):
        raise RowSkipped(WRONG_TYPE, f"field {field!r} is a boolean, not an answer")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RowSkipped(WRONG_TYPE, f"field {field!r} is {value}, not an answer")
        return repr(value)
    return _text(value, field)


def coerce_answers(value: Any, field: str, limits: RowLimits) -> tuple[str, ...]:
    """Ground truths: text or a number, or a non-empty list of them."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise RowSkipped(EMPTY_FIELD, f"field {field!r} is an empty list")
    if len(items) > limits.max_answers:
        raise RowSkipped(
            TOO_LONG, f"field {field!r} has {len(items)} answers (limit {limits.max_answers})"
        )
    answers = []
    for item in items:
        if isinstance(item, (list, tuple, Mapping)):
            raise RowSkipped(WRONG_TYPE, f"field {field!r} holds a {type(item).__name__}")
        text = _scalar_answer(item, field).strip()
        if not text:
            raise RowSkipped(EMPTY_FIELD, f"field {field!r} has an empty answer")
        _check_length(text, limits.max_answer_chars, field)
        answers.append(text)
    return tuple(answers)


def coerce_flag(value: Any, field: str) -> bool:
    """A boolean, or the integers 0 / 1."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise RowSkipped(WRONG_TYPE, f"field {field!r} is {value!r}, not a boolean")


def coerce_solution(value: Any, field: str, limits: RowLimits) -> str:
    """A worked solution (text, may not be empty)."""
    text = _text(value, field)
    if not text.strip():
        raise RowSkipped(EMPTY_FIELD, f"field {field!r} is empty")
    _check_length(text, limits.max_solution_chars, field)
    return text
