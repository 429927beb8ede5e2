"""Advantage estimators (TEMPO_ALGORITHM.md §3): em_token, em_outcome, GRPO / Dr.GRPO, GAE.

All return float32 arrays that are zero at masked positions and carry no gradient (they are
constants for the policy loss). Masked positions of every input are ignored.

Filtered rows: pass `keep` [N] bool. A dropped row (keep False) gets zero advantages and returns,
contributes nothing to the whitening statistics (em_token, gae) or to its group's mean / std
(em_outcome, grpo); a group whose every row is dropped is simply empty. A kept group that is left
with one row follows the singleton rule of its estimator.
"""

import jax
import jax.numpy as jnp

from tempo_jax.rl.groups import group_stats
from tempo_jax.rl.reductions import (
    as_float,
    effective_mask,
    last_position_values,
    masked_whiten,
    masked_whiten_by_group,
)
from tempo_jax.rl.validation import check_group_ids, check_shapes

_GROUP_EPS = 1e-6


def _terminal_reward(values, scores, is_labeled, response_mask):
    """[N] `r_i` for labeled rows, else the critic's value at the last response position."""
    mask = jnp.asarray(response_mask).astype(bool)
    v_last = last_position_values(jnp.where(mask, as_float(values), 0.0), mask)
    return jnp.where(jnp.asarray(is_labeled).astype(bool), as_float(scores), v_last)


def em_token_advantage(
    values: jax.Array,
    scores: jax.Array,
    is_labeled: jax.Array,
    response_mask: jax.Array,
    keep: jax.Array | None = None,
    *,
    whiten_scope: str = "batch",
    group_ids: jax.Array | None = None,
    whiten_extra: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """TEMPO token advantage: `A = masked_whiten((R_i - V[i,t]) m, m)`, returns `G = R_i m`.

    `R_i = r_i` for labeled rows and `V_last[i]` (critic value at the last response position) for
    unlabeled rows. Equal to `gae_advantage` with gamma = lam = 1 and the single reward `R_i` on
    the last token.

    Args:
      values: [N, L] critic values `V(x, y_<t)` per response position.
      scores: [N] outcome rewards (+1 / -1); read only for labeled rows.
      is_labeled: [N] bool.
      response_mask: [N, L] bool.
      keep: [N] bool rows that survived filtering (None keeps all).
      whiten_scope: "batch" (all tokens of the batch, the authors'), "with_labeled" (the batch
        plus `whiten_extra`, the raw advantages of a graded labeled batch) or "question"
        (within each prompt group, `group_ids`).
      group_ids: [N] prompt ids; needed for "question".
      whiten_extra: [3] `rl.reductions.whiten_stats` of the labeled batch; for "with_labeled".

    Returns:
      (advantages [N, L], returns [N, L]).
    """
    check_shapes(
        "em_token_advantage",
        {"values": values, "response_mask": response_mask},
        {"scores": scores, "is_labeled": is_labeled, "keep": keep},
    )
    mask = effective_mask(response_mask, keep)
    reward = _terminal_reward(values, scores, is_labeled, response_mask)[:, None]
    raw = jnp.where(mask, reward - as_float(values), 0.0)
    if whiten_scope == "batch":
        advantages = masked_whiten(raw, mask)
    elif whiten_scope == "with_labeled":
        if whiten_extra is None:
            raise ValueError("em_token_advantage: whiten_scope 'with_labeled' needs whiten_extra")
        advantages = masked_whiten(raw, mask, whiten_extra)
    elif whiten_scope == "question":
        if group_ids is None:
            raise ValueError("em_token_advantage: whiten_scope 'question' needs group_ids")
        check_group_ids("em_token_advantage", group_ids)
        advantages = masked_whiten_by_group(raw, mask, group_ids)
    else:
        raise ValueError(f"em_token_advantage: unknown whiten_scope {whiten_scope!r}")
    returns = jnp.where(mask, reward, 0.0)
    return jax.lax.stop_gradient(advantages), jax.lax.stop_gradient(returns)


def _broadcast(row_advantages, mask):
    return jax.lax.stop_gradient(jnp.where(mask, row_advantages[:, None], 0.0))


def em_outcome_advantage(
    values: jax.Array,
    scores: jax.Array,
    is_labeled: jax.Array,
    response_mask: jax.Array,
    group_ids: jax.Array,
    norm_by_std: bool = True,
    keep: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Outcome variant: `s_i = r_i` (labeled) or `clip(V_last[i], -1, 1)`, normalised per group.

    `A_i = (s_i - mean_g) / (std_g + 1e-6)` with the unbiased std (without the division when
    `norm_by_std` is False); a singleton group uses mean `s_i` and std 1, i.e. advantage 0.
    Broadcast to tokens. Returns (critic targets) are those of `em_token_advantage`, `R_i m` with
    the unclipped `V_last` for unlabeled rows: the critic learns outcomes, never normalised scores.

    Args:
      values, scores, is_labeled, response_mask, keep: as in `em_token_advantage`.
      group_ids: [N] int in [0, N), one id per prompt.
      norm_by_std: divide by the group std.

    Returns:
      (advantages [N, L], returns [N, L]).
    """
    check_shapes(
        "em_outcome_advantage",
        {"values": values, "response_mask": response_mask},
        {"scores": scores, "is_labeled": is_labeled, "group_ids": group_ids, "keep": keep},
    )
    check_group_ids("em_outcome_advantage", group_ids)
    mask = effective_mask(response_mask, keep)
    labeled = jnp.asarray(is_labeled).astype(bool)
    reward = _terminal_reward(values, scores, is_labeled, response_mask)
    score = jnp.where(labeled, reward, jnp.clip(reward, -1.0, 1.0))
    stats = group_stats(score, group_ids, keep)
    singleton = stats.count <= 1
    centered = score - jnp.where(singleton, score, stats.mean)
    if norm_by_std:
        centered = centered / (jnp.where(singleton, 1.0, stats.unbiased_std()) + _GROUP_EPS)
    returns = jax.lax.stop_gradient(jnp.where(mask, reward[:, None], 0.0))
    return _broadcast(centered, mask), returns


def grpo_advantage(
    scores: jax.Array,
    response_mask: jax.Array,
    group_ids: jax.Array,
    norm_by_std: bool = True,
    keep: jax.Array | None = None,
) -> jax.Array:
    """GRPO: `A_i = (r_i - mean_g) / (std_g + 1e-6)`, unbiased std, broadcast to tokens.

    A singleton group uses mean 0 and std 1 (so `A_i = r_i / (1 + 1e-6)`). `norm_by_std=False` is
    Dr.GRPO's advantage (no std division; its loss aggregation is a separate choice).

    Args:
      scores: [N] rewards.
      response_mask: [N, L] bool.
      group_ids: [N] int in [0, N).
      norm_by_std: divide by the group std.
      keep: [N] bool rows that survived filtering (None keeps all).

    Returns:
      advantages [N, L].
    """
    check_shapes(
        "grpo_advantage",
        {"response_mask": response_mask},
        {"scores": scores, "group_ids": group_ids, "keep": keep},
    )
    check_group_ids("grpo_advantage", group_ids)
    mask = effective_mask(response_mask, keep)
    scores = as_float(scores)
    stats = group_stats(scores, group_ids, keep)
    singleton = stats.count <= 1
    centered = scores - jnp.where(singleton, 0.0, stats.mean)
    if norm_by_std:
        centered = centered / (jnp.where(singleton, 1.0, stats.unbiased_std()) + _GROUP_EPS)
    return _broadcast(centered, mask)


def gae_advantage(
    token_rewards: jax.Array,
    values: jax.Array,
    response_mask: jax.Array,
    gamma: float,
    lam: float,
    keep: jax.Array | None = None,
    whiten: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over response tokens, whitened over the batch.

    Backwards over t: `delta = r_t + gamma V_next - V_t`, `gae_t = delta + gamma lam gae_next`;
    masked positions are skipped (they pass `V_next` and `gae_next` through unchanged), so a
    masked gap inside a response (e.g. tool output) is bridged. `returns = gae + V` before
    whitening; `advantages = masked_whiten(gae, m)` (raw `gae` when `whiten` is False).

    Args:
      token_rewards: [N, L] per-token rewards.
      values: [N, L] critic values.
      response_mask: [N, L] bool.
      gamma: discount.
      lam: GAE lambda.
      keep: [N] bool rows that survived filtering (None keeps all).
      whiten: whiten the advantages over the batch.

    Returns:
      (advantages [N, L], returns [N, L]).
    """
    check_shapes(
        "gae_advantage",
        {"token_rewards": token_rewards, "values": values, "response_mask": response_mask},
        {"keep": keep},
    )
    mask = effective_mask(response_mask, keep)
    rewards = jnp.where(mask, as_float(token_rewards), 0.0)
    values = jnp.where(mask, as_float(values), 0.0)

    def step(carry, xs):
        next_value, next_gae = carry
        reward, value, m = xs
        gae = reward + gamma * next_value - value + gamma * lam * next_gae
        carry = (jnp.where(m, value, next_value), jnp.where(m, gae, next_gae))
        return carry, carry[1]

    zeros = jnp.zeros(mask.shape[:1], values.dtype)
    _, gae = jax.lax.scan(step, (zeros, zeros), (rewards.T, values.T, mask.T), reverse=True)
    gae = gae.T
    returns = jnp.where(mask, gae + values, 0.0)
    advantages = masked_whiten(gae, mask) if whiten else jnp.where(mask, gae, 0.0)
    return jax.lax.stop_gradient(advantages), jax.lax.stop_gradient(returns)
