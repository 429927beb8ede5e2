"""Last-box extraction: nesting, several boxes, malformed boxes, linear time on huge input."""

import time

import pytest

from tempo_jax.rewards.boxed import extract_boxed, unbox_ground_truth


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"The answer is \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{2}}{2}} is it", r"\frac{\sqrt{2}}{2}"),
        (r"first \boxed{1}, then \boxed{2}, finally \boxed{3}", "3"),
        (r"\fbox{7}", "7"),
        (r"\boxed{1} and \fbox{8}", "8"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not close the box
        (r"\boxed {5}", "5"),
        (r"so $\boxed 5$.", "5"),  # unbraced single token, as some models write
        (r"\boxed 12 apples", "12"),
        (r"\boxed{}", ""),
        (r"\boxed{a \\ b}", r"a \\ b"),  # a LaTeX line break inside
        ("no box at all", None),
        (r"\boxed{5", None),  # unbalanced
        (r"\boxed{1} then \boxed{2", None),  # the last box is malformed: no rescue
        (r"\boxed", None),
        (r"\boxed5", None),  # not a box command
        (r"\fboxsep=2pt \boxed{9}", "9"),  # \fboxsep is another command
        (r"\boxed{\boxed{6}}", "6"),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_boxed_rejects_non_strings():
    with pytest.raises(TypeError, match="expects str"):
        extract_boxed(b"\\boxed{1}")


@pytest.mark.parametrize(
    "text",
    [
        "x" * 100_000 + r"\boxed{1}",
        r"\boxed{" + "{" * 100_000 + "}" * 100_000 + "}",
        r"\boxed{" + "{" * 100_000,
        r"\boxed{1}" * 20_000,
    ],
    ids=["100kB-prefix", "100k-nested", "100k-unbalanced", "20k-boxes"],
)
def test_extract_boxed_is_fast_on_huge_input(text):
    # This process's CPU time, not wall time: a loaded CI machine must not fail it.
    start = time.process_time()
    extract_boxed(text)
    assert time.process_time() - start < 0.5


@pytest.mark.parametrize(
    "truth, expected",
    [
        (r"\boxed{42}", "42"),
        (" 42 ", "42"),
        (r"\frac{1}{2}", r"\frac{1}{2}"),
        (r"\boxed{3", r"\boxed{3"),
    ],
)
def test_unbox_ground_truth(truth, expected):
    assert unbox_ground_truth(truth) == expected
