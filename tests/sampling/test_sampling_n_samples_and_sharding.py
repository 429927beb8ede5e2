"""n samples per prompt from one prefill; the same rollouts sharded over 8 fake CPU devices.

Row i's random stream is fold_in(key(seed), i), whatever the batch looks like, so 2 prompts
x n = 256 samples (one prefill per prompt, cache broadcast) and the 512 repeated prompts x 1
sample draw with the same keys: they must give the same tokens. With different seeds they are
independent samples, and the first-token counts of both must lie in the exact binomial ranges of
the softmax(logits / T) of a full forward pass (256 draws per prompt and side; 2 sides x 2
prompts x 256 tokens = 1024 cells at 1e-7 / 1024 each: a correct sampler fails with probability
at most 1e-7 per run; see `binomial_count_range`), and so agree with each other.
"""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
from sampling_helpers import (
    MAX_NEW,
    PAD,
    SAMPLER_KWARGS,
    binomial_count_range,
    log_softmax,
)

from tempo_jax import parallel
from tempo_jax.sampling import Sampler, SamplingParams

N_SAMPLES = 256
FALSE_FAILURE_RATE = 1e-7  # of the distribution test, for a correct sampler
# Prompt 0: full-vocabulary sampling at T = 1.5; prompt 1: T = 0.7 with nucleus 0.9.
SAMPLING = SamplingParams(
    temperature=np.asarray([1.5, 0.7], np.float32), top_p=np.asarray([1.0, 0.9], np.float32)
)


@pytest.fixture(scope="module")
def two_prompts(prompts):
    tokens, mask = prompts
    return tokens[1:], mask[1:]  # lengths 9 and 5


@pytest.fixture(scope="module")
def shared(sampler, state, two_prompts):
    return sampler.generate(state, *two_prompts, n=N_SAMPLES, sampling=SAMPLING, seed=7)


def _repeated(sampler, state, two_prompts, seed):
    tokens, mask = (np.repeat(x, N_SAMPLES, axis=0) for x in two_prompts)
    per_row = SamplingParams(
        temperature=np.repeat(SAMPLING.temperature, N_SAMPLES),
        top_p=np.repeat(SAMPLING.top_p, N_SAMPLES),
    )
    return sampler.generate(state, tokens, mask, n=1, sampling=per_row, seed=seed)


def test_rows_and_groups(shared, two_prompts):
    rows = 2 * N_SAMPLES
    assert shared.tokens.shape == (rows, MAX_NEW)
    assert shared.samples_per_prompt == N_SAMPLES
    np.testing.assert_array_equal(shared.group_ids, np.arange(rows) // N_SAMPLES)
    tokens, mask = two_prompts
    assert shared.prompt_tokens.shape == (rows, 16)  # bucket 16, 12 input columns
    np.testing.assert_array_equal(shared.prompt_tokens[:, 4:], np.repeat(tokens, N_SAMPLES, 0))
    np.testing.assert_array_equal(shared.prompt_mask[:, 4:], np.repeat(mask, N_SAMPLES, 0))
    # n samples really are different samples.
    assert len({tuple(row) for row in np.asarray(shared.tokens)[:N_SAMPLES]}) > N_SAMPLES // 2


def test_shared_prefill_equals_repeated_prompts(sampler, state, two_prompts, shared):
    repeated = _repeated(sampler, state, two_prompts, seed=7)
    np.testing.assert_array_equal(repeated.tokens, shared.tokens)
    np.testing.assert_array_equal(repeated.lengths, shared.lengths)
    np.testing.assert_allclose(repeated.logprobs, shared.logprobs, atol=1e-5)
    np.testing.assert_allclose(repeated.sampling_logprobs, shared.sampling_logprobs, atol=1e-5)


def _first_token_reference(policy, tokens, mask, temperature, top_p) -> np.ndarray:
    logits = np.asarray(policy(tokens[None], mask[None]), np.float64)[0, -1] / temperature
    probs = np.exp(log_softmax(logits))
    if top_p < 1:
        order = np.argsort(-probs)[:32]  # the sampler's max_top_k cap
        kept = probs[order] / probs[order].sum()
        count = max(1, int(np.sum(np.cumsum(kept) - kept < top_p)))
        out = np.zeros_like(probs)
        out[order[:count]] = kept[:count] / kept[:count].sum()
        return out
    return probs


def test_same_distribution_as_repeated_prompts(policy, sampler, state, two_prompts, shared):
    repeated = _repeated(sampler, state, two_prompts, seed=8)  # independent of `shared`
    tokens, mask = two_prompts
    for p in range(2):
        rows = slice(p * N_SAMPLES, (p + 1) * N_SAMPLES)
        vocab = policy.config.vocab_size
        a = np.bincount(np.asarray(shared.tokens)[rows, 0], minlength=vocab)
        b = np.bincount(np.asarray(repeated.tokens)[rows, 0], minlength=vocab)
        probs = _first_token_reference(
            policy, tokens[p], mask[p], SAMPLING.temperature[p], SAMPLING.top_p[p]
        )
        lo, hi = binomial_count_range(probs, N_SAMPLES, FALSE_FAILURE_RATE / (2 * 2 * vocab))
        assert np.all((lo <= a) & (a <= hi)), (p, a[probs > 0], N_SAMPLES * probs[probs > 0])
        assert np.all((lo <= b) & (b <= hi)), (p, b[probs > 0], N_SAMPLES * probs[probs > 0])
        assert np.all(a[probs == 0] == 0) and np.all(b[probs == 0] == 0)


def test_sharded_sampler_returns_the_same_rollouts(devices, policy, state, two_prompts, shared):
    mesh = parallel.make_mesh((2, 2, 2))
    sharded = Sampler(policy, **SAMPLER_KWARGS, mesh=mesh)
    out = sharded.generate(state, *two_prompts, n=N_SAMPLES, sampling=SAMPLING, seed=7)
    np.testing.assert_array_equal(out.tokens, shared.tokens)
    np.testing.assert_array_equal(out.finish_reason, shared.finish_reason)
    np.testing.assert_allclose(out.logprobs, shared.logprobs, atol=1e-5)
    # Rows are split over data x fsdp = 4 devices; the weights by their logical axes.
    assert out.tokens.sharding.spec[0] == ("data", "fsdp")
    assert len({s.index[0].start for s in out.tokens.addressable_shards}) == 4
    (executable,) = sharded._executables.values()
    q_proj = executable.input_shardings[0][0]["model"]["layers"]["q_proj"]
    assert tuple(q_proj.spec)[:3] == (None, "fsdp", "tensor")
    # Each device's slice of a layer's KV cache [N, S, K, Dh] = [512, 23, 2, 16] in the
    # partitioned program: rows over data x fsdp (4), kv heads over tensor (2).
    assert "f32[128,23,1,16]" in executable.as_text()


def _decode_loop_body(hlo: str) -> str:
    """The HLO computation of the largest while-loop body: the decode loop."""
    bodies = re.findall(r"while\(.*?body=(%[\w.\-]+)", hlo)
    computations = dict(re.findall(r"\n((?:%[\w.\-]+)) (\(.*?\n\})", hlo, re.S))
    return max((computations.get(b, "") for b in bodies), key=len)


def test_decode_loop_reads_whole_weights_on_an_fsdp_mesh(devices, policy, state):
    # Training shards every weight's embed dim over fsdp; the sampler lays the (cast) weights
    # out by inference_rules once, so its decode loop carries each layer's whole [D, F] MLP
    # matrix ([64, 128]) and never the fsdp slice [8, 128] it would have to all-gather per step.
    sampler = Sampler(
        policy, max_new_tokens=4, prompt_buckets=(8,), mesh=parallel.make_mesh((1, 8, 1))
    )
    body = _decode_loop_body(sampler.compile(state, 8, 2, 8).as_text())
    signature = body.split("\n", 1)[0]
    assert "f32[64,128]" in signature and "f32[8,128]" not in signature
    assert sampler.num_compilations == 1


def test_compile_builds_the_executable_generate_runs(devices, policy, state, prompts):
    # The shape and mesh of the next test's padded call: one executable for both (the
    # persistent compilation cache).
    sampler = Sampler(
        policy,
        max_new_tokens=MAX_NEW,
        prompt_buckets=(16,),
        pad_id=PAD,
        mesh=parallel.make_mesh((2, 2, 2)),
    )
    compiled = sampler.compile(jax.eval_shape(lambda: state), 4, 1, 16)  # abstract parameters
    tokens, mask = (np.concatenate([x, x[:1]]) for x in prompts)  # 4 prompts
    out = sampler.generate(state, tokens, mask, n=1, seed=3)
    assert sampler.num_compilations == 1 and out.tokens.shape == (4, MAX_NEW)
    assert compiled.memory_analysis().temp_size_in_bytes > 0


def test_rows_the_mesh_does_not_divide_are_padded_or_an_error(devices, policy, state, prompts):
    # generate pads 3 prompts x 1 sample to 4 (the 4 batch shards' multiple) and drops the
    # repeat's row; compile of the undivided shape itself is an error, never a replication.
    mesh = parallel.make_mesh((2, 2, 2))
    sampler = Sampler(policy, max_new_tokens=MAX_NEW, prompt_buckets=(16,), pad_id=PAD, mesh=mesh)
    out = sampler.generate(state, *prompts, n=1, seed=5)
    assert sampler.compiled_shapes == ((4, 1, 16),)
    single = Sampler(policy, max_new_tokens=MAX_NEW, prompt_buckets=(16,), pad_id=PAD)
    want = single.generate(state, *prompts, n=1, seed=5)
    assert np.asarray(out.tokens).shape == (3, MAX_NEW)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(want.tokens))
    with pytest.raises(
        ValueError, match=r"3 prompts x 1 samples = rows \(3\) do not divide over the 4"
    ):
        sampler.compile(state, 3, 1, 16)
    assert sampler.num_compilations == 1
