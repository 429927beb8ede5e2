"""The critic update (E-step): values at slots P-1 .. P+L-2 -> clipped value loss -> AdamW.

`make_critic_step(graphdef, settings)` returns the pure `critic_step(state, batch) ->
(state, metrics)`; compile it with `tempo_jax.train.compiled.compile_train_step`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from tempo_jax.rl.reductions import effective_mask, masked_mean
from tempo_jax.rl.value_loss import value_loss
from tempo_jax.train.batch import RLBatch
from tempo_jax.train.config import TrainSettings
from tempo_jax.train.forward import response_values
from tempo_jax.train.update import Gradients, Step, make_update_step, weighted_gradients

CriticStep = Step


def _labeled_mask(batch: RLBatch) -> jax.Array:
    return effective_mask(batch.response_mask, batch.keep & batch.is_labeled.astype(bool))


def make_critic_gradients(graphdef: nnx.GraphDef, settings: TrainSettings) -> Gradients:
    """Builds `critic_gradients(params, batch) -> (grads, metrics)` on the labeled, kept rows.

    The value loss (`tempo_jax.rl.value_loss`, clip `settings.value_clip`) is a mean over labeled
    rows of each row's token mean, so micro-batches are weighted by their labeled rows.

    Metrics (float32 scalars): `loss`, `clipfrac`, `value_mean` (mean predicted value over the
    labeled tokens), `labeled_rows`, `labeled_tokens`.
    """

    def micro_loss(params, mb: RLBatch, row_norm, token_norm):
        critic = nnx.merge(graphdef, params)
        values = response_values(
            critic,
            mb.sequences(),
            settings.critic_likelihood_weight,
            settings.vocab_chunk_size,
        )
        loss, loss_metrics = value_loss(
            values,
            mb.old_values,
            mb.returns,
            mb.response_mask,
            mb.is_labeled,
            clip=settings.value_clip,
            keep=mb.keep,
        )
        mb_mask = _labeled_mask(mb)
        token_share = jnp.sum(mb_mask, dtype=jnp.float32) / token_norm
        loss = loss * loss_metrics["labeled_rows"] / row_norm
        metrics = {
            "loss": loss,
            "clipfrac": loss_metrics["clipfrac"] * token_share,
            "value_mean": masked_mean(values, mb_mask) * token_share,
        }
        return loss, metrics

    return weighted_gradients(
        micro_loss, settings.micro_batches, _labeled_mask, ("labeled_rows", "labeled_tokens")
    )


def make_critic_step(graphdef: nnx.GraphDef, settings: TrainSettings) -> CriticStep:
    """`critic_step(state, batch) -> (state, metrics)`: `make_critic_gradients`, then the AdamW
    update of `update.make_update_step` (`settings.critic_optimizer`), left out when the batch
    has no labeled response token.

    Args:
      graphdef: from `split_for_training(critic, settings)`.
      settings: validated train settings (`critic_optimizer`, `value_clip`, `micro_batches`).
    """
    gradients_fn = make_critic_gradients(graphdef, settings)
    return make_update_step(gradients_fn, settings.critic_optimizer, "labeled_rows")
