"""tempo_jax.rl: advantages, policy / value losses, group filters and token statistics.

Pure jnp functions over [N, L] arrays (N rows, L response positions), jit-able with static shapes.
Filtering yields keep masks; every function takes `keep` [N] bool and treats dropped rows as absent.
"""

from tempo_jax.rl.advantages import (
    em_outcome_advantage,
    em_token_advantage,
    gae_advantage,
    grpo_advantage,
)
from tempo_jax.rl.filters import dapo_filter_groups, filter_groups
from tempo_jax.rl.policy_losses import gspo_policy_loss, ppo_policy_loss
from tempo_jax.rl.reductions import (
    masked_mean,
    masked_whiten,
    seq_mean_token_mean,
    whiten_stats,
)
from tempo_jax.rl.registry import (
    ADVANTAGE_ESTIMATORS,
    POLICY_LOSSES,
    SELF_REWARD_INPUTS,
    SELF_REWARDS,
)
from tempo_jax.rl.stats import kl_k1, kl_k2, kl_k3, token_entropy
from tempo_jax.rl.value_loss import value_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "POLICY_LOSSES",
    "SELF_REWARDS",
    "SELF_REWARD_INPUTS",
    "dapo_filter_groups",
    "em_outcome_advantage",
    "em_token_advantage",
    "filter_groups",
    "gae_advantage",
    "grpo_advantage",
    "gspo_policy_loss",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "masked_mean",
    "masked_whiten",
    "ppo_policy_loss",
    "seq_mean_token_mean",
    "token_entropy",
    "value_loss",
    "whiten_stats",
]
