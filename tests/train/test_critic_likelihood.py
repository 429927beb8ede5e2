"""`train.critic_likelihood_weight`: the critic's value plus w x the lowest log-prob its own
language model gives a response token before t."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx
from train_step_helpers import critic_model, host_batch

from tempo_jax import models, train
from tempo_jax.train.batch import response_slots, response_tokens
from tempo_jax.train.forward import make_critic_values_fn, response_values


def _tied_critic() -> models.Critic:
    critic = critic_model()
    config = dataclasses.replace(critic.config, tie_word_embeddings=True)
    graphdef, state = nnx.split(critic)
    tied = nnx.merge(graphdef, state)
    tied.config = config
    return tied


def _lowest_before(critic: models.Critic, seqs) -> np.ndarray:
    """min_{s < t} log p(y_s) [N, L] by full logits and a loop (0 at t = 0 and off-response)."""
    length = seqs.response_mask.shape[-1]
    hidden = response_slots(critic.model(seqs.tokens, seqs.attention_mask), length)
    logits = np.asarray(hidden @ critic.model.embed_tokens[...].T, np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    targets = np.asarray(response_tokens(seqs.tokens, length))
    token_logp = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    mask = np.asarray(seqs.response_mask, bool)
    out = np.zeros(token_logp.shape)
    for i in range(out.shape[0]):
        for t in range(1, out.shape[1]):
            seen = token_logp[i, :t][mask[i, :t]]
            out[i, t] = min(0.0, seen.min()) if seen.size else 0.0
    return out


def test_likelihood_term_is_the_running_min_of_earlier_token_logprobs():
    critic = _tied_critic()
    seqs = host_batch(0).sequences()
    plain = np.asarray(response_values(critic, seqs))
    with_term = np.asarray(response_values(critic, seqs, 0.5, vocab_chunk_size=128))
    want = _lowest_before(critic, seqs)
    assert want.min() < -3  # random weights: the term is far from 0
    np.testing.assert_allclose(with_term - plain, 0.5 * want, atol=2e-4)
    np.testing.assert_array_equal(with_term[:, 0], plain[:, 0])  # nothing read yet at t = 0
    # The forward-only values function reads the weight from the settings.
    settings = train.settings_from_config(
        {"critic_likelihood_weight": 0.5, "vocab_chunk_size": 128}
    )
    graphdef, params = train.split_for_training(critic, settings)
    values = np.asarray(jax.jit(make_critic_values_fn(graphdef, settings))(params, seqs))
    mask = np.asarray(seqs.response_mask, bool)
    np.testing.assert_allclose(values[mask], with_term[mask], atol=1e-5)
    assert train.settings_from_config({}).critic_likelihood_weight == 0.0  # off by default


def test_likelihood_weight_is_validated_and_needs_tied_embeddings():
    with pytest.raises(ValueError, match=r"train\.critic_likelihood_weight must be >= 0"):
        train.settings_from_config({"critic_likelihood_weight": -0.1})
    with pytest.raises(ValueError, match=r"train\.critic_likelihood_weight > 0 needs .*tie_word"):
        response_values(critic_model(), host_batch(0).sequences(), 0.5)
