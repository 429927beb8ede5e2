"""KV cache: prefill + step-by-step decode reproduces the full forward (float32)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from models_helpers import run

import tempo_jax.models as tm

PROMPT, STEPS, MAX_LEN = 6, 8, 16
PADS = [0, 2, 4]


def _prompt_and_continuation(seed: int):
    rng = np.random.default_rng(seed)
    prompt = rng.integers(3, 128, size=(3, PROMPT))
    prompt_mask = np.ones((3, PROMPT), np.int32)
    for row, pad in enumerate(PADS):
        prompt_mask[row, :pad] = 0
    continuation = rng.integers(3, 128, size=(3, STEPS))
    return prompt, prompt_mask, continuation


@pytest.mark.parametrize("name, under_jit", [("qwen3", False), ("olmo3", True)])
def test_prefill_then_decode_matches_full_forward(hf_cases, name, under_jit):
    """Eagerly, and as the sampler will run it: jitted pure functions of (graphdef, state)."""
    model = hf_cases[name].ours
    prompt, prompt_mask, continuation = _prompt_and_continuation(seed=7)
    tokens = np.concatenate([prompt, continuation], axis=1)
    mask = np.concatenate([prompt_mask, np.ones((3, STEPS), np.int32)], axis=1)
    full = run(model, tokens, mask)  # [3, 14, V]

    graphdef, state = nnx.split(model)

    def prefill(s, t, m, c):
        return nnx.merge(graphdef, s).prefill(t, m, c)

    def decode(s, t, p, k, c, i):
        return nnx.merge(graphdef, s).decode_step(t, p, k, c, i)

    if under_jit:
        prefill, decode = jax.jit(prefill), jax.jit(decode)

    # Garbage in the cache proves that only slots marked valid are read.
    empty = model.init_cache(3, MAX_LEN)
    assert empty.k.shape == (model.config.num_layers, 3, MAX_LEN, 2, model.config.head_dim)
    assert empty.k.dtype == jnp.float32
    rng = np.random.default_rng(0)
    cache = tm.KVCache(
        k=jnp.asarray(rng.normal(size=empty.k.shape), jnp.float32),
        v=jnp.asarray(rng.normal(size=empty.v.shape), jnp.float32),
    )
    logits, cache = prefill(state, jnp.asarray(prompt), jnp.asarray(prompt_mask), cache)
    assert logits.shape == (3, 128)
    np.testing.assert_allclose(logits, full[:, PROMPT - 1], atol=1e-5)

    key_mask = np.zeros((3, MAX_LEN), bool)
    key_mask[:, :PROMPT] = prompt_mask.astype(bool)
    positions = prompt_mask.sum(axis=1)
    for step in range(STEPS):
        index = PROMPT + step
        logits, cache = decode(
            state,
            jnp.asarray(continuation[:, step]),
            jnp.asarray(positions),
            jnp.asarray(key_mask),
            cache,
            jnp.int32(index),
        )
        np.testing.assert_allclose(logits, full[:, index], atol=1e-5, err_msg=f"step {step}")
        key_mask = key_mask | (np.arange(MAX_LEN) == index)  # a new array: never mutate an input
        positions = positions + 1


def test_decode_respects_the_key_mask(hf_cases):
    """Hiding a cached prompt token from decode changes its logits (the mask is honoured)."""
    model = hf_cases["qwen3"].ours
    prompt, prompt_mask, continuation = _prompt_and_continuation(seed=8)
    logits, cache = model.prefill(
        jnp.asarray(prompt), jnp.asarray(prompt_mask), model.init_cache(3, MAX_LEN)
    )
    key_mask = np.zeros((3, MAX_LEN), bool)
    key_mask[:, :PROMPT] = prompt_mask.astype(bool)
    # Each call gets its own host array: JAX may read a numpy argument after the call returns
    # (dispatch is asynchronous), so mutating `key_mask` in place would race with the first step.
    hiding = key_mask.copy()
    hiding[0, 2] = False
    args = (jnp.asarray(continuation[:, 0]), jnp.asarray(prompt_mask.sum(1)))
    seen, _ = model.decode_step(*args, jnp.asarray(key_mask), cache, PROMPT)
    hidden, _ = model.decode_step(*args, jnp.asarray(hiding), cache, PROMPT)
    assert np.abs(np.asarray(seen[0] - hidden[0])).max() > 1e-3
    np.testing.assert_array_equal(seen[1:], hidden[1:])


def test_bfloat16_cache_dtype():
    config = tm.get_preset("tiny", dtype="bfloat16")
    cache = tm.init_cache(config, batch_size=2, max_length=8)
    assert cache.k.dtype == jnp.bfloat16 and cache.batch_size == 2 and cache.max_length == 8
    assert len(tm.KV_CACHE_LOGICAL_AXES) == cache.k.ndim
