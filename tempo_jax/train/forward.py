"""Forward passes over a batch of sequences: policy token statistics and critic values [N, L].

`response_token_stats` and `response_values` are the per-micro-batch computations the train steps
differentiate; `make_policy_token_stats_fn` / `make_critic_values_fn` wrap them into forward-only
functions of `(params, Sequences)` for old log-probs, entropy, self-certainty and values before an
update. Slot alignment is documented in `tempo_jax.train.batch`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from tempo_jax.models.decoder import RESIDUAL_AXES
from tempo_jax.parallel.activations import constrain
from tempo_jax.train.batch import Sequences, response_slots, response_tokens, split_micro_batches
from tempo_jax.train.config import TrainSettings
from tempo_jax.train.logprobs import TokenStats, token_stats


def response_token_stats(policy: nnx.Module, seqs: Sequences, vocab_chunk_size: int) -> TokenStats:
    """Log-prob, entropy and self-certainty of each response token under `policy`: [N, L] each.

    Hidden states at slots P - 1 .. P + L - 2 predict the response tokens at slots P .. P + L - 1;
    the vocabulary is visited in chunks (`tempo_jax.train.logprobs`), so no [N, L, V] logits exist.
    Values at positions outside `response_mask` are finite garbage (mask them).
    """
    length = seqs.response_mask.shape[-1]
    hidden = response_slots(policy.hidden_states(seqs.tokens, seqs.attention_mask), length)
    hidden = constrain(hidden, RESIDUAL_AXES)  # rows stay split through the vocabulary chunks
    return token_stats(
        hidden,
        policy.output_embedding(),
        response_tokens(seqs.tokens, length),
        chunk_size=vocab_chunk_size,
        compute_dtype=policy.config.compute_dtype,
    )


def response_values(
    critic: nnx.Module,
    seqs: Sequences,
    likelihood_weight: float = 0.0,
    vocab_chunk_size: int = 8192,
) -> jax.Array:
    """Critic values `V[i, t] = V(x, y_<t)` [N, L] float32: its outputs at slots P - 1 + t.

    With `likelihood_weight` w > 0 (`train.critic_likelihood_weight`), plus w x
    `min_{s < t} log p(y_s | x, y_<s)` under the critic's own language model (its decoder with
    the tied embedding as output projection; 0 at t = 0): a response holding a token the model
    would not have written is valued lower from that token on. Causal: V[i, t] reads y_<t only.
    """
    length = seqs.response_mask.shape[-1]
    hidden = critic.hidden_states(seqs.tokens, seqs.attention_mask)
    values = response_slots(critic.values_from_hidden(hidden), length)
    if not likelihood_weight:
        return values
    if not critic.config.tie_word_embeddings:
        raise ValueError(
            "train.critic_likelihood_weight > 0 needs a model with tie_word_embeddings: the "
            "critic keeps no output projection of its own"
        )
    stats = token_stats(
        response_slots(hidden, length),
        critic.model.embed_tokens[...],
        response_tokens(seqs.tokens, length),
        chunk_size=vocab_chunk_size,
        compute_dtype=critic.config.compute_dtype,
    )
    logprobs = jnp.where(seqs.response_mask.astype(bool), stats.logprobs, 0.0)
    lowest = jax.lax.cummin(logprobs, axis=1)  # over s <= t; log-probs are <= 0, padding 0
    before = jnp.pad(lowest[:, :-1], ((0, 0), (1, 0)))  # over s < t: V at t has not seen y_t
    return values + likelihood_weight * before


def _map_micro_batches(fn: Callable, seqs: Sequences, micro_batches: int):
    """fn over k strided micro-batches, one at a time (peak memory of N / k rows), re-merged."""
    if micro_batches == 1:
        return fn(seqs)
    out = jax.lax.map(fn, split_micro_batches(seqs, micro_batches))

    def merge(x):  # [k, N / k, ...] -> [N, ...], undoing the strided split
        x = jnp.swapaxes(x, 0, 1)
        return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])

    return jax.tree.map(merge, out)


def make_policy_token_stats_fn(
    graphdef: nnx.GraphDef, settings: TrainSettings
) -> Callable[[nnx.State, Sequences], TokenStats]:
    """`fn(params, seqs) -> TokenStats` [N, L] each, zero outside `response_mask`.

    Runs in `settings.micro_batches` micro-batches, as the policy step does, so the old log-probs
    come from the same computation the step repeats.
    """

    def stats_fn(params: nnx.State, seqs: Sequences) -> TokenStats:
        policy = nnx.merge(graphdef, params)

        def one(mb: Sequences) -> TokenStats:
            stats = response_token_stats(policy, mb, settings.vocab_chunk_size)
            mask = mb.response_mask.astype(bool)
            return TokenStats(*(jnp.where(mask, x, 0.0) for x in stats))

        return _map_micro_batches(one, seqs, settings.micro_batches)

    return stats_fn


def make_critic_values_fn(
    graphdef: nnx.GraphDef, settings: TrainSettings
) -> Callable[[nnx.State, Sequences], jax.Array]:
    """`fn(params, seqs) -> values` [N, L] float32 (`V(x, y_<t)`), zero outside `response_mask`."""

    def values_fn(params: nnx.State, seqs: Sequences) -> jax.Array:
        critic = nnx.merge(graphdef, params)

        def one(mb: Sequences) -> jax.Array:
            values = response_values(
                critic, mb, settings.critic_likelihood_weight, settings.vocab_chunk_size
            )
            return jnp.where(mb.response_mask.astype(bool), values, 0.0)

        return _map_micro_batches(one, seqs, settings.micro_batches)

    return values_fn
