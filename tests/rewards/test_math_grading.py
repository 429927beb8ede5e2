"""The grading table (TEMPO_ALGORITHM.md §5) through the public API and a worker pool."""

import pathlib
import time

import numpy as np
import pytest

from tempo_jax.rewards import math as math_reward


def boxed(answer: str) -> str:
    return f"Some reasoning... so the answer is $\\boxed{{{answer}}}$."


# (response, ground truth, expected): equivalent forms that must pass.
EQUIVALENT = [
    (boxed(r"\frac{1}{2}"), "0.5"),
    (boxed("0.5"), r"\frac{1}{2}"),
    (boxed("1/2"), r"\frac{1}{2}"),
    (boxed(r"\dfrac12"), "0.5"),
    (boxed(r"\tfrac{1}{2}"), "1/2"),
    (boxed(r"\frac{2}{4}"), r"\frac{1}{2}"),  # unreduced fraction: equal by value
    (boxed(r"\frac{3}{2}"), "1.5"),
    (boxed(r"10\%"), "10"),
    (boxed("10%"), "10"),
    (boxed(r"10\%"), "0.1"),  # math-verify reads the percent sign
    (boxed(r"\$5"), "5"),
    (boxed(r"\$5.00"), "5"),
    (boxed(r"90^\circ"), "90"),
    (boxed(r"90^{\circ}"), "90"),
    (boxed("x=3"), "3"),
    (boxed("x = 3"), "3"),
    (boxed("3"), "x=3"),
    (boxed("(1,2)"), "(1, 2)"),
    (boxed(r"\left(1, 2\right)"), "(1,2)"),
    (boxed(r"\sqrt{2}/2"), r"\frac{\sqrt2}{2}"),
    (boxed(r"\frac{1}{\sqrt{2}}"), r"\frac{\sqrt{2}}{2}"),
    (boxed(r"2\sqrt{2}"), r"\sqrt{8}"),
    (boxed("1,000"), "1000"),
    (boxed(r"1{,}000"), "1000"),
    (boxed(r"\text{(A)}"), "A"),
    (boxed("(C)"), r"\text{C}"),
    (boxed("[1, 2)"), "[1,2)"),
    (boxed(r"(-\infty, 3]"), r"(-\infty,3]"),
    (boxed(r"(-\infty,1)\cup(2,\infty)"), r"(2,\infty)\cup(-\infty,1)"),
    (boxed(r"\{2, 1\}"), r"\{1,2\}"),
    (boxed("2, 1"), "1, 2"),  # a bare list of solutions: any order
    (boxed("(1/2, 3)"), "(0.5, 3)"),  # tuples element-wise
    (boxed("3.0"), "3"),
    (boxed(r"5\text{ cm}"), "5"),
    (boxed("12 square feet"), "12"),
    (boxed("(x+1)^2"), "x^2+2x+1"),
    (boxed(r"\frac{\pi}{3}"), r"\frac{1}{3}\pi"),
    (boxed("0.3333"), r"\frac13"),  # a decimal: relative tolerance 1e-3
    (boxed("3.1416"), r"\pi"),
    (boxed("f(2) = 5"), "5"),  # retry after the last '='
    (boxed(r"\text{even}"), "even"),
    (boxed("Yes"), "yes"),
    (boxed("3i+2"), "2+3i"),
    (boxed(r"e^{i\pi}"), "-1"),
    (boxed("10^{6}"), "1000000"),
    (boxed("42"), r"\boxed{42}"),  # boxed ground truth
    (boxed("42"), 42),  # numeric ground truth
    (boxed(r"\begin{pmatrix}1\\ 2\end{pmatrix}"), r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
    (boxed(r"x \le 3"), r"x\leq 3"),
    (r"so $\boxed 7$.", "7"),  # unbraced box token
    (boxed(r"2\frac{1}{2}"), r"\frac{5}{2}"),  # a mixed number
    (boxed(r"\gamma+1"), r"1+\gamma"),  # a symbol, not the gamma function of +1
]

# Near-misses that must fail.
NEAR_MISSES = [
    (boxed("0.33"), r"\frac13"),  # 1% off: beyond 1e-3
    (boxed("2"), "-2"),
    (boxed("(1,2)"), "(2,1)"),  # tuples are ordered
    (boxed("12"), "1.2"),
    (boxed("1001"), "1000"),  # exact values: no tolerance
    (boxed("999"), "1000"),
    (boxed(r"\frac{333}{1000}"), r"\frac13"),
    (boxed("[1,2]"), "(1,2)"),  # brackets matter for intervals
    (boxed("(1,2]"), "(1,2)"),
    (boxed(r"\{1,2\}"), r"\{1,2,3\}"),
    (boxed("1,2"), "1,2,3"),
    (boxed("x^2+2x+1"), "y^2+2y+1"),  # other variable
    (boxed("x+1"), "x-1"),
    (boxed(r"\sqrt{2}"), r"\sqrt{3}"),
    (boxed("3.1"), r"\pi"),
    (boxed(r"2\pi"), r"\pi"),
    (boxed("A"), "B"),
    (boxed("no"), "on"),  # words are never parsed as products of letters
    (boxed("odd"), "even"),
    (boxed("x+y = 5"), "x+y"),
    (boxed(r"2\frac{1}{2}"), "1"),  # not 2 * 1/2
]

# Malformed boxes and several boxes: (response, truth, expected).
BOXES = [
    (r"the answer is \boxed{5", "5", False),  # unbalanced
    ("the answer is 5", "5", False),  # no box
    (r"\boxed{}", "5", False),  # empty box
    (r"\boxed{5} or maybe \boxed{6", "5", False),  # the last box is malformed
    (r"\boxed5", "5", False),
    (r"\boxed{4} no wait, \boxed{5}", "5", True),  # the last box counts
    (r"\boxed{5} no wait, \boxed{4}", "5", False),
    (r"\fbox{4} hmm \boxed{5}", "5", True),
    (r"\boxed{4} hmm \fbox{5}", "5", True),
]

# Several ground truths: correct iff the fraction matched is > 0.5.
SEVERAL_TRUTHS = [
    (boxed("3"), ["3", "3.0", "2"], True, 2 / 3),
    (boxed("3"), ["3", "2"], False, 0.5),
    (boxed("3"), ["3"], True, 1.0),
    (boxed("3"), [3, r"\boxed{3}"], True, 1.0),
    (boxed("3"), ["1", "2"], False, 0.0),
]


def _case_id(case) -> str:
    return f"{str(case[0])[-30:]}~{case[1]}"


@pytest.mark.parametrize("response, truth", EQUIVALENT, ids=[_case_id(c) for c in EQUIVALENT])
def test_equivalent_forms_pass(response, truth, grading_pool):
    assert math_reward.grade(response, truth, pool=grading_pool) is True


@pytest.mark.parametrize("response, truth", NEAR_MISSES, ids=[_case_id(c) for c in NEAR_MISSES])
def test_near_misses_fail(response, truth, grading_pool):
    assert math_reward.grade(response, truth, pool=grading_pool) is False


@pytest.mark.parametrize("response, truth, expected", BOXES, ids=[_case_id(c) for c in BOXES])
def test_malformed_and_several_boxes(response, truth, expected, grading_pool):
    assert math_reward.grade(response, truth, pool=grading_pool) is expected


@pytest.mark.parametrize(
    "response, truths, expected, fraction", SEVERAL_TRUTHS, ids=[str(c[1]) for c in SEVERAL_TRUTHS]
)
def test_several_ground_truths(response, truths, expected, fraction, grading_pool):
    assert math_reward.grade(response, truths, pool=grading_pool) is expected
    assert math_reward.grade_fraction(response, truths, pool=grading_pool) == pytest.approx(
        fraction, abs=1e-6
    )


def test_table_is_large_enough():
    assert len(EQUIVALENT) + len(NEAR_MISSES) + len(BOXES) + len(SEVERAL_TRUTHS) >= 60


def test_grade_batch_rewards_and_counters(grading_pool):
    responses = [boxed("0.5"), "no box here", boxed(r"\sqrt{2}/2"), boxed("7"), boxed("3")]
    truths = [r"\frac12", "1", r"\frac{\sqrt{2}}{2}", "8", ["3", "3", "4"]]
    graded = math_reward.grade_batch(responses, truths, pool=grading_pool)
    assert graded.rewards.dtype == np.float32 and graded.rewards.shape == (5,)
    np.testing.assert_array_equal(graded.rewards, [1, -1, 1, -1, 1])
    np.testing.assert_allclose(graded.fractions, [1, 0, 1, 0, 2 / 3], rtol=1e-6)
    c = graded.counters
    assert (c.items, c.no_box, c.fast_path, c.pool_tasks) == (5, 1, 3, 1)
    assert (c.timeouts, c.crashes, c.errors) == (0, 0, 0)


def test_grade_batch_input_errors(grading_pool):
    with pytest.raises(ValueError, match="2 responses but 1 ground truths"):
        math_reward.grade_batch(["a", "b"], ["1"], pool=grading_pool)
    with pytest.raises(TypeError, match="row 1: ground truth must be"):
        math_reward.grade_batch([boxed("1"), boxed("2")], ["1", None], pool=grading_pool)
    with pytest.raises(TypeError, match="row 0: response must be str"):
        math_reward.grade_batch([b"\\boxed{1}"], ["1"], pool=grading_pool)
    with pytest.raises(TypeError, match="ground truth must be"):
        math_reward.grade(boxed("1"), [], pool=grading_pool)


PATHOLOGICAL = [
    (boxed(r"9^{9^{9^{9}}}"), "3"),  # refused by the parser's size guard
    (boxed(r"\lfloor 9^{9^{9}} \rfloor"), "3"),  # parser refuses \lfloor; math-verify hangs
    (boxed("1+" * 50_000 + "1"), "100001"),  # a 100 kB answer
    ("x" * 100_000, "1"),  # a 100 kB response without a box
    (boxed("{" * 50_000 + "2" + "}" * 50_000), "1"),  # deeply nested braces
    (boxed("(" * 300 + "2" + ")" * 300), "2"),
    (r"\boxed{" + "{" * 100_000, "1"),  # deeply nested and unbalanced
]


@pytest.mark.parametrize("response, truth", PATHOLOGICAL, ids=range(len(PATHOLOGICAL)))
def test_pathological_answers_are_wrong_within_the_limit(response, truth, grading_pool):
    timeout_s = 2.0
    grading_pool.wait_ready()  # time the item, not a replacement worker's start-up
    start = time.perf_counter()
    graded = math_reward.grade_batch([response], [truth], pool=grading_pool, timeout_s=timeout_s)
    elapsed = time.perf_counter() - start
    assert graded.rewards[0] == -1.0
    # One timeout at most, plus killing the worker; never a hang.
    assert elapsed < timeout_s + 1.5, elapsed


def test_math_verify_hang_is_cut_by_the_pool_timeout(grading_pool):
    grading_pool.wait_ready()
    start = time.perf_counter()
    responses = [boxed(r"\lfloor 9^{9^{9}} \rfloor"), boxed("0.5")]
    graded = math_reward.grade_batch(responses, ["3", r"\frac12"], pool=grading_pool, timeout_s=1.0)
    elapsed = time.perf_counter() - start
    np.testing.assert_array_equal(graded.rewards, [-1, 1])
    assert graded.counters.timeouts == 1
    assert 1.0 <= elapsed < 3.0, elapsed
    # The pool still grades afterwards.
    assert math_reward.grade(boxed(r"\sqrt{4}"), "2", pool=grading_pool)


def test_model_text_is_never_evaluated(tmp_path, grading_pool):
    marker = pathlib.Path(tmp_path) / "pwned"
    payloads = [
        f"__import__('os').system('touch {marker}')",
        f"exec(\"open('{marker}', 'w')\")",
        f"eval(\"__import__('os').system('touch {marker}')\")",
    ]
    for payload in payloads:
        assert not math_reward.grade(boxed(payload), "0", pool=grading_pool)
        assert not math_reward.grade(boxed("0"), payload, pool=grading_pool)
        assert not math_reward.answers_equivalent(payload, "1", pool=grading_pool)
    assert not marker.exists()


def test_no_eval_in_the_grader_sources():
    """The grader modules never call eval/exec/sympify/parse_expr or unpickle anything."""
    root = pathlib.Path(math_reward.__file__).parent
    names = [
        "boxed",
        "latex_normalize",
        "quick_match",
        "expression_parser",
        "equivalence",
        "grading_pool",
        "grading_worker",
        "clusters",
        "math",
    ]
    forbidden = [
        "eval(",
        "exec(",
        "sympify(",
        "parse_expr(",
        "import pickle",
        "pickle.",
        "ExprExtractionConfig",
    ]
    for name in names:
        source = (root / f"{name}.py").read_text()
        for word in forbidden:
            assert word not in source, f"{name}.py contains {word}"
