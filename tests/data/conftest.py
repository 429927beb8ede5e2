"""Shared fixtures of the data tests: a task tokenizer and a small built-in dataset."""

import pytest

from tempo_jax.data import arithmetic, builders
from tempo_jax.data.train_tokenizer import train_task_tokenizer

# Small splits so that epochs wrap within a few batches.
SMALL_TASK = arithmetic.ArithmeticTaskConfig(seed=5, num_labeled=10, num_unlabeled=24, num_eval=6)


@pytest.fixture(scope="session")
def task_tokenizer_path(tmp_path_factory):
    """A SentencePiece model for the built-in task, trained here and saved as a .model file."""
    tok = train_task_tokenizer(
        arithmetic.ArithmeticTaskConfig(),
        vocab_size=320,
        num_problems=300,
        extra_lines=["Question: Answer: the"],
    )
    path = tmp_path_factory.mktemp("tok") / "arith.model"
    tok.save(path)
    return path


@pytest.fixture(scope="session")
def small_task():
    """The built-in task with tiny splits."""
    return SMALL_TASK


@pytest.fixture(scope="session")
def small_task_dir(tmp_path_factory):
    """SMALL_TASK built offline with tfds (array_record) in a temporary data_dir."""
    return builders.prepare_arithmetic(SMALL_TASK, tmp_path_factory.mktemp("tfds"))
