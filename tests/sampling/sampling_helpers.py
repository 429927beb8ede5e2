"""Helpers shared by the sampling tests: teacher-forced references and a compile counter."""

from __future__ import annotations

import re

import numpy as np
from scipy import stats

from tempo_jax.sampling import FINISH_EOS, FINISH_LENGTH, FINISH_STOP, Rollouts

VOCAB = 256
PAD = 0
MAX_NEW = 8
# Never produced by the tests' greedy rollouts unless a test picks it (checked where it matters).
UNUSED_EOS = VOCAB - 1
# The session `sampler` fixture's settings: buckets 8 and 16, one EOS id and one 2-token stop
# sequence that never occur.
SAMPLER_KWARGS = dict(
    max_new_tokens=MAX_NEW,
    prompt_buckets=(8, 16),
    eos_ids=(UNUSED_EOS,),
    stop_sequences=((UNUSED_EOS, UNUSED_EOS),),
    pad_id=PAD,
    max_top_k=32,
)


def teacher_forced_logits(policy, rollouts: Rollouts) -> np.ndarray:
    """[N, L, V] float64 logits predicting each response slot, from one full forward pass."""
    tokens, mask = rollouts.sequences()
    logits = np.asarray(policy(tokens, mask), np.float64)
    prompt_width = rollouts.prompt_tokens.shape[1]
    return logits[:, prompt_width - 1 : -1]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def binomial_count_range(
    probs: np.ndarray, draws: int, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell [lo, hi] such that a Binomial(draws, p) count falls outside with probability at
    most `alpha` (at most alpha / 2 on each side), from the exact binomial tails (no normal
    approximation: for small p the binomial tail is far heavier than the normal one).

    A test that checks C cells against these ranges, each with alpha = budget / C, fails a
    correct sampler with probability at most `budget` (union bound). p = 0 gives [0, 0] and
    p = 1 gives [draws, draws].
    """
    probs = np.clip(np.asarray(probs, np.float64), 0.0, 1.0)
    lo = stats.binom.ppf(alpha / 2, draws, probs)  # P(X < lo) < alpha / 2
    hi = stats.binom.isf(alpha / 2, draws, probs)  # P(X > hi) <= alpha / 2
    return lo, hi


def expected_end(tokens: np.ndarray, eos_ids, stop_sequences, max_new: int) -> tuple[int, int]:
    """(length, finish reason) of a response whose untruncated continuation is `tokens`."""
    for t in range(max_new):
        if tokens[t] in eos_ids:
            return t + 1, FINISH_EOS
        for seq in stop_sequences:
            if t + 1 >= len(seq) and tuple(tokens[t + 1 - len(seq) : t + 1]) == tuple(seq):
                return t + 1, FINISH_STOP
    return max_new, FINISH_LENGTH


_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%[\w.\-]+ = \w+\[([\d,]*)\]\S* ([\w\-]+)\(")
_CALLED = re.compile(
    r"(?:calls|body|condition|to_apply|branch_computations|true_computation|false_computation)="
    r"\{?([%\w.\-, ]+)\}?"
)
# Free or bookkeeping ops: they never compute a new array.
_FREE_OPS = {"parameter", "get-tuple-element", "bitcast", "tuple", "constant"}


def _computations(hlo_text: str) -> dict[str, list[str]]:
    out, current = {}, None
    for line in hlo_text.splitlines():
        head = re.match(r"^(?:ENTRY )?(%[\w.\-]+) ", line)
        if head and line.rstrip().endswith("{"):
            current = head.group(1)
            out[current] = []
        elif current and line.strip() == "}":
            current = None
        elif current:
            out[current].append(line)
    return out


def _squeezed(shape) -> tuple[int, ...]:
    return tuple(sorted(d for d in shape if d != 1))


def weight_shaped_ops_in_loop(hlo_text: str, weights) -> list[tuple[str, tuple[int, ...]]]:
    """(op, shape) of every instruction inside the body of the program's widest while loop (the
    decode loop, whose carry holds the caches and the loop-invariant weights; the prefill's
    layer scan is another, once-only loop), fusions and calls included, whose result has the
    shape of a weight matrix or of one layer's slice of it (dims of size 1 ignored, any order):
    what recasting or re-slicing weights inside the loop would produce."""
    computations = _computations(hlo_text)
    weight_shapes = set()
    for w in weights:
        if w.ndim >= 2:
            weight_shapes.add(_squeezed(w.shape))
            if w.ndim >= 3:
                weight_shapes.add(_squeezed(w.shape[1:]))
    loops = [
        (len(line), m.group(1))
        for lines in computations.values()
        for line in lines
        if (m := re.search(r"while\(.*body=(%[\w.\-]+)", line))
    ]
    seen, stack = set(), [max(loops)[1]]
    while stack:
        name = stack.pop()
        if name in seen or name not in computations:
            continue
        seen.add(name)
        for line in computations[name]:
            for called in _CALLED.finditer(line):
                stack.extend(n.strip() for n in called.group(1).split(",") if "%" in n)
    found = []
    for name in seen:
        for line in computations[name]:
            match = _INSTRUCTION.match(line)
            if not match or match.group(2) in _FREE_OPS:
                continue
            dims = tuple(int(d) for d in match.group(1).split(",") if d)
            if _squeezed(dims) in weight_shapes:
                found.append((match.group(2), dims))
    return found
