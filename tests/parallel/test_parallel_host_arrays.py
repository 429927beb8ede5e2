"""Single-process behaviour of the host <-> global array helpers the TEMPO loop uses (their
multi-process behaviour is covered by tests/tempo/test_tempo_multihost.py)."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from tempo_jax import parallel


@pytest.fixture(scope="module")
def mesh(devices):
    return parallel.make_mesh((1, 8, 1))


def test_global_from_host_places_each_leaf_with_its_sharding(mesh):
    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    replicated = NamedSharding(mesh, PartitionSpec())
    already = jax.device_put(np.ones(8, np.float32), replicated)
    tree = {"a": np.arange(16, dtype=np.int32).reshape(8, 2), "b": np.float32(3.5), "c": already}
    out = parallel.global_from_host(tree, {"a": rows, "b": replicated, "c": rows})
    assert out["a"].sharding == rows and out["a"].dtype == np.int32
    np.testing.assert_array_equal(np.asarray(out["a"]), tree["a"])
    assert out["b"].shape == () and float(out["b"]) == 3.5
    assert out["c"] is already  # device arrays pass through; jit checks their sharding
    assert len(out["a"].addressable_shards) == 8
    assert out["a"].addressable_shards[3].data.shape == (1, 2)


def test_global_from_host_one_sharding_for_all_and_a_count_mismatch(mesh):
    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    out = parallel.global_from_host([np.zeros(8), np.ones((8, 3))], rows)
    assert [x.sharding for x in out] == [rows, rows]
    with pytest.raises(ValueError, match="2 leaves but 1 shardings"):
        parallel.global_from_host([np.zeros(8), np.ones(8)], [rows])


def test_host_from_global_and_broadcast_are_exact_on_one_process(mesh):
    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    values = np.linspace(-1, 1, 16, dtype=np.float32).reshape(8, 2)
    host = parallel.host_from_global({"x": jax.device_put(values, rows), "n": 3})
    assert isinstance(host["x"], np.ndarray) and host["n"] == 3
    np.testing.assert_array_equal(host["x"], values)
    assert parallel.broadcast_from_main(values) is values
    assert parallel.is_main_process()
    parallel.sync_processes("a no-op for one process")
