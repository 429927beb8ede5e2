"""Vocabulary-chunked log-probs / entropy / self-certainty vs the full-logits computation."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tempo_jax.rewards.self_rewards import token_self_certainty
from tempo_jax.rl import token_entropy
from tempo_jax.train.logprobs import chunk_layout, token_stats

B, T, D = 3, 5, 16


def _inputs(vocab, seed=0):
    """Host arrays (numpy RNG: no device computation, nothing to compile)."""
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((B, T, D)).astype(np.float32)
    weight = (3 / np.sqrt(D) * rng.standard_normal((vocab, D))).astype(np.float32)
    targets = rng.integers(0, vocab, (B, T)).astype(np.int32)
    return jnp.asarray(hidden), jnp.asarray(weight), jnp.asarray(targets)


def _full(hidden, weight, targets):
    logits = hidden @ weight.T
    logprobs = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
    return logprobs, token_entropy(logits), token_self_certainty(logits)


def test_chunk_layout_prefers_divisors_and_pads_otherwise():
    assert chunk_layout(512, 128) == (512, 4, 128)
    assert chunk_layout(151936, 8192) == (151936, 32, 4748)  # Qwen3: no padding
    assert chunk_layout(100278, 8192) == (100278, 18, 5571)  # OLMo3: no padding
    layout = chunk_layout(509, 100)  # prime: 6 chunks of 85 rows, 1 padding row
    assert (layout.num_chunks, layout.rows, layout.padded_size) == (6, 85, 510)
    assert chunk_layout(64, 1000) == (64, 1, 64)
    with pytest.raises(ValueError, match="chunk_size >= 1"):
        chunk_layout(64, 0)


@pytest.mark.parametrize(("vocab", "chunk"), [(512, 128), (509, 100), (64, 1000)])
def test_chunked_equals_full_logits(vocab, chunk):
    hidden, weight, targets = _inputs(vocab)
    cotangent = jnp.asarray(np.random.default_rng(9).standard_normal((B, T)), jnp.float32)

    def chunked_loss(h, w):
        stats = token_stats(h, w, targets, chunk_size=chunk)
        return jnp.sum(stats.logprobs * cotangent), stats

    def full_loss(h, w):
        stats = _full(h, w, targets)
        return jnp.sum(stats[0] * cotangent), stats

    @jax.jit  # one compile per case (eager mode would compile every op separately)
    def both(h, w):
        got = jax.grad(chunked_loss, argnums=(0, 1), has_aux=True)(h, w)
        want = jax.grad(full_loss, argnums=(0, 1), has_aux=True)(h, w)
        return got, want

    (got_grads, got), (want_grads, want) = both(hidden, weight)
    for name, g, w in zip(("logprobs", "entropy", "self_certainty"), got, want, strict=True):
        assert g.shape == (B, T) and g.dtype == jnp.float32
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=name)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-6)


def test_entropy_and_self_certainty_have_no_gradient():
    hidden, weight, targets = _inputs(64)
    grads = jax.jit(
        jax.grad(
            lambda h: (
                jnp.sum(token_stats(h, weight, targets, chunk_size=16).entropy)
                + jnp.sum(token_stats(h, weight, targets, chunk_size=16).self_certainty)
            )
        )
    )(hidden)
    assert float(jnp.max(jnp.abs(grads))) == 0.0


def test_bfloat16_compute_matches_the_models_projection_dtype():
    hidden, weight, targets = _inputs(512)

    @jax.jit
    def run(h):
        got = token_stats(h, weight, targets, chunk_size=128)
        # The models' logits_from_hidden: bf16 operands, float32 accumulation.
        logits = jnp.einsum(
            "btd,vd->btv", h, weight.astype(jnp.bfloat16), preferred_element_type=jnp.float32
        )
        want = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
        grad = jax.grad(lambda h: jnp.sum(token_stats(h, weight, targets, chunk_size=128)[0]))(h)
        return got, want, grad

    got, want, grad = run(hidden.astype(jnp.bfloat16))
    assert got.logprobs.dtype == jnp.float32
    np.testing.assert_allclose(got.logprobs, want, rtol=1e-5, atol=1e-5)
    assert grad.dtype == jnp.bfloat16


def _largest_buffer(hlo_text: str) -> int:
    """Element count of the largest array shape anywhere in an HLO module's text."""
    sizes = [
        int(np.prod([int(d) for d in dims.split(",") if d]))
        for dims in re.findall(r"(?:f32|bf16|f16|s32|pred)\[([\d,]*)\]", hlo_text)
    ]
    return max(sizes)


def test_no_full_logits_buffer_in_the_compiled_gradient():
    """How we check: compile value-and-grad of a log-prob loss at M = 6 x 7 positions, V = 4099
    (prime, so padded to 9 chunks of 456 rows), D = 16, and scan every array shape in the
    optimised HLO: none has M x V = 172,158 elements (the biggest are W and its gradient,
    V x D = 65,584); XLA's buffer assignment also needs less temporary memory than one [M, V]
    float32 array. The same checks on the full-logits version do find the [M, V] buffer."""
    m_rows, m_cols, vocab = 6, 7, 4099
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((m_rows, m_cols, D)).astype(np.float32)
    weight = rng.standard_normal((vocab, D)).astype(np.float32)
    targets = rng.integers(0, vocab, (m_rows, m_cols)).astype(np.int32)
    full_logits = m_rows * m_cols * vocab

    def chunked(h, w):
        return jnp.sum(token_stats(h, w, targets, chunk_size=512).logprobs)

    def full(h, w):
        logits = h @ w.T
        return jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1))

    compiled = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1))).lower(hidden, weight).compile()
    assert _largest_buffer(compiled.as_text()) < full_logits / 2
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < full_logits * 4

    reference = jax.jit(jax.value_and_grad(full, argnums=(0, 1))).lower(hidden, weight).compile()
    assert _largest_buffer(reference.as_text()) >= full_logits
    assert reference.memory_analysis().temp_size_in_bytes >= full_logits * 4
    # Same numbers either way.
    np.testing.assert_allclose(
        jax.jit(chunked)(hidden, weight), jax.jit(full)(hidden, weight), rtol=1e-5
    )


def test_shape_errors_name_the_argument():
    hidden, weight, targets = _inputs(64)
    with pytest.raises(ValueError, match=r"hidden \(3, 5, 16\) must be \[..., D\] over targets"):
        token_stats(hidden, weight, targets[:, :4])
    with pytest.raises(ValueError, match=r"output_embedding must be \[V, D=16\]"):
        token_stats(hidden, weight[:, :8], targets)
