"""The built-in reasoning task: multi-step integer arithmetic with worked solutions.

A problem is a chain of binary operations applied left to right to a running value, e.g.

    question: What is 55+19-67?
    solution: 55+19=74
              74-67=7
              \\boxed{7}

The question is written with standard precedence; a `*` that follows a `+`/`-` chain wraps the
chain in parentheses, so left-to-right evaluation of the steps equals the usual reading. Each
solution line is one step `a<op>b=c` whose `a` is the previous `c`, and the last line is the boxed
answer. No spaces: with a digit-splitting tokenizer each step costs about nine tokens.

Measured lengths (1000 rows per split, the tokenizer of `python -m tempo_jax.data.train_tokenizer`
with its defaults: 306 pieces, digits split), in tokens, without EOS:

    split       solution mean / p95 / max     prompt "{question}\n" + BOS mean / max
    labeled     20.3 / 28 / 28                11.9 / 13
    unlabeled   27.6 / 36 / 36                14.0 / 15
    eval        20.5 / 28 / 28                12.0 / 13

so max_prompt_length 24 and a response length of 56 cover every row with room for the longer
chains a difficulty override asks for.

Why these defaults (measured with configs/tiny_arith.py's 1.7M-parameter model, 400 SFT steps on
`labeled`): `labeled` is 2-3 steps of +/- on single-digit operands (running values grow to two
digits, so carries still occur), `unlabeled` one step longer (3-4). After SFT the policy solves
80% of the `labeled` distribution greedily (the `eval` holdout; mean@8 0.66) but 34% of
`unlabeled` (mean@8 0.33, pass@8 0.55; `tempo-jax train --config=configs/tiny_arith.py`, step-0
eval): the middle, where a reward that tracks correctness has room to help. Each extra step is
another chance to slip and the 4-step chains are longer than anything seen in training, which is
what makes `unlabeled` a shifted distribution. Two-digit operands (the first choice) were too
hard for the same budget: 200 SFT steps left `labeled` at 7.8%. `eval` is the labeled holdout:
the `labeled` distribution with rows of its own, so critic quality is measured both in and out
of distribution. Harder: more steps, more digits, "*"; easier: fewer.

Every row is a pure function of (seed, split, index): a numpy Generator seeded with
`SeedSequence([seed, crc32(split), index])`, so any row can be regenerated alone.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterator

import numpy as np

_OPERATIONS = frozenset("+-*")
SPLITS = ("labeled", "unlabeled", "eval")


@dataclasses.dataclass(frozen=True)
class Difficulty:
    """Difficulty knobs of one split.

    Attributes:
      min_steps: fewest binary operations in a problem (>= 1).
      max_steps: most binary operations in a problem.
      min_digits: fewest decimal digits of an operand of + and -.
      max_digits: most decimal digits of an operand of + and -. The digit count is drawn uniformly,
        then the operand uniformly among numbers with that many digits (1 digit is 1-9: operands
        are never 0).
      operations: the operators drawn uniformly, a subset of "+-*".
      max_multiplier: the right operand of `*` is drawn from [2, max_multiplier] (keeps numbers
        short).
      allow_negative: if False, a subtraction never goes below zero: its operand is capped at the
        running value (drawn from [1, value] when the value is shorter than the drawn digit
        count), and a `-` drawn at value 0 becomes `+` (or `*` without `+`).
    """

    min_steps: int = 2
    max_steps: int = 3
    min_digits: int = 1
    max_digits: int = 1
    operations: str = "+-"
    max_multiplier: int = 9
    allow_negative: bool = False

    def __post_init__(self):
        if self.min_steps < 1:
            raise ValueError(f"Difficulty.min_steps must be >= 1, got {self.min_steps}")
        if self.max_steps < self.min_steps:
            raise ValueError(
                f"Difficulty.max_steps ({self.max_steps}) < min_steps ({self.min_steps})"
            )
        if not 1 <= self.min_digits <= self.max_digits <= 9:
            raise ValueError(
                "Difficulty needs 1 <= min_digits <= max_digits <= 9, got "
                f"{self.min_digits}, {self.max_digits}"
            )
        ops = set(self.operations)
        if not ops or not ops <= _OPERATIONS or len(ops) != len(self.operations):
            raise ValueError(
                f"Difficulty.operations must be distinct characters of '+-*', "
                f"got {self.operations!r}"
            )
        if self.max_multiplier < 2:
            raise ValueError(f"Difficulty.max_multiplier must be >= 2, got {self.max_multiplier}")


@dataclasses.dataclass(frozen=True)
class ArithmeticTaskConfig:
    """The built-in task: a seed, and a size and difficulty for each split.

    Defaults: `labeled` and the holdout `eval` 2-3 steps, `unlabeled` one step more (3-4), all
    +/- on single-digit operands (see the module docstring for the measurement behind them).
    """

    seed: int = 0
    num_labeled: int = 2048
    num_unlabeled: int = 256
    num_eval: int = 256
    labeled: Difficulty = Difficulty(min_steps=2, max_steps=3)
    unlabeled: Difficulty = Difficulty(min_steps=3, max_steps=4)
    eval: Difficulty = Difficulty(min_steps=2, max_steps=3)

    def __post_init__(self):
        if self.seed < 0:
            raise ValueError(f"ArithmeticTaskConfig.seed must be >= 0, got {self.seed}")
        for split in SPLITS:
            if self.size(split) < 1:
                raise ValueError(
                    f"ArithmeticTaskConfig.num_{split} must be >= 1, got {self.size(split)}"
                )

    def size(self, split: str) -> int:
        """Number of rows of `split`."""
        return {
            "labeled": self.num_labeled,
            "unlabeled": self.num_unlabeled,
            "eval": self.num_eval,
        }[_check_split(split)]

    def difficulty(self, split: str) -> Difficulty:
        """Difficulty knobs of `split`."""
        return getattr(self, _check_split(split))


@dataclasses.dataclass(frozen=True)
class Problem:
    """One generated problem.

    Attributes:
      question: the expression as a question, e.g. "What is 55+19-67?".
      solution: one line per step then `\\boxed{answer}`.
      answer: the final value as a decimal string.
      num_steps: the number of binary operations.
    """

    question: str
    solution: str
    answer: str
    num_steps: int


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; the built-in task has {SPLITS}")
    return split


def row_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator that owns row `index` of `split`: independent of every other row."""
    if index < 0:
        raise ValueError(f"row index must be >= 0, got {index}")
    key = [int(seed), zlib.crc32(split.encode("utf-8")), int(index)]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))


def _draw_operand(rng: np.random.Generator, d: Difficulty, cap: int | None) -> int:
    # Operands are >= 1: a 0 makes a step trivial and, under subtraction, collapses chains to 0.
    digits = int(rng.integers(d.min_digits, d.max_digits + 1))
    lo = 1 if digits == 1 else 10 ** (digits - 1)
    hi = 10**digits - 1
    if cap is not None and cap < hi:
        hi = cap
        if lo > hi:  # the running value is shorter than the drawn digit count
            lo = 1
    return int(rng.integers(lo, hi + 1))


def generate_problem(difficulty: Difficulty, rng: np.random.Generator) -> Problem:
    """Draws one problem from `difficulty` with `rng` (consumes a variable number of draws)."""
    d = difficulty
    num_steps = int(rng.integers(d.min_steps, d.max_steps + 1))
    value = _draw_operand(rng, d, cap=None)
    expression = str(value)
    chain_has_add_sub = False
    steps = []
    for _ in range(num_steps):
        op = d.operations[int(rng.integers(len(d.operations)))]
        if op == "-" and value < 1 and not d.allow_negative:
            # Nothing can be subtracted from 0 without going negative; add instead.
            op = "+" if "+" in d.operations else "*"
        if op == "*":
            operand = int(rng.integers(2, d.max_multiplier + 1))
            if chain_has_add_sub:
                expression = f"({expression})"
                chain_has_add_sub = False
            result = value * operand
        elif op == "+":
            operand = _draw_operand(rng, d, cap=None)
            result = value + operand
            chain_has_add_sub = True
        else:
            cap = None if d.allow_negative else value
            operand = _draw_operand(rng, d, cap=cap)
            result = value - operand
            chain_has_add_sub = True
        expression += f"{op}{operand}"
        steps.append(f"{value}{op}{operand}={result}")
        value = result
    solution = "\n".join(steps) + f"\n\\boxed{{{value}}}"
    return Problem(
        question=f"What is {expression}?", solution=solution, answer=str(value), num_steps=num_steps
    )


def problem_at(config: ArithmeticTaskConfig, split: str, index: int) -> Problem:
    """Row `index` of `split`: the same problem on every call, machine and process."""
    return generate_problem(config.difficulty(split), row_rng(config.seed, split, index))


def iter_split(config: ArithmeticTaskConfig, split: str) -> Iterator[tuple[int, Problem]]:
    """Yields (index, problem) for every row of `split` in index order.

    `labeled` skips any candidate whose question is also an `unlabeled` or `eval` question (the
    small single-digit question space would otherwise put ~5% of the test-time questions, with
    their answers, into D_L) and draws further indices until it has `num_labeled` rows, so its
    indices can have gaps. The other splits are exactly rows 0..size-1.
    """
    if split != "labeled":
        for index in range(config.size(split)):
            yield index, problem_at(config, split, index)
        return
    held_out = {
        problem_at(config, other, i).question
        for other in ("unlabeled", "eval")
        for i in range(config.size(other))
    }
    produced, index = 0, 0
    while produced < config.size(split):
        problem = problem_at(config, split, index)
        if problem.question not in held_out:
            yield index, problem
            produced += 1
        index += 1
        if index > 100 * config.size(split) + 1000:
            raise ValueError(
                f"labeled split: only {produced} of {config.size(split)} questions are not also "
                "unlabeled / eval questions; make the splits' difficulties differ or shrink them"
            )


def corpus_lines(config: ArithmeticTaskConfig, num_problems: int) -> Iterator[str]:
    """Text to train a tokenizer for the task: questions and solutions of every split.

    Rows are taken from a `corpus` stream of each split's difficulty (not the dataset rows), so the
    tokenizer is the same whatever the split sizes.
    """
    for split in SPLITS:
        for index in range(num_problems):
            problem = generate_problem(
                config.difficulty(split), row_rng(config.seed, f"corpus/{split}", index)
            )
            yield problem.question
            yield problem.solution
