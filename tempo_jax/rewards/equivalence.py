"""Whether an extracted answer matches a ground truth (TEMPO_ALGORITHM.md §5).

This module does the expensive checks and has NO time limit of its own: it is meant to run inside
the grading worker processes (grading_pool.py), which enforce wall-clock and memory limits. It
imports sympy and math-verify; the training process never needs to import it.

An answer matches when any of these holds, tried in order of cost:

1. the cheap verdicts of quick_match.py: equal normalised strings (latex_normalize.py), plain
   numbers, word answers (compared as strings only), oversized answers (strings only);
2. structured comparison of the normalised strings read by expression_parser.py: sets `\\{..\\}`,
   bare comma lists and unions `A \\cup B` match in any order; tuples and intervals `(..)`, `[..)`
   match element-wise in order with the same brackets; each element (or a plain scalar) is
   compared by value (`values_equal`);
3. the same after taking the text after the last `=` (`f(2)=5` -> `5`) of the answer, and of the
   ground truth too when both contain one;
4. math-verify (`math_verify.verify`, LaTeX extraction only: its plain-expression extractor goes
   through sympy's `parse_expr`, which evaluates Python).

Value comparison (the meaning of §5's "tolerance ~1e-3, unreduced fractions compared exactly"):
answers written exactly (integers, fractions, radicals, pi) are compared exactly, by value, so an
unreduced fraction equals its reduced form (`2/4` = `1/2`) while `1000` != `1001` and `1/3` !=
`333/1000`; once either side contains a decimal literal the comparison is relative with tolerance
`quick_match.REL_TOL` = 1e-3 (`0.3333` = `1/3`, `0.33` != `1/3`, `3.1416` = `pi`). Expressions
with variables are compared at fixed sample points under the same rule, and must have the same
variables.
"""

import functools
import logging

import sympy

from tempo_jax.rewards import latex_normalize
from tempo_jax.rewards.expression_parser import Parsed, ParseError, TooLargeError, parse_answer
from tempo_jax.rewards.quick_match import REL_TOL, is_parseable_size, is_word_answer, quick_match

# "Exact" comparisons go through 40-digit numerics; distinct exact answers differ far more.
_EXACT_REL_TOL = 1e-20
_SYMBOLIC_EXACT_REL_TOL = 1e-12
_DIGITS = 40
_SAMPLE_POINTS = (
    sympy.Rational(5371, 10000),
    sympy.Rational(12913, 10000),
    sympy.Rational(-20719, 10000),
)
MAX_ITEMS = 50


# -- structure ---------------------------------------------------------------------------------


def split_structure(expr: sympy.Basic) -> tuple[str, list[sympy.Basic]]:
    """Classifies a parsed answer.

    Returns:
      (kind, items): kind is "scalar" (items = [expr]), "set" (`\\{a,b\\}` or `a,b`), "union"
      (`A\\cupB`, nested unions flattened) or a bracket pair: "()" for tuples and open intervals,
      "[]", "[)", "(]" for the other intervals.
    """
    if isinstance(expr, sympy.Union):
        items = []
        for arg in expr.args:
            items += split_structure(arg)[1] if isinstance(arg, sympy.Union) else [arg]
        return "union", items
    if isinstance(expr, sympy.FiniteSet):
        return "set", list(expr.args)
    if isinstance(expr, sympy.Interval):
        kind = ("(" if expr.left_open else "[") + (")" if expr.right_open else "]")
        return kind, [expr.start, expr.end]
    if isinstance(expr, sympy.Tuple):
        return "()", list(expr.args)
    return "scalar", [expr]


# -- values ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _parse_cached(text: str) -> sympy.Basic | ParseError:
    try:
        return parse_answer(text)
    except ParseError as err:
        return err


def _close(a: sympy.Basic, b: sympy.Basic, rel_tol: float) -> bool:
    diff = abs(a - b)
    scale = max(abs(a), abs(b))
    if scale == 0:
        return True
    return bool(diff <= rel_tol * scale)


def _numeric(expr: sympy.Basic, subs: dict | None = None) -> sympy.Basic | None:
    value = expr.evalf(_DIGITS, subs=subs)
    if value.has(sympy.nan, sympy.zoo) or not value.is_number:
        return None
    return value


def values_equal(a: Parsed, b: Parsed) -> bool:
    """Equality of two parsed answers by value (exact, or relative REL_TOL with a decimal)."""
    inexact = a.has_decimal or b.has_decimal
    x, y = a.expr, b.expr
    if x.has(sympy.oo, -sympy.oo) or y.has(sympy.oo, -sympy.oo):
        return x == y
    if x.is_Rational and y.is_Rational and not inexact:
        return x == y
    symbols = x.free_symbols | y.free_symbols
    if not symbols:
        vx, vy = _numeric(x), _numeric(y)
        if vx is None or vy is None:
            return False
        return _close(vx, vy, REL_TOL if inexact else _EXACT_REL_TOL)
    if x.free_symbols != y.free_symbols:
        return False
    ordered = sorted(symbols, key=lambda s: s.name)
    checked = 0
    for shift, point in enumerate(_SAMPLE_POINTS):
        subs = {s: point + sympy.Rational(k * (shift + 1), 7) for k, s in enumerate(ordered)}
        vx, vy = _numeric(x, subs), _numeric(y, subs)
        if vx is None or vy is None:
            continue
        if not _close(vx, vy, REL_TOL if inexact else _SYMBOLIC_EXACT_REL_TOL):
            return False
        checked += 1
    return checked >= 2


class _Comparison:
    """One answer-vs-truth comparison; remembers whether a side was too large to evaluate."""

    def __init__(self) -> None:
        self.too_large = False

    def parse(self, text: str) -> sympy.Basic | None:
        result = _parse_cached(text)
        if isinstance(result, TooLargeError):
            self.too_large = True
        return None if isinstance(result, ParseError) else result

    def texts(self, a: str, b: str) -> bool:
        if a == b:
            return True
        if is_word_answer(a) or is_word_answer(b):
            return a.lower() == b.lower()
        x, y = self.parse(a), self.parse(b)
        return x is not None and y is not None and self.structures(x, y)

    def structures(self, x: sympy.Basic, y: sympy.Basic) -> bool:
        kind_x, items_x = split_structure(x)
        kind_y, items_y = split_structure(y)
        if kind_x != kind_y or len(items_x) != len(items_y) or len(items_x) > MAX_ITEMS:
            return False
        if kind_x == "scalar":
            return x == y or values_equal(Parsed.of(x), Parsed.of(y))
        if kind_x in ("set", "union"):
            return self._unordered(items_x, items_y)
        return all(self.structures(p, q) for p, q in zip(items_x, items_y, strict=True))

    def _unordered(self, items_a: list[sympy.Basic], items_b: list[sympy.Basic]) -> bool:
        """A perfect matching between the two item lists (augmenting paths; n <= MAX_ITEMS)."""
        n = len(items_a)
        match = [[self.structures(x, y) for y in items_b] for x in items_a]
        owner: list[int | None] = [None] * n

        def augment(i: int, seen: list[bool]) -> bool:
            for j in range(n):
                if match[i][j] and not seen[j]:
                    seen[j] = True
                    if owner[j] is None or augment(owner[j], seen):
                        owner[j] = i
                        return True
            return False

        return all(augment(i, [False] * n) for i in range(n))


def _strings_for_retry(answer: str, truth: str) -> list[tuple[str, str]]:
    pairs = [(answer, truth)]
    rhs_answer = latex_normalize.after_last_equals(answer)
    if rhs_answer is not None:
        rhs_answer = latex_normalize.normalize_answer(rhs_answer)
        pairs.append((rhs_answer, truth))
        rhs_truth = latex_normalize.after_last_equals(truth)
        if rhs_truth is not None:
            pairs.append((rhs_answer, latex_normalize.normalize_answer(rhs_truth)))
    return pairs


def answer_matches(answer: str, ground_truth: str, use_math_verify: bool = True) -> bool:
    """Whether an extracted answer matches one unboxed ground truth (module docstring rules).

    No time limit: call through grading_pool.GradingPool for untrusted input.
    """
    verdict = quick_match(answer, ground_truth)
    if verdict is not None:
        return verdict
    norm_answer = latex_normalize.normalize_answer(answer)
    norm_truth = latex_normalize.normalize_answer(ground_truth)
    comparison = _Comparison()
    for a, b in _strings_for_retry(norm_answer, norm_truth):
        if comparison.texts(a, b):
            return True
    if comparison.too_large or not use_math_verify:
        return False
    if _both_plain_values(norm_answer, norm_truth, answer, ground_truth):
        # Two numbers already compared by value: math-verify could only disagree through the
        # percent sign that normalisation dropped, and it costs more than everything above.
        return False
    return math_verify_matches(ground_truth, answer)


def _both_plain_values(norm_answer: str, norm_truth: str, answer: str, truth: str) -> bool:
    if "%" in answer or "%" in truth:
        return False
    parsed = [_parse_cached(norm_answer), _parse_cached(norm_truth)]
    return all(
        not isinstance(p, ParseError) and split_structure(p)[0] == "scalar" and not p.free_symbols
        for p in parsed
    )


def answers_equivalent(a: str, b: str) -> bool:
    """Symmetric equivalence of two extracted answers (for clustering): a matches b or b a."""
    return answer_matches(a, b) or answer_matches(b, a)


# -- math-verify -------------------------------------------------------------------------------

# math-verify warns once per process that its own timeout is off; the pool enforces ours.
logging.getLogger("math_verify").setLevel(logging.ERROR)


@functools.lru_cache(maxsize=1024)
def _math_verify_parse(text: str) -> tuple:
    from math_verify import LatexExtractionConfig, parse

    # LaTeX extraction only, timeouts off (signal.alarm is not ours to use).
    return tuple(parse("\\boxed{" + text + "}", [LatexExtractionConfig()], parsing_timeout=None))


def math_verify_matches(ground_truth: str, answer: str) -> bool:
    """math-verify's verdict on (gold, prediction); any error counts as no match."""
    from math_verify import verify

    if not (is_parseable_size(answer) and is_parseable_size(ground_truth)):
        return False
    try:
        gold = list(_math_verify_parse(ground_truth))
        pred = list(_math_verify_parse(answer))
        if not gold or not pred:
            return False
        return bool(verify(gold, pred, timeout_seconds=None))
    except Exception:  # noqa: BLE001 (math-verify raises anything; a failure is "no match")
        return False
