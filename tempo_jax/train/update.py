"""Gradient accumulation over micro-batches and the guarded optimizer update, shared by both steps.

Accumulation. A batch-level loss is a weighted mean, `sum_i w_i l_i / sum_i w_i`, with per-row
weights (GSPO / value loss, seq-mean-token-mean: one per row with tokens) or per-token weights
(PPO, token-mean). Splitting the rows into k micro-batches, the loss of micro-batch j is
`sum_{i in j} w_i l_i / W_j`, so `loss = sum_j (W_j / W) loss_j` with the batch totals `W` computed
once up front. Each micro-batch's loss (and metric) is scaled by its `W_j / W` before
differentiation, and the gradients are summed: k micro-batches give the gradient of the one big
batch, whatever the rows' lengths or filters (only rounding differs).

Update. The global gradient norm is taken before clipping. A non-finite loss or gradient norm
skips the update: params, optimizer state and `step` come back unchanged and `skipped = 1`. A
batch with nothing to learn from (no kept response token, or for the critic no labeled one) is
also left out (`empty = 1`), because AdamW would otherwise still move the parameters through its
momentum and weight decay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from tempo_jax.train.batch import RLBatch, split_micro_batches
from tempo_jax.train.optimizers import OptimizerSettings, make_optimizer, make_schedule
from tempo_jax.train.train_state import TrainState

# micro_loss(params, micro_batch) -> (weighted loss, weighted metrics dict)
MicroLoss = Callable[[nnx.State, Any], tuple[jax.Array, dict[str, jax.Array]]]
# gradients(params, batch) -> (float32 gradients, metrics with "loss")
Gradients = Callable[[nnx.State, RLBatch], tuple[Any, dict[str, jax.Array]]]
# step(state, batch) -> (state, metrics)
Step = Callable[[TrainState, RLBatch], tuple[TrainState, dict[str, jax.Array]]]


def accumulate_gradients(
    micro_loss: MicroLoss, params: nnx.State, batch: Any, micro_batches: int
) -> tuple[Any, dict[str, jax.Array]]:
    """Sums `grad micro_loss` and its metrics over k strided micro-batches (a `lax.scan`).

    Args:
      micro_loss: returns the micro-batch's loss and metrics already scaled by `W_j / W`.
      params: the parameters to differentiate.
      batch: pytree with leading dim N (N divisible by k).
      micro_batches: k.

    Returns:
      (gradients in float32 with the structure of `params`, summed metrics).
    """
    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
    if micro_batches == 1:  # no accumulator to zero-fill and add into
        (_, metrics), grads = grad_fn(params, batch)
        return jax.tree.map(lambda g: g.astype(jnp.float32), grads), metrics
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)

    def body(acc, mb):
        (_, metrics), grads = grad_fn(params, mb)
        acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), acc, grads)
        return acc, metrics

    grads, metrics = jax.lax.scan(body, zeros, split_micro_batches(batch, micro_batches))
    return grads, jax.tree.map(lambda m: jnp.sum(m, axis=0), metrics)


def mask_weights(mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(rows with at least one token, tokens) of an effective [n, L] mask, float32."""
    tokens = jnp.sum(mask, dtype=jnp.float32)
    rows = jnp.sum(jnp.any(mask, axis=-1), dtype=jnp.float32)
    return rows, tokens


def weighted_gradients(
    micro_loss: Callable[[nnx.State, Any, jax.Array, jax.Array], Any],
    micro_batches: int,
    mask_of: Callable[[Any], jax.Array],
    totals: tuple[str, str],
) -> Gradients:
    """`gradients(params, batch)`: `accumulate_gradients` of a loss weighted by the batch's
    totals W (module docstring).

    Args:
      micro_loss: `(params, micro_batch, row_norm, token_norm) -> (loss, metrics)`, scaling its
        micro-batch's loss and metrics by its rows / row_norm or tokens / token_norm.
      micro_batches: k, as in `accumulate_gradients`.
      mask_of: a batch's (or micro-batch's) effective [n, L] mask of the tokens that count.
      totals: the metric names of the whole batch's (rows, tokens) of that mask.

    Returns:
      `gradients(params, batch) -> (gradients, summed metrics and the two totals)`.
    """

    def gradients(params: nnx.State, batch: Any) -> tuple[Any, dict[str, jax.Array]]:
        rows, tokens = mask_weights(mask_of(batch))
        row_norm, token_norm = jnp.maximum(rows, 1.0), jnp.maximum(tokens, 1.0)

        def scaled(params: nnx.State, mb: Any):
            return micro_loss(params, mb, row_norm, token_norm)

        grads, metrics = accumulate_gradients(scaled, params, batch, micro_batches)
        metrics.update(zip(totals, (rows, tokens), strict=True))
        return grads, metrics

    return gradients


def apply_gradients(
    state: TrainState,
    grads: Any,
    loss: jax.Array,
    has_signal: jax.Array,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update unless the loss / gradient is non-finite or there is no signal.

    Returns:
      (new state, metrics `grad_norm`, `learning_rate`, `skipped`, `empty`), float32 scalars.
    """
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    apply = finite & has_signal

    def update(state: TrainState) -> TrainState:
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params=params, opt_state=opt_state, step=state.step + 1)

    # A cond, not a select over every leaf: a skipped step computes no update and no pass over
    # the parameters and optimizer state is spent choosing between old and new.
    new_state = jax.lax.cond(apply, update, lambda state: state, state)
    metrics = {
        "grad_norm": grad_norm,
        "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
        "skipped": (~finite).astype(jnp.float32),
        "empty": (finite & ~has_signal).astype(jnp.float32),
    }
    return new_state, metrics


def make_update_step(gradients_fn: Gradients, optimizer: OptimizerSettings, signal: str) -> Step:
    """`step(state, batch) -> (state, metrics)`: `gradients_fn`, then global-norm clipping and
    `optimizer`'s AdamW (`apply_gradients`), skipped when the loss or gradient is non-finite or
    the batch's metric `signal` (a count of rows or tokens to learn from) is 0.

    Metrics: those of `gradients_fn` plus `grad_norm` (before clipping), `learning_rate` (of
    this update), `skipped` (1 = non-finite, no update) and `empty` (1 = no signal, no update).
    """
    tx = make_optimizer(optimizer)
    schedule = make_schedule(optimizer)

    def step(state: TrainState, batch: RLBatch) -> tuple[TrainState, dict[str, jax.Array]]:
        grads, metrics = gradients_fn(state.params, batch)
        state, update_metrics = apply_gradients(
            state, grads, metrics["loss"], metrics[signal] > 0, tx, schedule
        )
        metrics.update(update_metrics)
        return state, metrics

    return step
