"""Rollouts of a tiny policy: teacher-forced parity, stopping, edge shapes, determinism, compiles.

Teacher-forced parity: one full forward pass over prompt + response must reproduce, at every
response step, the greedy token (argmax) and the returned untempered log-probs (fp32, < 1e-5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_counter import CompileCounter
from flax import nnx
from sampling_helpers import (
    MAX_NEW,
    PAD,
    UNUSED_EOS,
    VOCAB,
    expected_end,
    log_softmax,
    teacher_forced_logits,
    weight_shaped_ops_in_loop,
)

import tempo_jax.models as tm
from tempo_jax.sampling import (
    FINISH_EOS,
    FINISH_LENGTH,
    FINISH_STOP,
    Sampler,
    SamplingParams,
    StopCriteria,
)

SAMPLED = SamplingParams(
    temperature=np.asarray([0.8, 1.0, 1.2], np.float32),
    top_k=np.asarray([0, 10, 0], np.int32),
    top_p=np.asarray([1.0, 1.0, 0.9], np.float32),
)


@pytest.fixture(scope="module")
def greedy(sampler, state, prompts):
    return sampler.generate(state, *prompts, sampling=SamplingParams(greedy=True), seed=0)


@pytest.fixture(scope="module")
def sampled(sampler, state, prompts):
    return sampler.generate(state, *prompts, sampling=SAMPLED, seed=5)


def _check_after_end(rollouts):
    mask = np.asarray(rollouts.response_mask)
    lengths = np.asarray(rollouts.lengths)
    np.testing.assert_array_equal(mask, np.arange(mask.shape[1])[None, :] < lengths[:, None])
    assert np.all(np.asarray(rollouts.tokens)[mask == 0] == PAD)
    assert np.all(np.asarray(rollouts.logprobs)[mask == 0] == 0.0)
    assert np.all(np.asarray(rollouts.sampling_logprobs)[mask == 0] == 0.0)


def test_greedy_matches_full_forward_at_every_step(policy, greedy):
    tokens = np.asarray(greedy.tokens)
    assert tokens.shape == (3, MAX_NEW)
    assert not np.any(tokens == UNUSED_EOS)  # so every step of every row is compared
    np.testing.assert_array_equal(greedy.lengths, [MAX_NEW] * 3)
    np.testing.assert_array_equal(greedy.finish_reason, [FINISH_LENGTH] * 3)
    logits = teacher_forced_logits(policy, greedy)
    np.testing.assert_array_equal(tokens, np.argmax(logits, axis=-1))
    expected = np.take_along_axis(log_softmax(logits), tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(greedy.logprobs), expected, atol=1e-5, rtol=0)
    assert np.all(np.asarray(greedy.sampling_logprobs) == 0.0)
    # The prompt the sampler fed is the input, left-padded to bucket 16.
    assert greedy.prompt_tokens.shape == (3, 16)
    np.testing.assert_array_equal(np.asarray(greedy.prompt_mask).sum(1), [12, 9, 5])


def test_sampled_logprobs_match_full_forward(policy, sampled):
    tokens = np.asarray(sampled.tokens)
    logits = teacher_forced_logits(policy, sampled)
    full = log_softmax(logits)
    mask = np.asarray(sampled.response_mask).astype(bool)
    expected = np.take_along_axis(full, tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(sampled.logprobs)[mask], expected[mask], atol=1e-5)
    # sampling_logprobs: the token's log-prob after temperature, top-k and top-p, renormalised.
    temperature, top_k, top_p = SAMPLED.temperature, SAMPLED.top_k, SAMPLED.top_p
    for row in range(3):
        for t in range(int(sampled.lengths[row])):
            scaled = logits[row, t] / temperature[row]
            order = np.argsort(-scaled)
            limited = top_k[row] > 0 or top_p[row] < 1
            keep = order[: (top_k[row] or 32)] if limited else order  # 32 = max_top_k
            probs = np.exp(log_softmax(scaled[keep]))
            if top_p[row] < 1:
                count = max(1, int(np.sum(np.cumsum(probs) - probs < top_p[row])))
                keep, probs = keep[:count], probs[:count] / probs[:count].sum()
            assert tokens[row, t] in keep, (row, t)
            expected_lp = np.log(probs[list(keep).index(tokens[row, t])])
            assert abs(float(sampled.sampling_logprobs[row, t]) - expected_lp) < 1e-4, (row, t)
    _check_after_end(sampled)


def test_same_seed_same_tokens_other_seed_other_tokens(sampler, state, prompts, sampled):
    again = sampler.generate(state, *prompts, sampling=SAMPLED, seed=5)
    np.testing.assert_array_equal(again.tokens, sampled.tokens)
    other = sampler.generate(state, *prompts, sampling=SAMPLED, seed=6)
    assert np.mean(np.asarray(other.tokens) != np.asarray(sampled.tokens)) > 0.3


def test_rows_stop_at_different_steps_on_eos_and_stop_sequence(sampler, state, prompts, greedy):
    full = np.asarray(greedy.tokens)
    eos = (int(full[0, 2]),)
    stop_sequences = ((int(full[1, 4]), int(full[1, 5])),)
    stop = StopCriteria.create(eos, stop_sequences, vocab_size=VOCAB)
    out = sampler.generate(state, *prompts, sampling=SamplingParams(greedy=True), seed=0, stop=stop)
    expected = [expected_end(full[row], eos, stop_sequences, MAX_NEW) for row in range(3)]
    np.testing.assert_array_equal(out.lengths, [e[0] for e in expected])
    np.testing.assert_array_equal(out.finish_reason, [e[1] for e in expected])
    # This model's greedy continuations give one row per reason, ending at different steps.
    assert sorted(r for _, r in expected) == [FINISH_EOS, FINISH_STOP, FINISH_LENGTH]
    assert len({length for length, _ in expected}) == 3
    mask = np.asarray(out.response_mask).astype(bool)
    # Up to the end (EOS / stop tokens included) the rows are the unstopped greedy rows.
    np.testing.assert_array_equal(np.asarray(out.tokens)[mask], full[mask])
    np.testing.assert_allclose(
        np.asarray(out.logprobs)[mask], np.asarray(greedy.logprobs)[mask], atol=1e-6
    )
    _check_after_end(out)


def test_batch_of_one_prompt_filling_its_bucket(policy, sampler, state):
    tokens = np.arange(1, 9, dtype=np.int32)[None, :] * 7 % VOCAB
    out = sampler.generate(
        state, tokens, np.ones_like(tokens), sampling=SamplingParams(greedy=True)
    )
    assert out.tokens.shape == (1, MAX_NEW)
    np.testing.assert_array_equal(out.prompt_tokens, tokens)  # bucket 8: no padding at all
    np.testing.assert_array_equal(out.prompt_mask, np.ones_like(tokens))
    logits = teacher_forced_logits(policy, out)
    length = int(out.lengths[0])
    np.testing.assert_array_equal(out.tokens[0, :length], np.argmax(logits[0, :length], -1))
    assert (1, 1, 8) in sampler.compiled_shapes  # (B, n, bucket)


def test_max_new_tokens_one_and_several_eos_ids(policy, state, prompts):
    unused = (UNUSED_EOS, UNUSED_EOS - 1)
    sampler = Sampler(policy, max_new_tokens=1, prompt_buckets=(16,), eos_ids=unused, pad_id=PAD)
    out = sampler.generate(state, *prompts, sampling=SamplingParams(greedy=True))
    assert out.tokens.shape == (3, 1)
    np.testing.assert_array_equal(out.lengths, [1, 1, 1])
    np.testing.assert_array_equal(out.finish_reason, [FINISH_LENGTH] * 3)
    logits = teacher_forced_logits(policy, out)
    np.testing.assert_array_equal(out.tokens[:, 0], np.argmax(logits[:, 0], -1))
    expected = np.take_along_axis(log_softmax(logits[:, 0]), np.asarray(out.tokens), -1)
    np.testing.assert_allclose(out.logprobs, expected, atol=1e-5)

    # Either of two EOS ids ends a row (rows 0 and 1 here); an EOS is a response token.
    first = [int(t) for t in out.tokens[:, 0]]
    assert first[2] not in first[:2]
    stop = StopCriteria.create(first[:2], vocab_size=VOCAB)
    ended = sampler.generate(state, *prompts, sampling=SamplingParams(greedy=True), stop=stop)
    np.testing.assert_array_equal(ended.finish_reason, [FINISH_EOS, FINISH_EOS, FINISH_LENGTH])
    np.testing.assert_array_equal(ended.tokens, out.tokens)
    np.testing.assert_array_equal(ended.response_mask, [[1], [1], [1]])
    assert sampler.num_compilations == 1


def test_new_values_never_recompile(sampler, state, prompts, greedy, sampled):
    compiled = sampler.num_compilations
    other_state = jax.tree.map(lambda x: x * 1.01, state)
    settings = [
        SamplingParams(temperature=0.3, top_k=5, top_p=0.5),
        SamplingParams(temperature=np.asarray([0.0, 2.0, 0.5]), top_k=[3, 0, 32], top_p=0.99),
        SamplingParams(greedy=[True, False, True], temperature=1.5),
    ]
    with CompileCounter() as counter:
        for i, setting in enumerate(settings):
            for params in (state, other_state):
                out = sampler.generate(params, *prompts, sampling=setting, seed=100 + i)
        changed_stop = StopCriteria.create((3,), ((4, 5),), vocab_size=VOCAB)
        sampler.generate(state, *prompts, sampling=SAMPLED, seed=1, stop=changed_stop)
        jax.block_until_ready(out)
    assert counter.count == 0
    assert sampler.num_compilations == compiled
    # And new parameter values do change the output (they are really used).
    moved = sampler.generate(other_state, *prompts, sampling=SAMPLED, seed=5)
    assert not np.array_equal(np.asarray(moved.logprobs), np.asarray(sampled.logprobs))


def test_no_weight_recast_or_resliced_inside_the_decode_loop(sampler, state, greedy):
    """The compiled decode loop never converts or slices a weight (nor a layer of one): weights
    are cast and sliced per layer once, before the loop.

    The only weight-shaped work XLA:CPU leaves in the loop is a layout copy of each layer's
    o_proj [H, Dh, D] as [Dh, H, D] for the model's attention-output einsum (btnh,nhd->btd);
    it is pinned here so that anything else shows up.
    """
    weights = jax.tree.leaves(state)
    executable = next(e for key, e in sampler._executables.items() if key[:3] == (3, 1, 16))
    found = weight_shaped_ops_in_loop(executable.as_text(), weights)
    o_proj = state["model"]["layers"]["o_proj"][...].shape[1:]  # [H, Dh, D]
    layout_copy = (o_proj[1], o_proj[0], o_proj[2])
    assert {op for op, _ in found} <= {"transpose", "copy"}, found
    assert {shape for _, shape in found} <= {layout_copy}, found

    # The check sees what it looks for: a loop that slices a stacked weight each step.
    stacked = np.zeros((2, 64, 128), np.float32)

    def loop(stacked, x):
        def body(carry):
            i, x = carry
            layer = jax.lax.dynamic_index_in_dim(stacked, i % 2, keepdims=False)
            return i + 1, jnp.tanh(x @ layer @ layer.T)

        return jax.lax.while_loop(lambda c: c[0] < 4, body, (0, x))[1]

    text = jax.jit(loop).lower(stacked, np.zeros((3, 64), np.float32)).compile().as_text()
    assert ("dynamic-slice", (1, 64, 128)) in weight_shaped_ops_in_loop(text, [stacked])


def test_olmo3_sliding_window_rollouts_match_full_forward(prompts):
    """OLMo3 (a sliding-window layer of 8 and a full YaRN layer): prompt + response reach 20
    tokens, so the window cuts both the prompt and the response."""
    config = tm.get_preset(
        "tiny_olmo3",
        vocab_size=VOCAB,
        initializer_range=0.2,
        num_layers=2,
        layer_types=("sliding_attention", "full_attention"),
    )
    olmo = tm.Policy(config, rngs=nnx.Rngs(1))
    sampler = Sampler(olmo, max_new_tokens=MAX_NEW, prompt_buckets=(16,), eos_ids=(), pad_id=PAD)
    out = sampler.generate(nnx.state(olmo), *prompts, sampling=SamplingParams(greedy=True))
    logits = teacher_forced_logits(olmo, out)
    tokens = np.asarray(out.tokens)
    np.testing.assert_array_equal(tokens, np.argmax(logits, axis=-1))
    expected = np.take_along_axis(log_softmax(logits), tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(out.logprobs), expected, atol=1e-5, rtol=0)
