"""`tempo.critic_sft_steps`: the critic starts from the SFT policy fine-tuned further on D_L."""

import jax
import numpy as np
import pytest
from flax import nnx
from tempo_micro import micro_config

from tempo_jax.config.defaults import get_config
from tempo_jax.config.settings import ConfigError
from tempo_jax.tempo.loop import Trainer
from tempo_jax.train.sft import run_sft


def _decoder(params) -> list[np.ndarray]:
    """The critic's decoder leaves (its value head left out), in tree order."""
    return [np.asarray(x) for x in jax.tree.leaves(nnx.State(params)["model"])]


def test_critic_sft_steps_initialises_the_critic_from_its_own_sft(tmp_path):
    assert get_config().tempo.critic_sft_steps == 0  # the authors' critic: a copy of the policy
    changes = {"sft.steps": 2, "tempo.critic_sft_steps": 4}
    trainer = Trainer(micro_config(str(tmp_path / "data"), "tempo", **changes), str(tmp_path))
    try:
        state = trainer._fresh_state()
        policy = run_sft(trainer.run, trainer._initial_policy, str(tmp_path / "sft"))
        longer = run_sft(trainer.run, policy, str(tmp_path / "critic_sft"), 4)
        same = trainer._critic_source(policy)  # read back from critic_sft/, not retrained
    finally:
        trainer.close()
    assert (tmp_path / "critic_sft").is_dir() and (tmp_path / "sft").is_dir()
    critic = _decoder(state.critic.params)
    want = [np.asarray(x) for x in jax.tree.leaves(nnx.state(longer.model, nnx.Param))]
    policy_leaves = [np.asarray(x) for x in jax.tree.leaves(nnx.state(policy.model, nnx.Param))]
    again = [np.asarray(x) for x in jax.tree.leaves(nnx.state(same.model, nnx.Param))]
    assert len(critic) == len(want) == len(policy_leaves)
    for a, b, c in zip(critic, want, again, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(b, c)
    # Four more SFT steps moved the decoder: the critic is not the policy's copy.
    assert any(not np.array_equal(a, p) for a, p in zip(critic, policy_leaves, strict=True))
    # The policy is the 2-step SFT, untouched by the critic's further steps.
    np.testing.assert_array_equal(
        np.asarray(jax.tree.leaves(state.policy.params)[0]),
        np.asarray(jax.tree.leaves(nnx.state(policy, nnx.Param))[0]),
    )
    with pytest.raises(ConfigError, match=r"config\.tempo\.critic_sft_steps must be an int"):
        micro_config("", "tempo", **{"tempo.critic_sft_steps": -1})
