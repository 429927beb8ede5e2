"""String normalisation and the cheap in-process verdicts."""

import time

import pytest

from tempo_jax.rewards.latex_normalize import after_last_equals, normalize_answer
from tempo_jax.rewards.quick_match import is_parseable_size, plain_number, quick_match


@pytest.mark.parametrize(
    "raw, expected",
    [
        (r"\dfrac12", r"\frac{1}{2}"),
        (r"\tfrac{1}{2}", r"\frac{1}{2}"),
        ("1/2", r"\frac{1}{2}"),
        (r"\frac 1 2", r"\frac{1}{2}"),
        (r"\sqrt2", r"\sqrt{2}"),
        (r"10\%", "10"),
        (r"\$5", "5"),
        (r"90^\circ", "90"),
        (r"90^{\circ}", "90"),
        ("x = 3", "3"),
        (r"\alpha=2", "2"),
        ("f(x)=2", "f(x)=2"),  # not a plain variable: kept
        ("(1, 2)", "(1,2)"),
        (r"\left( 1, 2 \right]", "(1,2]"),
        ("1,000", "1000"),
        (r"1{,}000", "1000"),
        (r"1\,000", "1000"),
        (r"\text{(A)}", "A"),
        ("(B)", "B"),
        (r"5\text{ cm}", "5"),
        (r"5 \text{ cm}^2", "5"),
        ("12 square feet", "12"),
        ("3.0", "3"),
        ("2.50", "2.5"),
        (".5", "0.5"),
        ("5.", "5"),
        (r"\pi r^2", r"\pi r^{2}"),
        (r"\text{even}", "even"),
        (r"\mathrm{i}", "i"),
        ("{{7}}", "7"),
        ("\u22122", "-2"),
        ("", ""),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_is_fast_on_huge_and_adversarial_input():
    inputs = [
        "1" * 100_000,
        "1." + "0" * 3990,  # long trailing zeros: the decimal rule must stay linear
        r"\frac" * 1000,
        "{" * 3000 + "}" * 3000,
        r"\text{" * 1000,
        "a " * 2000,
    ]
    for text in inputs:
        # This process's CPU time, not wall time: a loaded CI machine must not fail it.
        start = time.process_time()
        normalize_answer(text)
        assert time.process_time() - start < 0.5, text[:20]


def test_after_last_equals():
    assert after_last_equals("f(2) = 5") == "5"
    assert after_last_equals("a=b=7") == "7"
    assert after_last_equals("7") is None
    assert after_last_equals("x=") is None


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ("42", "42", True),
        ("0.5", r"\frac{1}{2}", True),
        (r"\frac{2}{4}", "1/2", True),  # unreduced fraction: equal by value
        ("1000", "1001", False),  # integers are exact: no tolerance
        ("0.3333", r"\frac13", True),  # a decimal: relative 1e-3
        ("0.33", r"\frac13", False),
        ("Yes", "yes", True),
        ("no", "on", False),
        (r"10\%", "0.1", None),  # percent: left to math-verify
        (r"\sqrt{2}", "1.41421", None),  # needs the parser
        ("", "1", False),
    ],
)
def test_quick_match(a, b, expected):
    assert quick_match(a, b) is expected


def test_plain_number_and_size_limits():
    assert plain_number("-12") == (-12, False)
    assert plain_number(r"-\frac{3}{4}")[0] == pytest.approx(-0.75)
    assert plain_number("0.25")[1] is True
    assert plain_number("x") is None
    assert plain_number(r"\frac{1}{0}") is None
    assert is_parseable_size("1+1")
    assert not is_parseable_size("1" * 1001)
    assert not is_parseable_size("(" * 41 + ")" * 41)
