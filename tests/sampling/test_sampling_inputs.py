"""Prompt buckets, re-padding and input validation (all before any compile)."""

from __future__ import annotations

import numpy as np
import pytest
from compile_counter import CompileCounter
from sampling_helpers import VOCAB

from tempo_jax.sampling import SamplingParams, StopCriteria, default_buckets, left_pad_to
from tempo_jax.sampling.buckets import choose_bucket


def test_default_buckets_are_powers_of_two_up_to_the_max():
    assert default_buckets(100) == (16, 32, 64, 100)
    assert default_buckets(64) == (16, 32, 64)
    assert default_buckets(10) == (10,)
    assert choose_bucket(33, (16, 32, 64)) == 64
    assert choose_bucket(32, (16, 32, 64)) == 32
    with pytest.raises(ValueError, match="more than the largest prompt bucket 64"):
        choose_bucket(65, (16, 32, 64))


def test_left_pad_to_wider_and_narrower():
    tokens = np.asarray([[0, 0, 5, 6], [7, 8, 9, 10]], np.int32)
    mask = np.asarray([[0, 0, 1, 1], [1, 1, 1, 1]], np.int32)
    wide_tokens, wide_mask = left_pad_to(tokens, mask, 6, pad_id=3)
    np.testing.assert_array_equal(wide_tokens, [[3, 3, 3, 3, 5, 6], [3, 3, 7, 8, 9, 10]])
    np.testing.assert_array_equal(wide_mask, [[0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1]])
    narrow_tokens, narrow_mask = left_pad_to(tokens[:1], mask[:1], 2, pad_id=3)
    np.testing.assert_array_equal(narrow_tokens, [[5, 6]])
    np.testing.assert_array_equal(narrow_mask, [[1, 1]])


def _prompts():
    tokens = np.ones((2, 4), np.int32)
    mask = np.asarray([[0, 1, 1, 1], [1, 1, 1, 1]], np.int32)
    return tokens, mask


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t, m: m.__setitem__((1, 2), 0), "prompt row 1: prompt_mask .* not left-padded"),
        (lambda t, m: m.__setitem__((0, slice(None)), 0), "prompt row 0: empty prompt"),
        (lambda t, m: t.__setitem__((1, 3), VOCAB), "prompt row 1, column 3: token id 256"),
        (lambda t, m: t.__setitem__((0, 2), -1), "prompt row 0, column 2: token id -1"),
    ],
)
def test_bad_prompts_name_the_row(sampler, state, change, message):
    tokens, mask = _prompts()
    change(tokens, mask)
    with CompileCounter() as counter, pytest.raises(ValueError, match=message):
        sampler.generate(state, tokens, mask)
    assert counter.count == 0


def test_prompt_longer_than_the_largest_bucket(sampler, state):
    tokens = np.ones((1, 17), np.int32)
    with pytest.raises(ValueError, match="17 tokens, more than the largest prompt bucket 16"):
        sampler.generate(state, tokens, np.ones_like(tokens))


@pytest.mark.parametrize(
    "sampling, message",
    [
        (SamplingParams(top_k=33), r"top_k\[row 0\] \(prompt 0, sample 0\) = 33: .*max_top_k=32"),
        (
            SamplingParams(temperature=[1.0, -0.5]),
            r"temperature\[row 2\] \(prompt 1, sample 0\) = -0.5",
        ),
        (
            SamplingParams(top_p=np.asarray([1.0, 1.0, 1.5, 1.0])),
            r"top_p\[row 2\] \(prompt 1, sample 0\) = 1.5",
        ),
        (SamplingParams(top_k=[1, 2, 3]), r"top_k: expected a scalar, 2 values .* or 4"),
        (SamplingParams(top_k=2.5), r"top_k: expected integers"),
    ],
)
def test_bad_sampling_params_name_the_field_and_row(sampler, state, sampling, message):
    with pytest.raises(ValueError, match=message):
        sampler.generate(state, *_prompts(), n=2, sampling=sampling)


def test_bad_n_seed_and_stop_criteria(sampler, state):
    with pytest.raises(ValueError, match="n .* must be an int >= 1"):
        sampler.generate(state, *_prompts(), n=0)
    with pytest.raises(ValueError, match="seed must be in"):
        sampler.generate(state, *_prompts(), seed=-1)
    with pytest.raises(ValueError, match=r"stop_sequences\[1\] is empty"):
        StopCriteria.create(2, [[3, 4], []])
    with pytest.raises(ValueError, match=r"stop_sequences\[0\]\[1\] = 300"):
        StopCriteria.create(2, [[3, 300]], vocab_size=VOCAB)
    with pytest.raises(ValueError, match=r"eos_ids\[0\] = -2"):
        StopCriteria.create([-2])
