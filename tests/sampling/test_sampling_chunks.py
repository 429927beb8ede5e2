"""Rollouts in row chunks: the same tokens as one call, one executable for every chunk."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from sampling_helpers import MAX_NEW, PAD, UNUSED_EOS, VOCAB

from tempo_jax.sampling import Sampler, SamplingParams, chunk_prompts

SAMPLED = SamplingParams(temperature=1.0, top_k=0, top_p=0.95)
FIELDS = ("tokens", "response_mask", "lengths", "finish_reason", "logprobs", "group_ids")


def _prompts(count: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, VOCAB - 1, size=(count, 10)).astype(np.int32)
    mask = np.ones((count, 10), np.int32)
    for i in range(count):
        mask[i, : i % 4] = 0
    tokens[mask == 0] = PAD
    return tokens, mask


def _sampler(policy, rows=None, eos=(UNUSED_EOS,)):
    return Sampler(
        policy,
        max_new_tokens=MAX_NEW,
        prompt_buckets=(16,),
        eos_ids=eos,
        pad_id=PAD,
        max_top_k=32,
        max_rows_per_chunk=rows,
    )


def test_chunked_rollouts_equal_one_call_token_for_token(policy, state):
    """5 prompts x 3 samples in chunks of 2 prompts (the last one padded) = one call of 15 rows."""
    tokens, mask = _prompts(5)
    whole = _sampler(policy).generate(state, tokens, mask, n=3, sampling=SAMPLED, seed=7)
    chunked_sampler = _sampler(policy, rows=7)  # 7 // 3 = 2 prompts per chunk
    chunked = chunked_sampler.generate(state, tokens, mask, n=3, sampling=SAMPLED, seed=7)
    assert chunked_sampler.compiled_shapes == ((2, 3, 16),)  # three calls, one executable
    for name in FIELDS:
        want, got = np.asarray(getattr(whole, name)), np.asarray(getattr(chunked, name))
        assert got.shape == want.shape, name
        if name == "logprobs":
            np.testing.assert_allclose(got, want, atol=1e-5)
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)
    # Sampled, not degenerate: rows of one prompt differ, so row keys really are per row.
    assert len({tuple(r) for r in np.asarray(whole.tokens)[:3]}) > 1


def test_chunks_whose_rows_stop_at_different_steps_equal_one_call(policy, state):
    """An EOS that greedy decoding hits at once for prompt 0 only: one-row chunks (each decode
    loop exits when its own row stops) give the rows of one call, early stop included."""
    tokens, mask = _prompts(4, seed=3)
    greedy = SamplingParams(greedy=True)
    probe = _sampler(policy).generate(state, tokens, mask, n=1, sampling=greedy, seed=0)
    eos = int(np.asarray(probe.tokens)[0, 0])
    whole = _sampler(policy, eos=(eos,)).generate(state, tokens, mask, sampling=greedy, seed=0)
    chunked = _sampler(policy, rows=1, eos=(eos,)).generate(
        state, tokens, mask, sampling=greedy, seed=0
    )
    lengths = np.asarray(chunked.lengths)
    assert lengths[0] == 1 and lengths.max() == MAX_NEW
    for name in FIELDS:
        np.testing.assert_allclose(
            np.asarray(getattr(chunked, name)), np.asarray(getattr(whole, name)), atol=1e-5
        )


class _StopAfter(Exception):
    """Raised by `_Log` to stop a call between chunks, as a preemption would."""


class _Log:
    """A ChunkLog that keeps chunks in a dict and stops the call after `stop_after` new ones."""

    def __init__(self, kept=None, stop_after=None):
        self.kept, self.sampled, self.stop_after = dict(kept or {}), [], stop_after

    def chunk(self, index, sample):
        if index not in self.kept:
            self.kept[index] = sample()
            self.sampled.append(index)
            if len(self.sampled) == self.stop_after:
                raise _StopAfter
        return self.kept[index]


def test_a_call_stopped_between_chunks_continues_with_the_kept_ones_bitwise(policy, state):
    """5 prompts x 3 samples in 3 chunks: stopped after chunk 1, the resumed call samples only
    chunk 2 and returns exactly the arrays of an uninterrupted (chunk-logged or plain) call."""
    tokens, mask = _prompts(5)
    sampler = _sampler(policy, rows=7)
    plain = sampler.generate(state, tokens, mask, n=3, sampling=SAMPLED, seed=7)
    first = _Log(stop_after=2)
    with pytest.raises(_StopAfter):
        sampler.generate(state, tokens, mask, n=3, sampling=SAMPLED, seed=7, chunk_log=first)
    assert first.sampled == [0, 1]
    second = _Log(kept=first.kept)
    resumed = sampler.generate(state, tokens, mask, n=3, sampling=SAMPLED, seed=7, chunk_log=second)
    assert second.sampled == [2]
    assert [int(np.asarray(second.kept[i].group_ids).min()) for i in range(3)] == [0, 2, 4]
    for name in FIELDS + ("prompt_tokens", "sampling_logprobs"):
        want, got = np.asarray(getattr(plain, name)), np.asarray(getattr(resumed, name))
        assert want.dtype == got.dtype and np.array_equal(want, got), name
    # One chunk of the whole batch goes through the log too (a rollout phase of one chunk).
    one = _Log()
    whole = _sampler(policy).generate(state, tokens, mask, n=3, sampling=SAMPLED, seed=7)
    logged = _sampler(policy).generate(
        state, tokens, mask, n=3, sampling=SAMPLED, seed=7, chunk_log=one
    )
    assert one.sampled == [0]
    for name in FIELDS:
        assert np.array_equal(np.asarray(getattr(whole, name)), getattr(logged, name)), name


def test_chunk_size_validation_and_no_padding_for_a_short_batch(policy, state):
    sampler = _sampler(policy, rows=4)
    tokens, mask = _prompts(3)
    with pytest.raises(ValueError, match="max_rows_per_chunk"):
        sampler.generate(state, tokens, mask, n=5)
    with pytest.raises(ValueError, match="max_rows_per_chunk"):
        _sampler(policy, rows=0)
    assert sampler.prompts_per_chunk(3, 2) == 2
    assert sampler.prompts_per_chunk(1, 2) == 1  # a short batch is not padded up to a chunk
    # Over 8 row shards: chunks of whole groups whose rows divide (4 prompts x 2 = 8 rows), a
    # short batch padded only to the shards' multiple, and a chunk too small for one such
    # group named.
    assert chunk_prompts(30, 2, 8, 20) == 8 and chunk_prompts(3, 2, 8, 20) == 4
    assert chunk_prompts(31, 16, 8) == 31 and chunk_prompts(31, 1, 8) == 32
    with pytest.raises(ValueError, match="max_rows_per_chunk=6 rows hold 3 prompts"):
        chunk_prompts(30, 2, 8, 6)
    # One prompt x 1 sample: the shape of the one-row chunks above (no new executable).
    out = sampler.generate(state, tokens[:1], mask[:1], n=1, sampling=SAMPLED, seed=1)
    assert sampler.compiled_shapes == ((1, 1, 16),)
    assert isinstance(out.tokens, jax.Array) and out.tokens.shape == (1, MAX_NEW)
