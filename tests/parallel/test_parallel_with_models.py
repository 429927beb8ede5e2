"""The real decoder's parameters shard under the default rules (abstract: nothing compiles)."""

import jax
import optax
import pytest
from flax import nnx

from tempo_jax import models, parallel


@pytest.fixture(scope="module")
def policy_params():
    config = models.get_preset("tiny")
    abstract = nnx.eval_shape(lambda: models.Policy(config, rngs=nnx.Rngs(0)))
    return config, nnx.state(abstract, nnx.Param)


def test_every_policy_param_is_named_and_sharded(devices, policy_params):
    config, params = policy_params
    unnamed = [k for k, v in nnx.to_flat_state(params) if parallel.logical_axes_of(v) is None]
    assert unnamed == []  # nothing would be silently replicated
    mesh = parallel.make_mesh((2, 2, 2))
    shardings = parallel.state_shardings(params, mesh)
    q = dict(nnx.to_flat_state(shardings))[("model", "layers", "q_proj")].get_value()
    d, h, dh = config.hidden_size, config.num_heads, config.head_dim
    assert q.shard_shape((config.num_layers, d, h, dh)) == (config.num_layers, d // 2, h // 2, dh)
    opt = jax.eval_shape(optax.adamw(1e-3).init, params)
    opt_shardings = dict(nnx.to_flat_state(parallel.optimizer_shardings(opt, params, mesh)[0].mu))
    assert opt_shardings[("model", "layers", "q_proj")].get_value() == q


def test_kv_heads_indivisible_by_tensor_axis(devices, policy_params):
    config, params = policy_params
    assert config.num_kv_heads % 4 != 0  # precondition of this test
    mesh = parallel.make_mesh((1, 2, 4))
    with pytest.raises(ValueError) as info:
        parallel.state_shardings(params, mesh)
    assert (
        f"model.layers.k_proj: logical axis 'kv_heads' (dim 2, size {config.num_kv_heads}) is "
        "not divisible by mesh axis 'tensor' (size 4)"
    ) in str(info.value)
    # The documented way out: replicate kv heads via the rules table.
    rules = parallel.make_rules({"kv_heads": ""})
    shardings = dict(nnx.to_flat_state(parallel.state_shardings(params, mesh, rules)))
    k = shardings[("model", "layers", "k_proj")].get_value()
    assert k.spec == jax.sharding.PartitionSpec(None, "fsdp")
    assert shardings[("model", "layers", "q_proj")].get_value().spec[2] == "tensor"
