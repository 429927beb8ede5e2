"""The answer parser (latex2sympy2_extended): values, structures, guards, refusal of non-math."""

import time

import pytest
import sympy

from tempo_jax.rewards.equivalence import split_structure
from tempo_jax.rewards.expression_parser import (
    Parsed,
    ParseError,
    TooLargeError,
    parse_answer,
)

x, y = sympy.symbols("x y")


@pytest.mark.parametrize(
    "text, value",
    [
        (r"\frac{1}{2}", sympy.Rational(1, 2)),
        (r"\frac{\sqrt{2}}{2}", sympy.sqrt(2) / 2),
        (r"2\pi", 2 * sympy.pi),
        (r"x^{2}+2x+1", x**2 + 2 * x + 1),
        (r"x^{2}3", 3 * x**2),  # normalize_answer writes LaTeX's x^23 so
        (r"|x-1|", sympy.Abs(x - 1)),
        (r"\sqrt[3]{8}", sympy.Integer(2)),
        (r"\log_{2}(8)", sympy.Integer(3)),
        (r"5!", sympy.Integer(120)),
        (r"\binom{5}{2}", sympy.Integer(10)),
        (r"e^{i\pi}", sympy.Integer(-1)),
        (r"3\times4\div2", sympy.Integer(6)),
        (r"-\infty", -sympy.oo),
        (r"x_{1}y", sympy.Symbol("x_1") * y),
        (r"\gamma+1", sympy.Symbol("gamma") + 1),  # a symbol, not Gamma(+1)
        (r"2\frac{1}{2}", sympy.Rational(5, 2)),  # a mixed number, as math-verify reads it
    ],
)
def test_parse_values(text, value):
    parsed = Parsed.of(parse_answer(text)).expr
    assert parsed == value or sympy.simplify(parsed - value) == 0


def test_decimal_flag():
    assert Parsed.of(parse_answer("0.5")).has_decimal
    assert Parsed.of(parse_answer("0.5")).expr == sympy.Rational(1, 2)  # exact value, flagged
    assert not Parsed.of(parse_answer(r"\frac{1}{2}")).has_decimal


@pytest.mark.parametrize(
    "text, kind, items",
    [
        ("(1,2)", "()", [1, 2]),
        ("(2,1)", "()", [2, 1]),  # not an interval: a tuple, same kind
        ("(1,2,3)", "()", [1, 2, 3]),
        ("[1,2)", "[)", [1, 2]),
        (r"(-\infty,3]", "(]", [-sympy.oo, 3]),
        (r"\{2,1\}", "set", [1, 2]),
        ("2,1", "set", [1, 2]),
        (r"[0,1]\cup\{5\}\cup(7,8)", "union", 3),  # nested unions flattened
        ("x+1", "scalar", 1),
    ],
)
def test_structures(text, kind, items):
    got_kind, got_items = split_structure(parse_answer(text))
    assert got_kind == kind
    if isinstance(items, int):
        assert len(got_items) == items
    else:
        assert list(got_items) == items


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('touch /tmp/x')",
        "x=3",
        r"x\le3",
        r"\begin{pmatrix}1\\2\end{pmatrix}",
        r"\sum_{i=1}^{3}i",
        r"\unknowncommand{1}",
        "1/0",
        "(1+2",
        "",
        "(" * 100 + "1" + ")" * 100,
    ],
)
def test_parse_errors(text):
    with pytest.raises(ParseError):
        parse_answer(text)


@pytest.mark.parametrize(
    "text",
    [
        r"9^{9^{9^{9}}}",
        r"9^{9^{9}}",
        r"2^{100000}",
        "100000!",
        "1" * 101,
        "{" * 20 + "1" + "}" * 20,
    ],
)
def test_too_large_refused_fast(text):
    # This process's CPU time, not wall time: a loaded CI machine must not fail it.
    start = time.process_time()
    with pytest.raises(TooLargeError):
        parse_answer(text)
    assert time.process_time() - start < 0.5
