"""One process of the two-process test: 4 CPU devices, joins via jax.distributed on 127.0.0.1.

Usage: python parallel_multihost_worker.py PORT PROCESS_ID OUT_DIR
Writes OUT_DIR/process_{PROCESS_ID}.npz with, per mesh, this process's batch rows, the batch
gathered back from the global array, its jitted sum and a sharded matmul result.
"""

import sys

import numpy as np
from multihost_launch import worker_distributed

from tempo_jax import parallel

# Shared with the test: the full batch and weight every process can regenerate.
MESHES = ((2, 2, 2), (1, 8, 1), (1, 1, 8))
BATCH, EMBED, MLP = 8, 16, 16


def full_batch() -> np.ndarray:
    return (np.arange(BATCH * EMBED, dtype=np.float32).reshape(BATCH, EMBED) % 7) - 3.0


def weight() -> np.ndarray:
    return np.cos(np.arange(EMBED * MLP, dtype=np.float32)).reshape(EMBED, MLP)


def run(mesh_shape):
    """(rows, gathered, total, y, global shape) on one mesh; rows = this process's batch slice."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = parallel.make_mesh(mesh_shape)
    batch_sharding = parallel.batch_sharding(mesh)
    rows = parallel.process_batch_slice(BATCH, batch_sharding)
    x = jax.make_array_from_process_local_data(batch_sharding, full_batch()[rows])
    params = {"w": nnx.Param(weight(), logical_axes=("embed", "mlp"))}
    w = parallel.place(params, parallel.state_shardings(params, mesh))["w"][...]
    replicated = NamedSharding(mesh, PartitionSpec())

    def compute(x, w):
        return x, jnp.sum(x), jnp.tanh(x @ w)

    gathered, total, y = jax.jit(compute, out_shardings=replicated)(x, w)
    return rows, np.asarray(gathered), float(total), np.asarray(y), x.shape


def main() -> None:
    port, process_id, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    config = worker_distributed(port, process_id)
    assert parallel.initialize_distributed(config) is True
    assert parallel.initialize_distributed(config) is True  # idempotent
    import jax

    assert jax.process_count() == 2 and jax.process_index() == process_id
    assert jax.device_count() == 8 and jax.local_device_count() == 4
    results = {}
    for mesh_shape in MESHES:
        rows, gathered, total, y, global_shape = run(mesh_shape)
        key = "x".join(map(str, mesh_shape))
        results[f"{key}/rows"] = np.array([rows.start, rows.stop])
        results[f"{key}/gathered"] = gathered
        results[f"{key}/total"] = np.array(total)
        results[f"{key}/y"] = y
        results[f"{key}/global_shape"] = np.array(global_shape)
    np.savez(f"{out_dir}/process_{process_id}.npz", **results)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
