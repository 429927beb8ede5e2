"""sample_tokens against exact float64 references on a 12-token vocabulary.

Statistical bound: each setting draws D = 20000 tokens with independent keys; every token's count
must lie in the exact Binomial(D, p) range that a correct sampler leaves with probability at most
1e-7 / 96 (p the reference probability; 8 settings x 12 tokens = 96 cells), so by the union bound
the frequency test fails a correct sampler with probability at most 1e-7 per run, whatever the
seed (`binomial_count_range`: exact tails, since a normal approximation understates the tail of
a small-p cell). The multi-block test below gets its own 1e-7. Tokens outside the top-k / top-p set
must never be drawn at all (p = 0 gives the range [0, 0]). The same ranges reject the untempered
distribution on the tempered rows (checked), so the test has the power to see a temperature or
truncation bug.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampling_helpers import binomial_count_range

from tempo_jax.sampling import RowSamplingParams, sample_tokens
from tempo_jax.sampling.token_sampling import argmax_rows, categorical_rows

VOCAB = 12
MAX_TOP_K = 8
DRAWS = 20000
FALSE_FAILURE_RATE = 1e-7  # per test, for a correct sampler (union bound over its cells)
# (temperature, top_k, top_p, greedy)
SETTINGS = [
    (1.0, 0, 1.0, False),  # full vocabulary, no sort
    (0.7, 4, 1.0, False),  # top-k
    (1.3, 0, 0.8, False),  # nucleus (within the max_top_k cap)
    (1.0, 5, 0.6, False),  # top-k then nucleus over the renormalised top-k set
    (2.0, 0, 0.999, False),  # nucleus wider than the cap: cut at max_top_k = 8 tokens
    (1.0, 0, 1e-7, False),  # top_p -> 0: greedy
    (1.0, 3, 1.0, True),  # greedy flag wins
    (0.0, 0, 1.0, False),  # temperature 0: greedy
]


def reference(logits: np.ndarray, temperature, top_k, top_p, greedy) -> np.ndarray:
    """The distribution a row samples from, float64 [V] (independent of the implementation)."""
    if greedy or temperature == 0:
        out = np.zeros_like(logits)
        out[np.argmax(logits)] = 1.0
        return out
    scaled = logits / temperature
    order = np.argsort(-scaled, kind="stable")
    if top_k > 0 or top_p < 1:
        keep = order[: min(top_k or MAX_TOP_K, MAX_TOP_K)]
    else:
        keep = order
    probs = np.exp(scaled[keep] - scaled[keep].max())
    probs /= probs.sum()
    if top_p < 1:
        before = np.cumsum(probs) - probs
        count = max(1, int(np.sum(before < top_p)))
        keep, probs = keep[:count], probs[:count] / probs[:count].sum()
    out = np.zeros_like(logits)
    out[keep] = probs
    return out


@pytest.fixture(scope="module")
def draws():
    rng = np.random.default_rng(3)
    logits = (rng.normal(size=VOCAB) * 1.5).astype(np.float32)
    rows = len(SETTINGS) * DRAWS
    column = lambda i, dtype: np.repeat(np.asarray([s[i] for s in SETTINGS], dtype), DRAWS)
    params = RowSamplingParams(
        temperature=column(0, np.float32),
        top_k=column(1, np.int32),
        top_p=column(2, np.float32),
        greedy=column(3, bool),
    )
    keys = jax.random.split(jax.random.key(11), rows)
    fn = jax.jit(lambda lg, k, p: sample_tokens(lg, k, p, MAX_TOP_K))
    tokens, logprobs, sampling_lp = fn(jnp.broadcast_to(logits, (rows, VOCAB)), keys, params)
    shape = (len(SETTINGS), DRAWS)
    return (
        logits,
        np.asarray(tokens).reshape(shape),
        np.asarray(logprobs).reshape(shape),
        np.asarray(sampling_lp).reshape(shape),
    )


def _within_bound(counts: np.ndarray, probs: np.ndarray) -> np.ndarray:
    lo, hi = binomial_count_range(probs, DRAWS, FALSE_FAILURE_RATE / (len(SETTINGS) * VOCAB))
    return (lo <= counts) & (counts <= hi)


@pytest.mark.parametrize("index", range(len(SETTINGS)))
def test_frequencies_match_reference(draws, index):
    logits, tokens, _, _ = draws
    probs = reference(logits.astype(np.float64), *SETTINGS[index])
    counts = np.bincount(tokens[index], minlength=VOCAB)
    assert np.all(counts[probs == 0] == 0), (SETTINGS[index], counts, probs)
    assert np.all(_within_bound(counts, probs)), (SETTINGS[index], counts / DRAWS, probs)


def test_bound_has_power(draws):
    """The untempered full softmax is rejected on the tempered / truncated rows."""
    logits, tokens, _, _ = draws
    untempered = reference(logits.astype(np.float64), 1.0, 0, 1.0, False)
    for index in (1, 2, 3, 4):
        counts = np.bincount(tokens[index], minlength=VOCAB)
        assert not np.all(_within_bound(counts, untempered)), SETTINGS[index]


def test_top_p_to_zero_and_temperature_zero_are_greedy(draws):
    logits, tokens, _, sampling_lp = draws
    for index in (5, 6, 7):
        assert np.all(tokens[index] == np.argmax(logits)), SETTINGS[index]
    # greedy rows report 0 (a point mass); the top_p -> 0 row's renormalised set is one token.
    assert np.all(sampling_lp[5:] == 0.0)


def test_logprobs_untempered_and_sampling_logprobs(draws):
    logits, tokens, logprobs, sampling_lp = draws
    log_softmax = logits - np.log(np.sum(np.exp(logits.astype(np.float64))))
    np.testing.assert_allclose(logprobs, log_softmax[tokens], atol=1e-5)
    for index, setting in enumerate(SETTINGS[:5]):
        probs = reference(logits.astype(np.float64), *setting)
        np.testing.assert_allclose(
            sampling_lp[index], np.log(probs[tokens[index]]), atol=1e-5, err_msg=str(setting)
        )


def test_blocked_argmax_equals_argmax_with_ties_and_padding():
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, size=(64, 600)).astype(np.float32)  # many ties; 600 = 2 * 256 + 88
    x[5] = -np.inf
    x[5, 599] = 0.0  # the maximum in the padded last block
    x[6, :] = 1.0  # all tied: the first index
    got = jax.jit(argmax_rows)(x)
    np.testing.assert_array_equal(got, np.argmax(x, axis=-1))


def test_inverse_cdf_over_several_blocks():
    """600 tokens (3 blocks, the last one padded): counts within the exact binomial ranges of the
    16 tokens with p > 0 (false-failure rate <= 1e-7), none elsewhere."""
    rng = np.random.default_rng(1)
    width, draws = 600, 40000
    logits = np.full(width, -np.inf, np.float32)
    support = np.concatenate([rng.choice(599, 15, replace=False), [599]])  # last id included
    logits[support] = rng.normal(size=support.size).astype(np.float32)
    uniform = jax.random.uniform(jax.random.key(2), (draws,))
    tokens, logprobs = jax.jit(categorical_rows)(jnp.broadcast_to(logits, (draws, width)), uniform)
    probs = np.zeros(width)
    probs[support] = np.exp(logits[support] - logits[support].max())
    probs /= probs.sum()
    counts = np.bincount(np.asarray(tokens), minlength=width)
    assert counts.size == width  # never a padding id >= width
    assert np.all(counts[probs == 0] == 0)
    lo, hi = binomial_count_range(probs, draws, FALSE_FAILURE_RATE / support.size)
    assert np.all((lo <= counts) & (counts <= hi)), (counts[support], draws * probs[support])
    np.testing.assert_allclose(logprobs, np.log(probs[np.asarray(tokens)]), atol=1e-5)
