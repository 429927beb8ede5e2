"""The policy update (M-step): recomputed log-probs, GSPO / PPO loss, accumulated grads, AdamW.

`make_policy_step(graphdef, settings)` returns the pure function `policy_step(state, batch) ->
(state, metrics)`; compile it with `tempo_jax.train.compiled.compile_train_step`.
"""

from __future__ import annotations

import jax
from flax import nnx

from tempo_jax.rl.reductions import effective_mask, masked_mean
from tempo_jax.rl.registry import POLICY_LOSSES
from tempo_jax.train.batch import RLBatch
from tempo_jax.train.config import TrainSettings
from tempo_jax.train.forward import response_token_stats
from tempo_jax.train.update import (
    Gradients,
    Step,
    make_update_step,
    mask_weights,
    weighted_gradients,
)

PolicyStep = Step


def _kept_mask(batch: RLBatch) -> jax.Array:
    return effective_mask(batch.response_mask, batch.keep)


def make_policy_gradients(graphdef: nnx.GraphDef, settings: TrainSettings) -> Gradients:
    """Builds `policy_gradients(params, batch) -> (grads, metrics)`, the step before the update.

    Recomputes the response log-probs under `params` (vocabulary-chunked), takes
    `settings.policy_loss` from `tempo_jax.rl.POLICY_LOSSES` with `batch.keep` as the row filter
    and accumulates float32 gradients over `settings.micro_batches` strided micro-batches (equal to
    the one-batch gradient, see `tempo_jax.train.update`).

    Metrics (float32 scalars, batch-level): `loss`, the loss's own metrics (`clipfrac`,
    `approx_kl` = token mean of `logp_old - logp`), `entropy` and `self_certainty` (token means,
    nats), `tokens` and `rows` (kept response tokens / rows with at least one).
    """
    loss_fn = POLICY_LOSSES.get(settings.policy_loss.name)
    options = settings.policy_loss.options()
    per_row = settings.policy_loss.aggregation == "seq_mean_token_mean"

    def micro_loss(params, mb: RLBatch, row_norm, token_norm):
        policy = nnx.merge(graphdef, params)
        stats = response_token_stats(policy, mb.sequences(), settings.vocab_chunk_size)
        loss, loss_metrics = loss_fn(
            stats.logprobs,
            mb.old_logprobs,
            mb.advantages,
            mb.response_mask,
            keep=mb.keep,
            **options,
        )
        mask = _kept_mask(mb)
        rows, tokens = mask_weights(mask)
        token_share = tokens / token_norm
        loss = loss * (rows / row_norm if per_row else token_share)
        metrics = {name: value * token_share for name, value in loss_metrics.items()}
        metrics["loss"] = loss
        metrics["entropy"] = masked_mean(stats.entropy, mask) * token_share
        metrics["self_certainty"] = masked_mean(stats.self_certainty, mask) * token_share
        return loss, metrics

    return weighted_gradients(micro_loss, settings.micro_batches, _kept_mask, ("rows", "tokens"))


def make_policy_step(graphdef: nnx.GraphDef, settings: TrainSettings) -> PolicyStep:
    """`policy_step(state, batch) -> (state, metrics)`: `make_policy_gradients`, then the AdamW
    update of `update.make_update_step` (`settings.policy_optimizer`), left out when no kept
    response token exists.

    Args:
      graphdef: from `split_for_training(policy, settings)`.
      settings: validated train settings (`policy_optimizer`, `policy_loss`, `micro_batches`,
        `vocab_chunk_size`).
    """
    gradients_fn = make_policy_gradients(graphdef, settings)
    return make_update_step(gradients_fn, settings.policy_optimizer, "tokens")
