"""Counterfactual hard negatives for the critic: graded-right D_L rollouts with one step broken.

A warmed-up critic fitted to ±1 outcomes of mostly-right policy samples learns which questions
are hard, not how to check an answer (README, "What moved the critic's AUROC"). On the built-in
arithmetic task a wrong answer shows in its written steps: a step `a<op>b=c` whose arithmetic is
wrong (`14+6=19`) or whose operand is copied wrongly. `tempo.critic_negatives = K` adds K rows
to every critic warm-up and E-step batch, each a graded-right labeled rollout of that batch with
one step corrupted and target -1, beside its uncorrupted original (+1, already in the batch):
the same prompt, near-identical text, opposite label.

Two corruptions, alternating (row j: "result" for even j, "copy" for odd j):

- `result`: one step's result `c` is written wrong, so `a<op>b != c`;
- `copy`: one step's right operand `b` (copied from the question), or for a later step its left
  operand `a` (copied from the previous result), is written wrong, with the step's arithmetic
  right for the wrong operand.

The wrong values are near misses, the errors the SFT policy makes itself (seed 0's step-0 D_U
samples: `14+6=19`, `12+1=12`, `4+8=21`, `10+9=28`): off by 1 or 2, the tens digit off by one,
the digits swapped, or (for a result) an operand written as the result.

Every later step is recomputed from the changed value and the boxed answer is the new final
value, so the response is consistent except at the one broken step (as the policy's own errors
mostly are) and its answer is wrong. Only D_L rows graded right are corrupted, against their own
labeled ground truth: no D_U answer is read, so the method stays self-supervised on D_U.

Responses without checkable step lines (another task's format) give no negatives; rows that
could not be filled (too few right rows, or a corrupted text longer than the response slots)
repeat a batch row with `is_labeled = False`, which takes no part in the value loss, so the
critic's batch keeps one shape (N + K rows).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

from tempo_jax.data.tokenizer import Tokenizer
from tempo_jax.rewards.boxed import extract_boxed
from tempo_jax.tempo.rollout_data import RolloutRows, concat_rows

KINDS = ("result", "copy")
_STEP = re.compile(r"^(\d+)([+\-*])(\d+)=(\d+)$")
_BOXED = re.compile(r"^\\boxed\{(-?\d+)\}$")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclasses.dataclass(frozen=True)
class Steps:
    """A parsed arithmetic response: steps (a, op, b) in order and their written results."""

    steps: tuple[tuple[int, str, int], ...]
    results: tuple[int, ...]

    def text(self) -> str:
        pairs = zip(self.steps, self.results, strict=True)
        lines = [f"{a}{op}{b}={c}" for (a, op, b), c in pairs]
        return "\n".join([*lines, f"\\boxed{{{self.results[-1]}}}"])


def parse_steps(text: str) -> Steps | None:
    """The steps of a well-formed, self-consistent arithmetic response (every line `a<op>b=c`
    with c = a op b, each a the previous c, then `\\boxed{last c}`), else None."""
    lines = text.strip().split("\n")
    if len(lines) < 2 or not _BOXED.match(lines[-1]):
        return None
    steps, results = [], []
    for line in lines[:-1]:
        m = _STEP.match(line)
        if m is None:
            return None
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        if _OPS[op](a, b) != c or (results and a != results[-1]):
            return None
        steps.append((a, op, b))
        results.append(c)
    if int(_BOXED.match(lines[-1])[1]) != results[-1]:
        return None
    return Steps(tuple(steps), tuple(results))


def _near_miss(value: int, rng: np.random.Generator, also: tuple[int, ...] = ()) -> int | None:
    """A wrong value of the kind the policy itself writes: off by 1 or 2, the tens digit off by
    one, the digits swapped, or one of `also` (e.g. the step's left operand written as its
    result); never negative, never `value`. None when there is none."""
    swapped = int(str(value)[::-1]) if value >= 10 else value
    candidates = {value + 1, value - 1, value + 2, value - 2, value + 10, value - 10, swapped}
    candidates |= set(also)
    options = sorted(c for c in candidates if c >= 0 and c != value)
    return options[int(rng.integers(len(options)))] if options else None


def _propagate(steps: list[tuple[int, str, int]], results: list[int], start: int) -> bool:
    """Recomputes steps after `start` from results[start]; False when a value goes negative."""
    for j in range(start + 1, len(steps)):
        _, op, b = steps[j]
        steps[j] = (results[j - 1], op, b)
        results[j] = _OPS[op](results[j - 1], b)
        if results[j] < 0:
            return False
    return True


def corrupt(parsed: Steps, kind: str, rng: np.random.Generator, tries: int = 8) -> Steps | None:
    """`parsed` with one step broken (module docstring) and every later step recomputed, or None
    when `tries` draws all drove a value negative or left the final answer unchanged."""
    if kind not in KINDS:
        raise ValueError(f"corruption kind must be one of {KINDS}, got {kind!r}")
    for _ in range(tries):
        steps, results = list(parsed.steps), list(parsed.results)
        k = int(rng.integers(len(steps)))
        a, op, b = steps[k]
        if kind == "result":
            wrong = _near_miss(results[k], rng, also=(a, b))
            if wrong is None:
                continue
            results[k] = wrong
        else:
            if k > 0 and rng.integers(2):  # the previous result copied wrongly
                a = _near_miss(a, rng)
            else:  # the question's operand copied wrongly (operands are >= 1)
                b = _near_miss(b, rng)
                b = None if b == 0 else b
            if a is None or b is None:
                continue
            steps[k], results[k] = (a, op, b), _OPS[op](a, b)
        if results[k] < 0 or not _propagate(steps, results, k):
            continue
        if results[-1] != parsed.results[-1]:
            return Steps(tuple(steps), tuple(results))
    return None


def _encoded_row(
    source: RolloutRows,
    text: str,
    tokenizer: Tokenizer,
    eos_id: int,
    pad_id: int,
    after_break: bool,
) -> RolloutRows | None:
    """One row with `source`'s prompt (a one-row RolloutRows) and response `text` + EOS, or None
    when it does not fit the response slots. With `after_break` its response mask (the value
    loss's mask; attention still covers the whole response) starts at the first value that has
    seen the broken token: the prefix it shares with `source` keeps its one target."""
    ids = [*tokenizer.encode(text), eos_id]
    width = source.response_mask.shape[1]
    if len(ids) > width:
        return None
    prompt_width = source.tokens.shape[1] - width
    response = np.full(width, pad_id, np.int32)
    response[: len(ids)] = ids
    attend = np.zeros(width, bool)
    attend[: len(ids)] = True
    loss = attend.copy()
    if after_break:
        differs = np.flatnonzero(response != source.tokens[0, prompt_width:])
        # V[t] = V(x, y_<t): the first value that sees broken token d is V[d + 1].
        loss[: int(differs[0]) + 1] = False
    return dataclasses.replace(
        source,
        tokens=np.concatenate([source.tokens[0, :prompt_width], response])[None].astype(np.int32),
        attention_mask=np.concatenate([source.attention_mask[0, :prompt_width], attend])[None],
        response_mask=loss[None],
        lengths=np.array([len(ids)], np.int32),
        texts=[text],
        answers=[extract_boxed(text)],
    )


def with_negatives(
    rows: RolloutRows,
    rewards: np.ndarray,
    count: int,
    *,
    seed: int,
    tokenizer: Tokenizer,
    eos_ids: Sequence[int],
    pad_id: int,
    after_break: bool = False,
) -> tuple[RolloutRows, np.ndarray, dict[str, float]]:
    """`rows` [N] and their rewards plus `count` corrupted rows (target -1), for the critic.

    Args:
      rows: a graded critic batch (D_L rows carry their labeled ground truths).
      rewards: [N] ±1 on labeled rows.
      count: K, the rows appended (0: `rows` unchanged).
      seed: draws the source rows, steps and digits (a resumed step redraws the same).
      tokenizer: encodes the corrupted responses.
      eos_ids: the first ends every corrupted response.
      pad_id: fills the response slots after it.
      after_break: the value loss of a corrupted row covers only the tokens after its broken
        token (`_encoded_row`), not the prefix it shares with its source row.

    Returns:
      (rows [N + K], rewards [N + K], metrics): the appended rows keep their source's group id
      (same prompt); filler rows have `is_labeled = False`. `critic_negatives/rows` counts the
      corrupted rows that were made.
    """
    if count == 0:
        return rows, rewards, {}
    rng = np.random.default_rng(seed)
    right = np.flatnonzero(rows.is_labeled & (rewards > 0))
    parsed = {int(i): parse_steps(rows.texts[i]) for i in right}
    sources = np.array([i for i in right if parsed[int(i)] is not None], np.int64)
    extra, extra_rewards = [], np.full(count, -1.0, np.float32)
    made = 0
    if len(sources):
        order = rng.permutation(len(sources))
        for j in range(count):
            i = int(sources[order[j % len(sources)]])
            bad = corrupt(parsed[i], KINDS[j % len(KINDS)], rng)
            row = None
            if bad is not None:
                source = rows.take_rows([i])
                row = _encoded_row(source, bad.text(), tokenizer, eos_ids[0], pad_id, after_break)
            if row is not None:
                extra.append(row)
                made += 1
    while len(extra) < count:  # placeholders: no loss, one compiled shape
        filler = rows.take_rows([rows.num_rows - 1])
        extra.append(dataclasses.replace(filler, is_labeled=np.zeros(1, bool)))
        extra_rewards[len(extra) - 1] = 0.0
    # Keep the source rows' group ids: concat_rows would renumber the extra rows' groups.
    out = concat_rows([rows, *extra])
    out.group_ids = np.concatenate([rows.group_ids, *[e.group_ids for e in extra]]).astype(np.int32)
    metrics = {
        "critic_negatives/rows": float(made),
        "critic_negatives/sources": float(len(sources)),
    }
    return out, np.concatenate([rewards.astype(np.float32), extra_rewards]), metrics
