"""A normalised answer (latex_normalize.py) as a sympy object, read by latex2sympy2_extended.

latex2sympy2_extended (installed with math-verify, which uses it for the same job) lexes and parses
LaTeX with an ANTLR grammar and builds sympy objects by constructor calls. Model text never reaches
`eval`: sympy's string parser sees only the grammar's numeric-literal tokens (digits, `.`, an
`E` exponent) when it turns them into numbers; the library's one `parse_expr` reads caller-supplied
variable values, which are never passed. (math-verify's plain-expression extractor, which does
evaluate Python, is never used.)

`parse_answer` returns a structure or a scalar:

  - `FiniteSet` for `\\{a,b\\}` and for a bare list `a,b`; `Union` for `A \\cup B`;
  - `Interval` for `[a,b)`, `(a,b]`, ... and an increasing `(a,b)`; `Tuple` for other tuples
    (`(2,1)`, `(1,2,3)`);
  - anything else is a scalar expression: numbers, letters (`e` is Euler's number and `i` the
    imaginary unit), `\\frac`, `\\sqrt`, `\\binom`, powers, `!`, `|x|`, `\\pi`, `\\infty`, greek
    letters, elementary functions (`\\log` without a base is base 10 and `2\\frac{1}{2}` the mixed
    number 5/2, as math-verify reads them).

Anything else (relations, matrices, sums, integrals, undefined functions) raises `ParseError`, as
does text outside the grammar. Size guards raise `TooLargeError` before anything asks sympy for an
exact value that would not fit in memory (`9^{9^{9^{9}}}`, `1000000!`) and before the parser meets
brackets nested deeper than `MAX_NESTING`, so the caller can skip every other symbolic check on such
input (math-verify parses with the same grammar).
"""

import dataclasses
import math
import re

import sympy
from latex2sympy2_extended.latex2sympy2 import ConversionConfig, latex2sympy
from sympy.functions.combinatorial.factorials import binomial, factorial
from sympy.functions.elementary.exponential import exp, log
from sympy.functions.elementary.hyperbolic import HyperbolicFunction
from sympy.functions.elementary.trigonometric import (
    InverseTrigonometricFunction,
    TrigonometricFunction,
)

from tempo_jax.rewards.quick_match import nesting_depth

MAX_LITERAL_DIGITS = 100
# The grammar is ambiguous around brackets: parse time grows exponentially with bracket nesting
# (measured on this 2-core machine: about 1-2.7 s at depth 10, 16 s at 16 braces, 9 min at 20).
MAX_NESTING = 10
# An exact power / factorial / binomial whose value needs more bits than this is refused.
MAX_EXACT_BITS = 20_000
MAX_FACTORIAL = 1000
MAX_BINOMIAL = 10_000

_LONG_LITERAL = re.compile(rf"\d{{{MAX_LITERAL_DIGITS + 1}}}")
# The grammar reads `\gamma` / `\Gamma` as Euler's constant, or as the gamma function of what
# follows (`\gamma+1` is Gamma(+1) = 1); a `\variable{..}` is a plain symbol.
_GAMMA = re.compile(r"\\(gamma|Gamma)(?![A-Za-z])")
# Case matters: `A` is not `a`.
_CONFIG = ConversionConfig(lowercase_symbols=False)
_STRUCTURES = (sympy.FiniteSet, sympy.Union, sympy.Interval, sympy.Tuple)
_SCALAR_NODES = (
    sympy.Number,
    sympy.NumberSymbol,
    sympy.Symbol,
    sympy.Add,
    sympy.Mul,
    sympy.Pow,
    sympy.Abs,
    exp,
    log,
    TrigonometricFunction,
    InverseTrigonometricFunction,
    HyperbolicFunction,
    factorial,
    binomial,
)
_IMAGINARY_UNIT = {sympy.Symbol("i"): sympy.I}


class ParseError(ValueError):
    """The text is outside what the grader compares by value."""


class TooLargeError(ParseError):
    """The text denotes a number too large to compute exactly (a pathological answer)."""


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A scalar answer for `equivalence.values_equal`.

    Attributes:
      expr: the sympy expression, decimal literals as exact rationals (`0.33` is 33/100).
      has_decimal: True when a decimal literal occurs; such answers are compared with a relative
        tolerance, exact ones (integers, fractions, radicals, pi) exactly.
    """

    expr: sympy.Basic
    has_decimal: bool

    @classmethod
    def of(cls, expr: sympy.Basic) -> "Parsed":
        """The scalar `expr` of `parse_answer`, its decimals read exactly."""
        floats = expr.atoms(sympy.Float)
        exact = {f: sympy.Rational(str(f)) for f in floats}
        return cls(expr=expr.xreplace(exact) if exact else expr, has_decimal=bool(floats))


def _bits(value: sympy.Basic) -> float:
    """Rough bit size of an exact number (log2 of its magnitude, numerator and denominator)."""
    if value.is_Rational:
        return max(abs(value.p), abs(value.q)).bit_length()
    try:
        magnitude = abs(complex(value))
    except (TypeError, ValueError, OverflowError):
        return math.inf
    if magnitude == 0:
        return 0.0
    return abs(math.log2(magnitude)) + 1.0


def _magnitude(value: sympy.Basic) -> float:
    try:
        return abs(complex(value))
    except (TypeError, ValueError, OverflowError) as err:
        raise TooLargeError("argument not a finite number") from err


def _check(expr: sympy.Basic) -> None:
    """Raises for a node outside the grammar or a number too large to evaluate exactly; children
    are checked before their parent, so no guard evaluates an unchecked argument."""
    if isinstance(expr, sympy.Interval):
        children = (expr.start, expr.end)
    elif isinstance(expr, _SCALAR_NODES + _STRUCTURES):
        children = expr.args
    else:
        raise ParseError(f"unsupported {type(expr).__name__}")
    for child in children:
        _check(child)
    if expr.is_Rational and _bits(expr) > MAX_EXACT_BITS:
        raise TooLargeError("number too large")
    if not expr.is_number or expr.has(sympy.oo, -sympy.oo, sympy.zoo):
        return
    if isinstance(expr, sympy.Pow):
        base, exponent = expr.args
        trivial_base = base in (sympy.Integer(0), sympy.Integer(1), sympy.Integer(-1))
        exp_magnitude = _magnitude(exponent)
        too_many_bits = exp_magnitude * max(_bits(base), 1.0) > MAX_EXACT_BITS
        if exp_magnitude > 1 and too_many_bits and not trivial_base:
            raise TooLargeError("power too large to evaluate exactly")
    elif isinstance(expr, factorial) and _magnitude(expr.args[0]) > MAX_FACTORIAL:
        raise TooLargeError("factorial too large")
    elif isinstance(expr, binomial) and _magnitude(expr.args[0]) > MAX_BINOMIAL:
        raise TooLargeError("binomial too large")


def parse_answer(text: str) -> sympy.Basic:
    """A normalised answer as a sympy structure (module docstring) or scalar expression.

    Raises:
      ParseError: outside the grammar (also for `=`, relations, text) or an undefined value.
      TooLargeError: a number too large to evaluate exactly.
    """
    if _LONG_LITERAL.search(text):
        raise TooLargeError("numeric literal too long")
    if nesting_depth(text) > MAX_NESTING:
        raise TooLargeError(f"brackets nested deeper than {MAX_NESTING}")
    text = _GAMMA.sub(r"\\variable{\1}", text)
    try:
        expr = latex2sympy(text, normalization_config=None, conversion_config=_CONFIG)
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 (the parser raises bare Exception, and more)
        raise ParseError(f"not parsed: {type(err).__name__}") from None
    if not isinstance(expr, sympy.Basic):
        raise ParseError(f"unsupported {type(expr).__name__}")
    _check(expr)
    expr = expr.xreplace(_IMAGINARY_UNIT)
    if expr.has(sympy.nan, sympy.zoo):
        raise ParseError("undefined value")
    return expr
