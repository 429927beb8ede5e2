"""The AIME recipes' async save timeout: sized from parameter counts that match the model presets,
and long enough to write both networks with their AdamW states at the assumed floor bandwidth."""

import importlib.util
import math
import pathlib

import jax
import pytest
from flax import nnx

from tempo_jax import models
from tempo_jax.config import aime_recipe

ROOT = pathlib.Path(__file__).resolve().parents[2]
STATED = {  # configs/<name>.py: (policy, critic) parameters as stated there
    "qwen3_14b_aime": (14.77e9, 13.99e9),
    "qwen3_8b_aime": (8.19e9, 7.57e9),
    "olmo3_7b_aime": (7.30e9, 6.89e9),
}


def _count(cls, config) -> int:
    abstract = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


@pytest.mark.parametrize("name", sorted(STATED))
def test_timeout_covers_the_checkpoint_at_the_floor_bandwidth(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TEMPO_ROOT", str(tmp_path))
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    preset = models.get_preset(config.model.preset)
    policy, critic = _count(models.Policy, preset), _count(models.Critic, preset)
    assert (policy, critic) == pytest.approx(STATED[name], rel=2e-3)
    checkpoint_bytes = 12 * (policy + critic)  # float32 params + AdamW mu, nu
    timeout = config.checkpoint.async_timeout_s
    assert timeout == aime_recipe.checkpoint_timeout_s(*STATED[name])
    assert checkpoint_bytes / 100e6 <= timeout < checkpoint_bytes / 100e6 + 600
    assert timeout > 1200  # Orbax's default would fail these saves
