"""From sampler output to host arrays the steps and graders use, with static shapes.

The sampler pads prompts to a bucket; the train steps are compiled for one sequence width, so
every rollout batch is re-padded here to `P = max_prompt_length` prompt slots and `L =
max_new_tokens` response slots. Texts are decoded on the host for grading and clustering.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from tempo_jax.data.tokenizer import Tokenizer
from tempo_jax.rewards.boxed import extract_boxed
from tempo_jax.sampling import Rollouts, left_pad_to


@dataclasses.dataclass
class RolloutRows:
    """N sampled rows on the host. Shapes: S = P + L slots.

    Attributes:
      tokens: [N, S] int32 left-padded prompt then response.
      attention_mask: [N, S] bool.
      response_mask: [N, L] bool.
      group_ids: [N] int32 prompt index within this batch.
      is_labeled: [N] bool (the prompt's role).
      lengths: [N] response lengths.
      finish_reason: [N] sampler finish codes.
      texts: N decoded responses (without the EOS token).
      answers: N extracted final answers (None: no box).
      ground_truths: N ground truths for labeled rows, None for unlabeled rows.
    """

    tokens: np.ndarray
    attention_mask: np.ndarray
    response_mask: np.ndarray
    group_ids: np.ndarray
    is_labeled: np.ndarray
    lengths: np.ndarray
    finish_reason: np.ndarray
    texts: list[str]
    answers: list[str | None]
    ground_truths: list[tuple[str, ...] | None]

    @property
    def num_rows(self) -> int:
        return self.tokens.shape[0]

    def take_rows(self, rows) -> RolloutRows:
        """Rows by index / slice (group ids unchanged)."""
        idx = np.arange(self.num_rows)[rows]

        def taken(name: str):
            x = getattr(self, name)
            return [x[i] for i in idx] if name in _LIST_FIELDS else x[idx]

        return RolloutRows(**_per_field(taken))

    def pad_rows(self, num_rows: int) -> RolloutRows:
        """Repeats the last row up to `num_rows` rows (for fixed compiled shapes; callers drop
        the extra rows' outputs)."""
        extra = num_rows - self.num_rows
        return concat_rows([self, self.take_rows(np.full(extra, self.num_rows - 1))])

    def take_groups(self, groups: Sequence[int]) -> RolloutRows:
        """The rows of the given prompt groups (renumbered 0..len(groups)-1, in that order)."""
        rows = np.concatenate([np.flatnonzero(self.group_ids == g) for g in groups])
        remap = {g: i for i, g in enumerate(groups)}
        taken = self.take_rows(rows)
        taken.group_ids = np.array([remap[g] for g in taken.group_ids], np.int32)
        return taken


# Per-row lists (the others are arrays with rows on axis 0).
_LIST_FIELDS = ("texts", "answers", "ground_truths")


def _per_field(value) -> dict:
    """{field of RolloutRows: value(field)}."""
    return {f.name: value(f.name) for f in dataclasses.fields(RolloutRows)}


def concat_rows(parts: Sequence[RolloutRows]) -> RolloutRows:
    """Rows of several batches, group ids offset so groups stay distinct."""
    offset, group_ids = 0, []
    for part in parts:
        group_ids.append(part.group_ids + offset)
        offset += int(part.group_ids.max()) + 1 if part.num_rows else 0

    def joined(name: str):
        if name in _LIST_FIELDS:
            return [x for p in parts for x in getattr(p, name)]
        if name == "group_ids":
            return np.concatenate(group_ids).astype(np.int32)
        return np.concatenate([getattr(p, name) for p in parts])

    return RolloutRows(**_per_field(joined))


def decode_responses(
    tokens: np.ndarray, lengths: np.ndarray, tokenizer: Tokenizer, eos_ids: Sequence[int]
) -> list[str]:
    """Response texts of `tokens` [N, L] with `lengths` [N]; a final EOS token is dropped (it is
    not text). One batched call into the tokenizer library."""
    tokens = np.asarray(tokens)
    lengths = np.asarray(lengths, np.int64)
    last = tokens[np.arange(len(lengths)), np.maximum(lengths - 1, 0)]
    ends_with_eos = (lengths > 0) & np.isin(last, np.asarray(eos_ids, np.int64))
    return tokenizer.decode_batch(
        [row[:n] for row, n in zip(tokens, (lengths - ends_with_eos).tolist(), strict=True)]
    )


def rollout_rows(
    rollouts: Rollouts,
    *,
    prompt_width: int,
    pad_id: int,
    is_labeled: np.ndarray,
    ground_truths: Sequence[tuple[str, ...] | None],
    tokenizer: Tokenizer,
    eos_ids: Sequence[int],
) -> RolloutRows:
    """Host rows from sampler output.

    Args:
      rollouts: N = B * n rows (row p * n + j is sample j of prompt p).
      prompt_width: P, the prompt slots of the train steps (>= the sampler's bucket).
      pad_id: padding id.
      is_labeled: [B] per prompt.
      ground_truths: [B] per prompt; None for unlabeled prompts (never read for training).
      tokenizer: to decode responses.
      eos_ids: ids dropped from the end of a decoded response.
    """
    r = {
        k: np.asarray(getattr(rollouts, k))
        for k in rollouts.__dataclass_fields__
        if k != "samples_per_prompt"
    }
    prompt_tokens, prompt_mask = left_pad_to(
        r["prompt_tokens"], r["prompt_mask"], prompt_width, pad_id
    )
    response_mask = r["response_mask"].astype(bool)
    group_ids = r["group_ids"].astype(np.int32)
    texts = decode_responses(r["tokens"], r["lengths"], tokenizer, eos_ids)
    return RolloutRows(
        tokens=np.concatenate([prompt_tokens, r["tokens"]], axis=1).astype(np.int32),
        attention_mask=np.concatenate([prompt_mask.astype(bool), response_mask], axis=1),
        response_mask=response_mask,
        group_ids=group_ids,
        is_labeled=np.asarray(is_labeled, bool)[group_ids],
        lengths=r["lengths"].astype(np.int32),
        finish_reason=r["finish_reason"].astype(np.int32),
        texts=texts,
        answers=[extract_boxed(t) for t in texts],
        ground_truths=[ground_truths[g] for g in group_ids],
    )


def dense_ids(ids: np.ndarray) -> np.ndarray:
    """Relabels arbitrary integer ids to 0..K-1 (what segment sums over [0, N) need)."""
    _, inverse = np.unique(np.asarray(ids), return_inverse=True)
    return inverse.astype(np.int32)
