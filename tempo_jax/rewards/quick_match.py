"""Cheap answer decisions that need no parser: safe to run in the training process.

`quick_match` settles the common cases (equal normalised strings, plain numbers, word answers,
oversized answers) in microseconds, so only the rest pays for a worker round trip. Its verdicts
agree with equivalence.answer_matches, which calls it first.
"""

import fractions
import re

from tempo_jax.rewards.latex_normalize import normalize_answer

# Relative tolerance once a decimal literal is involved (TEMPO_ALGORITHM.md §5, "~1e-3").
REL_TOL = 1e-3
# Longer or deeper answers are compared as strings only: no parser, no math-verify.
MAX_PARSE_CHARS = 1000
MAX_NESTING = 40

_OPENERS = frozenset("([{")
_CLOSERS = frozenset(")]}")
_INTEGER = re.compile(r"^-?\d{1,100}$")
_DECIMAL = re.compile(r"^-?\d{0,100}\.\d{1,100}$")
_FRACTION = re.compile(r"^(-?)\\frac\{(\d{1,100})\}\{(\d{1,100})\}$")


def nesting_depth(text: str) -> int:
    """Maximum bracket nesting of `text` (all of `( [ {` count)."""
    depth = deepest = 0
    for ch in text:
        if ch in _OPENERS:
            depth += 1
            deepest = max(deepest, depth)
        elif ch in _CLOSERS:
            depth -= 1
    return deepest


def is_parseable_size(text: str) -> bool:
    """Whether `text` is small enough for the parser-based checks at all."""
    return len(text) <= MAX_PARSE_CHARS and nesting_depth(text) <= MAX_NESTING


def is_word_answer(normalized: str) -> bool:
    """True for answers that are words (`yes`, `even`): compared as strings, never parsed.

    A parser would read `no` as n*o and equate it with `on`.
    """
    return len(normalized) >= 2 and normalized.isascii() and normalized.isalpha()


def plain_number(normalized: str) -> tuple[fractions.Fraction, bool] | None:
    """(value, written_with_decimal_point) for `-12`, `0.25`, `\\frac{3}{4}`; else None."""
    if _INTEGER.match(normalized):
        return fractions.Fraction(int(normalized)), False
    if _DECIMAL.match(normalized):
        return fractions.Fraction(normalized), True
    m = _FRACTION.match(normalized)
    if m is not None and int(m.group(3)) != 0:
        value = fractions.Fraction(int(m.group(2)), int(m.group(3)))
        return (-value if m.group(1) else value), False
    return None


def numbers_match(a: fractions.Fraction, b: fractions.Fraction, inexact: bool) -> bool:
    """Exact equality, or relative REL_TOL when either number was written as a decimal."""
    if not inexact:
        return a == b
    scale = max(abs(a), abs(b))
    return scale == 0 or abs(a - b) <= fractions.Fraction(REL_TOL) * scale


def quick_match(answer: str, ground_truth: str) -> bool | None:
    """A verdict from cheap checks, or None when only the parser-based checks can tell.

    Args:
      answer: an extracted answer (box content), raw.
      ground_truth: an unboxed ground truth, raw.
    """
    a = normalize_answer(answer)
    b = normalize_answer(ground_truth)
    if not a or not b:
        return False
    if a == b:
        return True
    if is_word_answer(a) or is_word_answer(b):
        return a.lower() == b.lower()
    if not (is_parseable_size(a) and is_parseable_size(b)):
        return False
    # A percent sign is stripped by normalisation but math-verify reads `10\%` as 0.1: leave
    # such pairs to the full checks.
    if "%" not in answer and "%" not in ground_truth:
        na, nb = plain_number(a), plain_number(b)
        if na is not None and nb is not None:
            return numbers_match(na[0], nb[0], na[1] or nb[1])
    return None
