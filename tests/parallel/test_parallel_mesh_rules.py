"""Mesh sizing (-1 = the rest), the rules table and its overrides, and failing checks."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_counter import CompileCounter
from flax import nnx
from jax.sharding import PartitionSpec
from parallel_toy_model import toy_params

from tempo_jax import parallel


def parallel_param(shape, logical_axes):
    return nnx.Param(jnp.zeros(shape), logical_axes=logical_axes)


@pytest.mark.parametrize(
    "sizes, expected",
    [
        ((-1, 2, 1), (4, 2, 1)),
        ((2, -1, 2), (2, 2, 2)),
        ((1, 1, -1), (1, 1, 8)),
        ({"data": 2, "fsdp": 4, "tensor": 1}, (2, 4, 1)),
    ],
)
def test_rest_axis_takes_remaining_devices(sizes, expected):
    assert parallel.resolve_mesh_shape(sizes, 8) == expected


def test_mesh_from_config_defaults_to_fsdp(devices):
    cfg = parallel.get_config()
    mesh = parallel.make_mesh(cfg.mesh)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 2, 2, -1
    assert dict(parallel.make_mesh(cfg.mesh).shape) == {"data": 2, "fsdp": 2, "tensor": 2}


@pytest.mark.parametrize(
    "sizes, message",
    [
        (
            (2, 2, 4),
            "mesh data=2 x fsdp=2 x tensor=4 = 16 devices, but 8 devices are available",
        ),
        ((-1, -1, 2), "at most one axis may be -1"),
        ((3, -1, 1), "fixed axes multiply to 3, which does not divide the 8 available devices"),
        ((0, 8, 1), "mesh.data must be a positive int or -1"),
        ((1, 8), "expected 3 sizes"),
    ],
)
def test_bad_mesh_sizes_fail_with_clear_message(devices, sizes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parallel.make_mesh(sizes)


def test_logical_to_spec_defaults():
    assert parallel.logical_to_spec(("embed", "mlp")) == PartitionSpec("fsdp", "tensor")
    assert parallel.logical_to_spec(("batch", "length")) == PartitionSpec(("data", "fsdp"))
    assert parallel.logical_to_spec(("layers", "embed", "heads", "head_dim")) == PartitionSpec(
        None, "fsdp", "tensor"
    )
    # A mesh axis shards one dim only: the later 'mlp' loses 'tensor' to 'heads'.
    assert parallel.logical_to_spec(("heads", "mlp")) == PartitionSpec("tensor")
    assert parallel.logical_to_spec(("vocab", None)) == PartitionSpec("tensor")


def test_rules_override_from_config(devices):
    cfg = parallel.get_config()
    cfg.rules.embed = ""  # replicate the embedding dim
    cfg.rules.mlp = "fsdp,tensor"
    rules = parallel.make_rules(cfg.rules)
    assert rules["embed"] == () and rules["mlp"] == ("fsdp", "tensor")
    assert rules["heads"] == ("tensor",)  # untouched names keep their default
    mesh = parallel.make_mesh((2, 2, 2))
    params = toy_params()
    placed = parallel.place(params, parallel.state_shardings(params, mesh, rules))
    assert placed["embedding"][...].addressable_shards[0].data.shape == (16, 16)
    assert placed["up"]["kernel"][...].addressable_shards[0].data.shape == (2, 16, 4)
    assert parallel.make_rules({"embed": None, "batch": ("data",)})["batch"] == ("data",)


def test_rule_with_unknown_mesh_axis_names_the_rule():
    with pytest.raises(ValueError, match=r"rules\.embed: unknown mesh axis 'fsdq'"):
        parallel.make_rules({"embed": "fsdq"})


@pytest.fixture(scope="module")
def compile_counter():
    with CompileCounter() as counter:
        yield counter


def test_indivisible_heads_fail_before_compile(devices, compile_counter):
    params = toy_params(heads=6)
    mesh = parallel.make_mesh((1, 2, 4))
    # The counter itself works: a fresh jit compiles once.
    before = compile_counter.count
    jax.jit(lambda x: x * 3 + 1)(np.arange(7.0)).block_until_ready()
    assert compile_counter.count == before + 1
    before = compile_counter.count
    with pytest.raises(ValueError) as info:
        parallel.state_shardings(params, mesh)
    assert compile_counter.count == before
    message = str(info.value)
    assert message.splitlines()[0] == (
        "attn.q_proj.kernel: logical axis 'heads' (dim 2, size 6) is not divisible by "
        "mesh axis 'tensor' (size 4)"
    )
    # Optimizer shardings check the same parameters.
    with pytest.raises(ValueError, match=r"attn\.q_proj\.kernel: logical axis 'heads'"):
        parallel.optimizer_shardings({}, params, mesh)


def test_every_indivisible_dim_is_listed_in_one_error(devices):
    mesh = parallel.make_mesh((1, 8, 1))
    state = {
        "a": parallel_param((12, 8), ("embed", "mlp")),
        "b": parallel_param((8, 20), ("mlp", "embed")),
    }
    with pytest.raises(ValueError) as info:
        parallel.state_shardings(state, mesh)
    lines = str(info.value).splitlines()
    assert lines[0] == (
        "a: logical axis 'embed' (dim 0, size 12) is not divisible by mesh axis 'fsdp' (size 8)"
    )
    assert lines[1] == (
        "b: logical axis 'embed' (dim 1, size 20) is not divisible by mesh axis 'fsdp' (size 8)"
    )


def test_replicate_fallback_when_asked(devices):
    mesh = parallel.make_mesh((1, 2, 4))
    shardings = parallel.state_shardings(toy_params(heads=6), mesh, on_indivisible="replicate")
    q = shardings["attn"]["q_proj"]["kernel"].get_value()
    assert q.spec == PartitionSpec(None, "fsdp")


def test_unknown_logical_axis_and_rank_mismatch_are_named(devices):
    mesh = parallel.make_mesh((1, 8, 1))
    with pytest.raises(ValueError, match=r"w: logical axis 'hedas' \(dim 1\) has no sharding rule"):
        parallel.state_shardings({"w": parallel_param((8, 8), ("embed", "hedas"))}, mesh)
    with pytest.raises(ValueError, match=r"w: logical_axes \('embed',\) has 1 names but the array"):
        parallel.state_shardings({"w": parallel_param((8, 8), ("embed",))}, mesh)


def test_batch_shardings_split_rows_and_check_them(devices):
    mesh = parallel.make_mesh((2, 2, 2))
    batch = {"tokens": np.zeros((8, 5), np.int32), "temperature": np.float32(1.0)}
    shardings = parallel.batch_shardings(batch, mesh)
    placed = parallel.place(batch, shardings)
    assert {s.data.shape for s in placed["tokens"].addressable_shards} == {(2, 5)}
    assert placed["temperature"].sharding.is_fully_replicated
    assert parallel.batch_sharding(mesh).spec == PartitionSpec(("data", "fsdp"))
    with pytest.raises(
        ValueError,
        match=re.escape(
            "tokens: logical axis 'batch' (dim 0, size 6) is not divisible by mesh axes "
            "('data', 'fsdp') (sizes 2x2 = 4)"
        ),
    ):
        parallel.batch_shardings({"tokens": np.zeros((6, 5))}, mesh)


def test_rules_key_and_the_compile_cache(monkeypatch):
    from tempo_jax.parallel import compile_cache

    rules = parallel.make_rules({"vocab": ()})
    assert parallel.rules_key(rules) == parallel.rules_key(dict(reversed(list(rules.items()))))
    assert parallel.rules_key(rules) != parallel.rules_key(parallel.make_rules())
    assert parallel.rules_key(None) is None
    # Built once per key; past MAX_ENTRIES the least recently used entry goes first.
    monkeypatch.setattr(compile_cache, "MAX_ENTRIES", 2)
    monkeypatch.setattr(compile_cache, "_ENTRIES", {})
    built = []

    def build(name):
        return lambda: built.append(name) or name

    assert compile_cache.shared("a", build("a")) == "a"
    assert compile_cache.shared("b", build("b")) == "b"
    assert compile_cache.shared("a", build("a2")) == "a"  # a is now the most recent
    compile_cache.shared("c", build("c"))  # drops b
    assert compile_cache.shared("a", build("a3")) == "a"
    assert compile_cache.shared("b", build("b2")) == "b2"
    assert built == ["a", "b", "c", "b2"]
    # Shapes, dtypes and shardings of the leaves, not their values.
    x = jnp.zeros((2, 3))
    _, leaves = compile_cache.tree_key({"x": jax.ShapeDtypeStruct((2, 3), jnp.float32)})
    assert leaves == (((2, 3), "float32", None),)
    assert compile_cache.tree_key({"x": x}) == compile_cache.tree_key({"x": x + 1})
    assert compile_cache.tree_key({"x": x})[1] == (((2, 3), "float32", x.sharding),)
