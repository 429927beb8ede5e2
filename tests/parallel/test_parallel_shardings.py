"""Shardings of parameters, optimizer states and batches on 8 fake CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec
from parallel_toy_model import Toy, toy_params

from tempo_jax import parallel

# Expected per-device shard shapes, written out by hand from the default rules
# (vocab/heads/mlp -> tensor, embed -> fsdp, layers/head_dim -> replicated).
EXPECTED_SHARDS = {
    (2, 2, 2): {
        "embedding": (16, 8),
        "attn.q_proj.kernel": (2, 8, 4, 2),
        "up.kernel": (2, 8, 8),
        "norm": (8,),
        "bias": (16,),
    },
    (1, 8, 1): {
        "embedding": (32, 2),
        "attn.q_proj.kernel": (2, 2, 8, 2),
        "up.kernel": (2, 2, 16),
        "norm": (2,),
        "bias": (16,),
    },
    (8, 1, 1): {
        "embedding": (32, 16),
        "attn.q_proj.kernel": (2, 16, 8, 2),
        "up.kernel": (2, 16, 16),
        "norm": (16,),
        "bias": (16,),
    },
}


def _by_path(tree, is_leaf=None):
    """Flat {'a.b.c': leaf}; the '.value' step inside each Variable is dropped."""
    return {
        jax.tree_util.keystr(p, simple=True, separator=".").removesuffix(".value"): x
        for p, x in jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_leaf)
    }


def _shard_shapes(tree):
    """path -> set of addressable shard shapes (one element when evenly sharded)."""
    return {k: {s.data.shape for s in a.addressable_shards} for k, a in _by_path(tree).items()}


@pytest.fixture(scope="module")
def params():
    return toy_params()


@pytest.mark.parametrize("mesh_shape", list(EXPECTED_SHARDS))
def test_params_and_adamw_state_really_sharded(devices, params, mesh_shape):
    mesh = parallel.make_mesh(mesh_shape)
    assert dict(mesh.shape) == dict(zip(parallel.MESH_AXES, mesh_shape, strict=True))
    shardings = parallel.state_shardings(params, mesh)
    placed = parallel.place(params, shardings)
    shards = _shard_shapes(placed)
    expected = EXPECTED_SHARDS[mesh_shape]
    assert shards == {k: {v} for k, v in expected.items()}
    # Each device holds one distinct block per sharded param (not 8 copies of the whole thing).
    emb = placed["embedding"][...]
    assert len(emb.addressable_shards) == 8
    assert np.array_equal(np.asarray(emb), np.asarray(params["embedding"][...]))

    opt_state = optax.adamw(1e-3).init(placed)
    opt_shardings = parallel.optimizer_shardings(opt_state, params, mesh)
    placed_opt = parallel.place(opt_state, opt_shardings)
    opt_shards = _shard_shapes(placed_opt)
    for moment in ("mu", "nu"):
        prefix = f"0.{moment}."
        got = {k.split(prefix, 1)[1]: v for k, v in opt_shards.items() if f".{moment}." in k}
        assert got == {k: {v} for k, v in expected.items()}, moment
    assert opt_shards["0.count"] == {()}
    assert placed_opt[0].count.sharding.is_fully_replicated


def test_optimizer_state_of_pure_arrays_matches_by_structure(devices, params):
    """optax state over plain arrays (no metadata): mu / nu take the params' shardings."""
    mesh = parallel.make_mesh((2, 2, 2))
    param_shardings = parallel.state_shardings(params, mesh)
    pure = params.to_pure_dict()
    opt_state = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)).init(pure)
    opt_shardings = parallel.optimizer_shardings(opt_state, params, mesh)
    flat = _by_path(opt_shardings)
    expected = _by_path(param_shardings.to_pure_dict())
    for moment in ("mu", "nu"):
        for name, sharding in expected.items():
            assert flat[f"1.0.{moment}.{name}"] == sharding
    assert flat["1.0.count"].spec == PartitionSpec()
    assert flat["1.0.mu.up.kernel"].spec == PartitionSpec(None, "fsdp", "tensor")


def test_shardings_drive_jit_and_abstract_state(devices, params):
    """The sharding trees work as jit in/out shardings and as Orbax restore targets."""
    mesh = parallel.make_mesh((2, 2, 2))
    tx = optax.adamw(1e-2)
    p_sh = parallel.state_shardings(params, mesh)
    o_sh = parallel.optimizer_shardings(jax.eval_shape(tx.init, params), params, mesh)

    def update(p, o):
        grads = jax.tree.map(jnp.ones_like, p)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o

    step = jax.jit(update, in_shardings=(p_sh, o_sh), out_shardings=(p_sh, o_sh))
    p = parallel.place(params, p_sh)
    p2, o2 = step(p, parallel.place(tx.init(params), o_sh))
    assert _shard_shapes(p2)["attn.q_proj.kernel"] == {(2, 8, 4, 2)}
    assert _shard_shapes(o2)["0.nu.up.kernel"] == {(2, 8, 8)}
    # adamw's first step moves every weight by ~lr (sign of the gradient).
    delta = np.asarray(params["norm"][...] - p2["norm"][...])
    np.testing.assert_allclose(delta, 1e-2 * (1 + 1e-4 * 1.0), rtol=1e-3)


def test_abstract_state_carries_shardings(devices):
    mesh = parallel.make_mesh((1, 8, 1))
    abstract_params = nnx.state(nnx.eval_shape(lambda: Toy()), nnx.Param)
    shardings = parallel.state_shardings(abstract_params, mesh)
    abstract = parallel.abstract_state(abstract_params, shardings)
    leaf = abstract["up"]["kernel"].get_value()
    assert isinstance(leaf, jax.ShapeDtypeStruct)
    assert leaf.shape == (2, 16, 16) and leaf.dtype == jnp.float32
    assert leaf.sharding.spec == PartitionSpec(None, "fsdp", "tensor")
    assert leaf.sharding.shard_shape(leaf.shape) == (2, 2, 16)
