"""Name -> pure function registries, so a config string picks each RL ingredient.

- `ADVANTAGE_ESTIMATORS`: one keyword calling convention for every estimator,
  `fn(*, scores, response_mask, group_ids, is_labeled, values=None, keep=None, **options)
  -> (advantages [N, L], returns [N, L] | None)`; options are per estimator (`norm_by_std` for
  em_outcome, `whiten_scope` / `whiten_extra` for em_token, `gamma` / `lam` for gae).
  Critic-free estimators return `returns=None`.
- `POLICY_LOSSES`: `fn(logprobs, old_logprobs, advantages, response_mask, clip_low=, clip_high=,
  keep=, ...) -> (loss, metrics)` (ppo also takes `dual_clip`).
- `SELF_REWARDS`: cluster rewards take `(cluster_ids, valid, group_ids)`; `self_certainty` takes
  `(logits, response_mask)`. `SELF_REWARD_INPUTS` says which.

New entries register with the decorators, e.g. `@ADVANTAGE_ESTIMATORS.register("my_adv")`.
"""

from collections.abc import Callable

import jax.numpy as jnp

from tempo_jax.rewards import self_rewards
from tempo_jax.rl import advantages, policy_losses
from tempo_jax.rl.reductions import effective_mask


class Registry:
    """A named table of functions with a clear error for unknown names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._table: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[Callable], Callable]:
        """Decorator adding `fn` under `name`; a duplicate name is an error."""

        def add(fn: Callable) -> Callable:
            if name in self._table:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._table[name] = fn
            return fn

        return add

    def get(self, name: str) -> Callable:
        """The function registered under `name`."""
        if name not in self._table:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {self.names()}")
        return self._table[name]

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._table))


ADVANTAGE_ESTIMATORS = Registry("advantage estimator")
POLICY_LOSSES = Registry("policy loss")
SELF_REWARDS = Registry("self-reward")


def _need_values(name, values):
    if values is None:
        raise ValueError(f"advantage estimator {name!r} needs critic `values` [N, L]")


@ADVANTAGE_ESTIMATORS.register("em_token")
def _em_token(
    *,
    scores,
    response_mask,
    group_ids,
    is_labeled,
    values=None,
    keep=None,
    whiten_scope="batch",
    whiten_extra=None,
):
    _need_values("em_token", values)
    return advantages.em_token_advantage(
        values,
        scores,
        is_labeled,
        response_mask,
        keep=keep,
        whiten_scope=whiten_scope,
        group_ids=group_ids,
        whiten_extra=whiten_extra,
    )


@ADVANTAGE_ESTIMATORS.register("em_outcome")
def _em_outcome(
    *, scores, response_mask, group_ids, is_labeled, values=None, keep=None, norm_by_std=True
):
    _need_values("em_outcome", values)
    return advantages.em_outcome_advantage(
        values, scores, is_labeled, response_mask, group_ids, norm_by_std=norm_by_std, keep=keep
    )


@ADVANTAGE_ESTIMATORS.register("grpo")
def _grpo(*, scores, response_mask, group_ids, is_labeled, values=None, keep=None):
    del is_labeled, values  # every row's score is used as is
    adv = advantages.grpo_advantage(scores, response_mask, group_ids, norm_by_std=True, keep=keep)
    return adv, None


@ADVANTAGE_ESTIMATORS.register("drgrpo")
def _drgrpo(*, scores, response_mask, group_ids, is_labeled, values=None, keep=None):
    del is_labeled, values
    adv = advantages.grpo_advantage(scores, response_mask, group_ids, norm_by_std=False, keep=keep)
    return adv, None


@ADVANTAGE_ESTIMATORS.register("gae")
def _gae(
    *, scores, response_mask, group_ids, is_labeled, values=None, keep=None, gamma=1.0, lam=1.0
):
    """GAE with each row's score as the reward of its last response token."""
    del group_ids, is_labeled
    _need_values("gae", values)
    mask = effective_mask(response_mask, None)
    last = jnp.argmax(jnp.where(mask, jnp.arange(mask.shape[-1]), -1), axis=-1)
    is_last = jnp.arange(mask.shape[-1])[None, :] == last[:, None]
    token_rewards = jnp.where(is_last & mask, jnp.asarray(scores, jnp.float32)[:, None], 0.0)
    return advantages.gae_advantage(token_rewards, values, response_mask, gamma, lam, keep=keep)


POLICY_LOSSES.register("gspo")(policy_losses.gspo_policy_loss)
POLICY_LOSSES.register("ppo")(policy_losses.ppo_policy_loss)

SELF_REWARDS.register("majority_vote")(self_rewards.majority_vote_reward)
SELF_REWARDS.register("cluster_frequency")(self_rewards.cluster_frequency_reward)
SELF_REWARDS.register("self_certainty")(self_rewards.self_certainty)

# Which inputs each self-reward takes, so a trainer knows what to prepare before calling it.
SELF_REWARD_INPUTS: dict[str, str] = {
    "majority_vote": "clusters",
    "cluster_frequency": "clusters",
    "self_certainty": "logits",
}
