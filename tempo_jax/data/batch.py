"""Prompt batches: left-padded token arrays for jit, Python-side text and answers beside them.

Only `PromptBatch.arrays` (a pytree of arrays) ever crosses a jit boundary; strings stay on the
host. The answers of unlabeled rows live in a `HiddenAnswers` box that a trainer has no reason to
open: the only way in is `PromptBatch.evaluation_answers()`, named for what it is for. Replacing
the box (e.g. with corrupted answers) cannot change anything a trainer computes from the batch
otherwise, which is how a test can prove D_U answers never reach training.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from flax import struct

from tempo_jax.data.records import Row

OVERLONG_POLICIES = ("truncate", "drop")


@struct.dataclass
class PromptArrays:
    """The arrays of a prompt batch (the part that goes into jitted code).

    Attributes:
      prompt_tokens: [B, P] int32, left-padded with the tokenizer's pad id.
      prompt_mask: [B, P] int32, 1 on prompt tokens, 0 on padding.
      is_labeled: [B] bool, True for D_L rows (their reward may use ground truth).
    """

    prompt_tokens: np.ndarray
    prompt_mask: np.ndarray
    is_labeled: np.ndarray


class HiddenAnswers:
    """Ground truths of unlabeled rows, for evaluation only (see the module docstring).

    Its repr shows no answers, and it has no iteration or indexing: reading it takes an explicit
    `reveal_for_evaluation()`.
    """

    __slots__ = ("_answers",)

    def __init__(self, answers: Sequence[tuple[str, ...] | None]):
        self._answers = tuple(answers)

    def reveal_for_evaluation(self) -> tuple[tuple[str, ...] | None, ...]:
        """Per row: the unlabeled row's answers, None on labeled rows."""
        return self._answers

    def __repr__(self) -> str:
        hidden = sum(a is not None for a in self._answers)
        return f"HiddenAnswers({hidden} rows hidden)"


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """B prompts.

    Attributes:
      arrays: the token arrays (`PromptArrays`).
      questions: [B] question texts (no template).
      row_ids: [B] where each row came from.
      labeled_answers: [B] the answers of labeled rows, None on unlabeled rows: the only
        ground truth a trainer may use.
      hidden_answers: the unlabeled rows' answers (evaluation only).
    """

    arrays: PromptArrays
    questions: tuple[str, ...]
    row_ids: tuple[str, ...]
    labeled_answers: tuple[tuple[str, ...] | None, ...]
    hidden_answers: HiddenAnswers

    @property
    def prompt_tokens(self) -> np.ndarray:
        """[B, P] int32 left-padded prompt tokens."""
        return self.arrays.prompt_tokens

    @property
    def prompt_mask(self) -> np.ndarray:
        """[B, P] int32 prompt mask."""
        return self.arrays.prompt_mask

    @property
    def is_labeled(self) -> np.ndarray:
        """[B] bool."""
        return self.arrays.is_labeled

    @property
    def batch_size(self) -> int:
        """B."""
        return int(self.arrays.prompt_tokens.shape[0])

    def pad_to(self, size: int) -> PromptBatch:
        """The batch with its last prompt repeated up to `size` rows (fixed compiled shapes for
        a short last batch; callers drop the repeats' outputs)."""
        extra = size - self.batch_size
        if extra < 0:
            raise ValueError(f"cannot pad a batch of {self.batch_size} prompts to {size}")
        idx = np.concatenate([np.arange(self.batch_size), np.full(extra, self.batch_size - 1)])
        hidden = self.hidden_answers.reveal_for_evaluation()
        return PromptBatch(
            arrays=PromptArrays(
                prompt_tokens=self.prompt_tokens[idx],
                prompt_mask=self.prompt_mask[idx],
                is_labeled=self.is_labeled[idx],
            ),
            questions=tuple(self.questions[i] for i in idx),
            row_ids=tuple(self.row_ids[i] for i in idx),
            labeled_answers=tuple(self.labeled_answers[i] for i in idx),
            hidden_answers=HiddenAnswers([hidden[i] for i in idx]),
        )

    def evaluation_answers(self) -> tuple[tuple[str, ...], ...]:
        """Every row's ground truths, unlabeled rows included. For evaluation code only."""
        hidden = self.hidden_answers.reveal_for_evaluation()
        out = []
        for labeled, unlabeled in zip(self.labeled_answers, hidden, strict=True):
            answers = labeled if labeled is not None else unlabeled
            assert answers is not None  # every row carries answers in one of the two places
            out.append(answers)
        return tuple(out)


def fit_prompt(
    ids: Sequence[int], max_prompt_length: int, overlong: str
) -> tuple[list[int] | None, bool]:
    """Applies the overlong-prompt policy to one prompt.

    Returns:
      (ids, truncated): the kept ids (None if dropped) and whether they were left-truncated
      (the first tokens removed, keeping the end where the question and generation prompt are).
    """
    if overlong not in OVERLONG_POLICIES:
        raise ValueError(f"overlong must be one of {OVERLONG_POLICIES}, got {overlong!r}")
    ids = list(ids)
    if len(ids) <= max_prompt_length:
        return ids, False
    if overlong == "drop":
        return None, False
    return ids[len(ids) - max_prompt_length :], True


def collate(
    rows: Sequence[Row],
    token_ids: Sequence[Sequence[int]],
    *,
    is_labeled: Sequence[bool],
    max_prompt_length: int,
    pad_id: int,
    pad_multiple: int = 0,
) -> PromptBatch:
    """Left-pads prompts into a batch.

    Args:
      rows: [B] the rows.
      token_ids: [B] their prompt ids, each at most `max_prompt_length` long and non-empty.
      is_labeled: [B] the role each row plays in this batch.
      max_prompt_length: the width P when `pad_multiple` is 0.
      pad_id: the padding id.
      pad_multiple: > 0: P is the longest prompt rounded up to a multiple of this (capped at
        `max_prompt_length`): fewer wasted columns, at most max_prompt_length/pad_multiple
        distinct shapes to compile.

    Returns:
      The batch; `prompt_tokens[i, P - len_i:]` holds row i's ids.
    """
    if not rows or not len(rows) == len(token_ids) == len(is_labeled):
        raise ValueError(
            f"collate needs equally many rows, ids and flags, got "
            f"{len(rows)}, {len(token_ids)}, {len(is_labeled)}"
        )
    longest = max(len(t) for t in token_ids)
    if longest > max_prompt_length or min(len(t) for t in token_ids) == 0:
        raise ValueError(
            f"prompt lengths must be in [1, {max_prompt_length}], got {longest} / empty"
        )
    width = max_prompt_length
    if pad_multiple > 0:
        width = min(max_prompt_length, math.ceil(longest / pad_multiple) * pad_multiple)
    tokens = np.full((len(rows), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), width), dtype=np.int32)
    for i, ids in enumerate(token_ids):
        tokens[i, width - len(ids) :] = ids
        mask[i, width - len(ids) :] = 1
    flags = np.asarray(is_labeled, dtype=bool)
    pairs = list(zip(rows, flags, strict=True))
    return PromptBatch(
        arrays=PromptArrays(prompt_tokens=tokens, prompt_mask=mask, is_labeled=flags),
        questions=tuple(r.question for r in rows),
        row_ids=tuple(r.row_id for r in rows),
        labeled_answers=tuple(r.answers if f else None for r, f in pairs),
        hidden_answers=HiddenAnswers([None if f else r.answers for r, f in pairs]),
    )
