"""One process of the two-process policy-step test: 4 CPU devices, jax.distributed on 127.0.0.1.

Usage: python train_multihost_worker.py PORT PROCESS_ID OUT_DIR
Builds the shared tiny policy on the global (2, 2, 2) mesh, loads only its own rows of each
batch, runs 2 policy steps and writes OUT_DIR/process_{PROCESS_ID}.npz: the parameters after each
step (gathered, keyed by path), the metrics, and the rows it loaded.
"""

import sys

import numpy as np
from multihost_launch import worker_distributed

from tempo_jax import parallel

MESH = (2, 2, 2)


def main() -> None:
    port, process_id, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    assert parallel.initialize_distributed(worker_distributed(port, process_id))
    import jax
    import train_step_helpers as h
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    from tempo_jax import train

    assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
    mesh = parallel.make_mesh(MESH)
    _, params = h.split_model("policy")
    # Every process passes the same host values; each keeps only its own shards.
    state = train.create_train_state(
        jax.tree.map(np.asarray, params), h.SETTINGS.policy_optimizer, mesh
    )
    step = train.compile_train_step(
        h.step_fn("policy"),
        state,
        h.host_batch(0),
        mesh,
        micro_batches=h.MICRO_BATCHES,
        compiler_options=h.FAST_COMPILE,
    )
    rows = parallel.process_batch_slice(h.N, parallel.batch_sharding(mesh))
    gather = jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, PartitionSpec()))
    results = {"rows": np.array([rows.start, rows.stop])}
    for i in range(2):
        local = jax.tree.map(lambda x: x[rows], h.host_batch(i))  # only this process's rows
        batch = jax.make_array_from_process_local_data(step.in_shardings[1], local)
        state, metrics = step(state, batch)
        for name, value in metrics.items():
            results[f"{i}/metrics/{name}"] = np.asarray(value)
        for path, value in nnx.to_flat_state(gather(state.params)):
            results[f"{i}/params/{'.'.join(map(str, path))}"] = np.asarray(value.get_value())
    results["cache_size"] = np.array(step.cache_size())
    np.savez(f"{out_dir}/process_{process_id}.npz", **results)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
