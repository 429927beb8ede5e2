"""The row schema shared by every dataset: what is stored, and how it is read back."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

_SPLIT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Row:
    """One question.

    Attributes:
      question: the question text (no prompt template applied).
      answers: the ground truths (one or more; any of them is correct).
      is_labeled: whether the answers may be used as a training signal (D_L); for unlabeled rows
        (D_U) they exist only for evaluation.
      solution: a worked solution ('' if none), for supervised fine-tuning.
      row_id: where the row came from: "labeled/17" (built-in task) or "aime24.jsonl:3" (file:row).
    """

    question: str
    answers: tuple[str, ...]
    is_labeled: bool
    solution: str
    row_id: str


def features() -> tfds.features.FeaturesDict:
    """The tfds features of a stored row."""
    return tfds.features.FeaturesDict(
        {
            "question": tfds.features.Text(),
            "answers": tfds.features.Sequence(tfds.features.Text()),
            "is_labeled": tfds.features.Scalar(np.bool_),
            "solution": tfds.features.Text(),
            "row_id": tfds.features.Text(),
        }
    )


def to_example(row: Row) -> dict[str, Any]:
    """A `Row` as a tfds example."""
    return {
        "question": row.question,
        "answers": list(row.answers),
        "is_labeled": row.is_labeled,
        "solution": row.solution,
        "row_id": row.row_id,
    }


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def from_record(record: Mapping[str, Any]) -> Row:
    """A record read back through `tfds.data_source` (text arrives as bytes) as a `Row`."""
    return Row(
        question=_text(record["question"]),
        answers=tuple(_text(a) for a in record["answers"]),
        is_labeled=bool(record["is_labeled"]),
        solution=_text(record["solution"]),
        row_id=_text(record["row_id"]),
    )


def check_split_name(name: str, field: str) -> str:
    """tfds split names: a letter, then letters, digits or underscores."""
    if not isinstance(name, str) or not _SPLIT_NAME.match(name):
        raise ValueError(f"{field}: split name must match {_SPLIT_NAME.pattern}, got {name!r}")
    return name
