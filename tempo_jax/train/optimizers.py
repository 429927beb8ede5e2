"""Optax optimizers from `OptimizerSettings`: global-norm clip, then AdamW with a constant or
warm-up learning rate.

The optimizer is rebuilt from the settings wherever it is needed (state init, the step, the
abstract state for a restore); optax transformations are stateless, so equal settings give the
same update rule and the same state structure.
"""

from __future__ import annotations

import optax

from tempo_jax.train.config import OptimizerSettings


def make_schedule(settings: OptimizerSettings) -> optax.Schedule:
    """Learning rate as a function of the number of updates already applied.

    'constant': `learning_rate` throughout. 'warmup': linear from 0 at update 0 to
    `learning_rate` at update `warmup_steps`, then constant (update k uses k / warmup_steps of the
    peak, so the first update has size 0, as in transformers' `get_constant_schedule_with_warmup`).
    """
    peak = float(settings.learning_rate)
    if settings.schedule == "constant":
        return optax.constant_schedule(peak)
    return optax.linear_schedule(0.0, peak, transition_steps=int(settings.warmup_steps))


def make_optimizer(settings: OptimizerSettings) -> optax.GradientTransformation:
    """`clip_by_global_norm(max_grad_norm)` (skipped when 0) then AdamW on every parameter."""
    adamw = optax.adamw(
        learning_rate=make_schedule(settings),
        b1=float(settings.b1),
        b2=float(settings.b2),
        eps=float(settings.eps),
        weight_decay=float(settings.weight_decay),
    )
    if settings.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(float(settings.max_grad_norm)), adamw)
    return optax.chain(optax.identity(), adamw)
