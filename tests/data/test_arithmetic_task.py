"""The built-in task generator: determinism, step-by-step correctness, difficulty knobs."""

import ast
import operator
import re

import numpy as np
import pytest

from tempo_jax.data import arithmetic
from tempo_jax.data.arithmetic import ArithmeticTaskConfig, Difficulty, problem_at

_STEP = re.compile(r"^(-?\d+)([+\-*])(\d+)=(-?\d+)$")
_BOXED = re.compile(r"^\\boxed\{(-?\d+)\}$")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _evaluate(expression: str) -> int:
    """Standard-precedence value of an integer expression, through Python's parser (no eval)."""

    def walk(node):
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        raise AssertionError(f"unexpected node {ast.dump(node)} in {expression!r}")

    return walk(ast.parse(expression, mode="eval").body)


def _verify(problem: arithmetic.Problem, difficulty: Difficulty) -> None:
    """Recomputes every step of `problem` from its text alone."""
    m = re.fullmatch(r"What is ([0-9+\-*()]+)\?", problem.question)
    assert m, problem.question
    expression = m.group(1)
    numbers = [int(x) for x in re.findall(r"\d+", expression)]
    ops = re.findall(r"[+\-*]", expression)
    lines = problem.solution.split("\n")
    assert len(lines) == problem.num_steps + 1 == len(ops) + 1
    assert difficulty.min_steps <= problem.num_steps <= difficulty.max_steps
    running = numbers[0]
    for line, op, operand in zip(lines[:-1], ops, numbers[1:], strict=True):
        sm = _STEP.match(line)
        assert sm, line
        a, step_op, b, c = int(sm.group(1)), sm.group(2), int(sm.group(3)), int(sm.group(4))
        assert (a, step_op, b) == (running, op, operand), (line, problem)
        assert c == {"+": a + b, "-": a - b, "*": a * b}[op], line
        if not difficulty.allow_negative:
            assert c >= 0, line
        assert op in difficulty.operations
        if op == "*":
            assert 2 <= b <= difficulty.max_multiplier
        else:
            assert len(str(b)) <= difficulty.max_digits
        running = c
    bm = _BOXED.match(lines[-1])
    assert bm, lines[-1]
    assert int(bm.group(1)) == running == int(problem.answer)
    # The question read with standard precedence agrees with the left-to-right steps.
    assert _evaluate(expression) == running, problem


def test_rows_are_deterministic_by_seed_split_and_index():
    cfg = ArithmeticTaskConfig(seed=3)
    first = [problem_at(cfg, s, i) for s in arithmetic.SPLITS for i in range(50)]
    # Reverse order, a fresh config object, other split sizes: rows depend on (seed, split, index).
    again_cfg = ArithmeticTaskConfig(seed=3, num_labeled=7, num_unlabeled=9)
    again = [problem_at(again_cfg, s, i) for s in arithmetic.SPLITS for i in range(50)][::-1]
    assert first == again[::-1]
    other_seed = [
        problem_at(ArithmeticTaskConfig(seed=4), s, i) for s in arithmetic.SPLITS for i in range(50)
    ]
    assert sum(a == b for a, b in zip(first, other_seed, strict=True)) <= 2
    # Splits are distinct streams even where their difficulty is the same.
    unl = [problem_at(cfg, "unlabeled", i).question for i in range(200)]
    ev = [problem_at(cfg, "eval", i).question for i in range(200)]
    assert len(set(unl) & set(ev)) <= 2
    # D_L never contains a test-time or holdout question (13 of 256 D_U questions did before the
    # labeled split skipped them); it still has num_labeled rows, with gaps in its indices.
    default = ArithmeticTaskConfig()
    rows = list(arithmetic.iter_split(default, "labeled"))
    labeled = {p.question for _, p in rows}
    assert len(rows) == default.num_labeled and rows[-1][0] > default.num_labeled - 1
    for split in ("unlabeled", "eval"):
        questions = [p.question for _, p in arithmetic.iter_split(default, split)]
        assert len(questions) == default.size(split)
        assert not labeled & set(questions)
    # One-step questions number 126; 5000 holdout rows take them all, so D_L cannot be filled.
    one_step = Difficulty(min_steps=1, max_steps=1)
    exhausted = ArithmeticTaskConfig(num_labeled=50, num_eval=5000, labeled=one_step, eval=one_step)
    with pytest.raises(ValueError, match="only 0 of 50 questions"):
        list(arithmetic.iter_split(exhausted, "labeled"))
    assert list(arithmetic.iter_split(ArithmeticTaskConfig(num_eval=3), "eval")) == [
        (i, problem_at(ArithmeticTaskConfig(), "eval", i)) for i in range(3)
    ]


@pytest.mark.parametrize(
    "difficulty",
    [
        ArithmeticTaskConfig().labeled,
        ArithmeticTaskConfig().unlabeled,
        Difficulty(
            min_steps=1, max_steps=6, min_digits=1, max_digits=3, operations="+-*", max_multiplier=5
        ),
        Difficulty(
            min_steps=4,
            max_steps=5,
            min_digits=2,
            max_digits=2,
            operations="-+",
            allow_negative=True,
        ),
        Difficulty(min_steps=2, max_steps=2, operations="*", max_multiplier=3),
    ],
)
def test_every_solution_step_recomputes(difficulty):
    for index in range(400):
        problem = arithmetic.generate_problem(difficulty, arithmetic.row_rng(0, "t", index))
        _verify(problem, difficulty)


def test_default_splits_verify_and_saw_every_operation():
    cfg = ArithmeticTaskConfig()
    seen_ops = set()
    for split in arithmetic.SPLITS:
        for i in range(300):
            p = problem_at(cfg, split, i)
            _verify(p, cfg.difficulty(split))
            seen_ops |= set(re.findall(r"[+\-*]", p.question))
    assert seen_ops == {"+", "-"}


def _stats(difficulty, n=400):
    problems = [
        arithmetic.generate_problem(difficulty, arithmetic.row_rng(1, "k", i)) for i in range(n)
    ]
    return (
        float(np.mean([p.num_steps for p in problems])),
        float(np.mean([len(p.solution) for p in problems])),
        float(np.mean([len(x) for p in problems for x in re.findall(r"\d+", p.question)])),
        problems,
    )


def test_difficulty_knobs_change_measured_difficulty():
    cfg = ArithmeticTaskConfig()
    lab_steps, lab_len, _, _ = _stats(cfg.labeled)
    unl_steps, unl_len, _, _ = _stats(cfg.unlabeled)
    assert 2.3 < lab_steps < 2.7 and 3.3 < unl_steps < 3.7
    assert unl_len > lab_len * 1.25
    _, len1, dig1, _ = _stats(Difficulty(min_digits=1, max_digits=1))
    _, len3, dig3, _ = _stats(Difficulty(min_digits=3, max_digits=3))
    assert dig1 == 1.0 and dig3 > 2.5 and len3 > len1 * 1.5
    _, _, _, with_mul = _stats(Difficulty(operations="+*"))
    assert any("*" in p.question for p in with_mul)
    assert any("(" in p.question for p in with_mul)  # `*` after a `+` chain is parenthesised
    assert not any("*" in p.question for p in _stats(Difficulty(operations="+-"))[3])
    _, _, _, neg = _stats(Difficulty(min_steps=4, max_steps=4, allow_negative=True))
    assert any(int(p.answer) < 0 for p in neg)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"min_steps": 0}, "min_steps"),
        ({"min_steps": 3, "max_steps": 2}, "max_steps"),
        ({"min_digits": 0}, "min_digits"),
        ({"operations": "+/"}, "operations"),
        ({"operations": "++"}, "operations"),
        ({"max_multiplier": 1}, "max_multiplier"),
    ],
)
def test_bad_difficulty_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Difficulty(**kwargs)


def test_bad_task_config_and_split():
    with pytest.raises(ValueError, match="num_unlabeled"):
        ArithmeticTaskConfig(num_unlabeled=0)
    with pytest.raises(ValueError, match="unknown split 'train'"):
        problem_at(ArithmeticTaskConfig(), "train", 0)
