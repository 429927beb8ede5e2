"""Config strings pick advantage estimators, policy losses and self-rewards."""

import jax
import numpy as np
import pytest
from rl_batches import make_batch

from tempo_jax import rl
from tempo_jax.rewards import self_rewards
from tempo_jax.rl.registry import Registry


def test_names():
    assert rl.ADVANTAGE_ESTIMATORS.names() == ("drgrpo", "em_outcome", "em_token", "gae", "grpo")
    assert rl.POLICY_LOSSES.names() == ("gspo", "ppo")
    assert rl.SELF_REWARDS.names() == ("cluster_frequency", "majority_vote", "self_certainty")
    assert set(rl.SELF_REWARD_INPUTS) == set(rl.SELF_REWARDS.names())


def test_unknown_and_duplicate_names_are_errors():
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'ppo'.*em_token"):
        rl.ADVANTAGE_ESTIMATORS.get("ppo")
    registry = Registry("thing")
    registry.register("a")(len)
    assert registry.get("a") is len
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a")(max)


def test_losses_and_rewards_are_the_public_functions():
    assert rl.POLICY_LOSSES.get("gspo") is rl.gspo_policy_loss
    assert rl.POLICY_LOSSES.get("ppo") is rl.ppo_policy_loss
    assert rl.SELF_REWARDS.get("majority_vote") is self_rewards.majority_vote_reward
    assert rl.SELF_REWARDS.get("cluster_frequency") is self_rewards.cluster_frequency_reward
    assert rl.SELF_REWARDS.get("self_certainty") is self_rewards.self_certainty


def direct_calls(kw, token_rewards):
    fields = ("values", "scores", "is_labeled", "response_mask", "group_ids", "keep")
    v, s, lab, m, g, k = (kw[f] for f in fields)
    return {
        "em_token": rl.em_token_advantage(v, s, lab, m, keep=k),
        "em_outcome": rl.em_outcome_advantage(v, s, lab, m, g, keep=k),
        "grpo": (rl.grpo_advantage(s, m, g, keep=k), None),
        "drgrpo": (rl.grpo_advantage(s, m, g, norm_by_std=False, keep=k), None),
        "gae": rl.gae_advantage(token_rewards, v, m, 0.9, 0.8, keep=k),
    }


def test_estimators_match_direct_calls_under_jit():
    b = make_batch(10)
    kw = dict(
        scores=b.scores,
        response_mask=b.mask,
        group_ids=b.group_ids,
        is_labeled=b.is_labeled,
        values=b.values,
        keep=b.keep,
    )
    token_rewards = np.zeros_like(b.values)
    token_rewards[np.arange(len(b.scores)), b.lengths - 1] = b.scores
    direct = jax.jit(direct_calls)(kw, token_rewards)
    for name in rl.ADVANTAGE_ESTIMATORS.names():
        options = {"gamma": 0.9, "lam": 0.8} if name == "gae" else {}
        fn = rl.ADVANTAGE_ESTIMATORS.get(name)
        estimator = jax.jit(lambda kw, f=fn, o=options: f(**kw, **o))
        got = estimator(kw)
        for g, w in zip(got, direct[name], strict=True):
            if w is None:
                assert g is None, name
            else:
                np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6, err_msg=name)
        assert np.any(np.asarray(got[0]) != 0), name


def test_critic_estimators_require_values():
    b = make_batch(0)
    for name in ("em_token", "em_outcome", "gae"):
        with pytest.raises(ValueError, match=f"{name}.*values"):
            rl.ADVANTAGE_ESTIMATORS.get(name)(
                scores=b.scores, response_mask=b.mask, group_ids=b.group_ids, is_labeled=None
            )
