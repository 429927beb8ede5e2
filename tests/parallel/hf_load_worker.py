"""One process of the two-process sharded-loading test: 4 CPU devices of an 8-device mesh.

Usage: python hf_load_worker.py PORT PROCESS_ID OUT_DIR CHECKPOINT_DIR
Loads CHECKPOINT_DIR sharded over the (1, 8, 1) mesh, counting the bytes this process read, and
writes OUT_DIR/process_{PROCESS_ID}.npz: the bytes read, the bytes its own shards hold, and the
gathered parameters; then saves the sharded model with save_hf to OUT_DIR/saved (process 0
writes, both gather).
"""

import math
import sys

import numpy as np
from multihost_launch import worker_distributed

from tempo_jax import parallel


def shard_bytes(model) -> int:
    """Bytes of the distinct parameter shards on this process's devices."""
    import jax
    from flax import nnx

    total = 0
    for x in jax.tree.leaves(nnx.state(model)):
        indices = {str(i) for i in x.sharding.addressable_devices_indices_map(x.shape).values()}
        total += len(indices) * math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
    return total


def main() -> None:
    port, process_id, out_dir, checkpoint = sys.argv[1:5]
    process_id = int(process_id)
    assert parallel.initialize_distributed(worker_distributed(int(port), process_id))
    import jax
    from flax import nnx

    from tempo_jax import models

    mesh = parallel.make_mesh((1, 8, 1))
    read: list[int] = []
    model = models.load_hf(checkpoint, mesh=mesh, read_bytes=read)
    params = parallel.host_from_global(nnx.state(model))
    flat = {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(params)}
    np.savez(
        f"{out_dir}/process_{process_id}.npz",
        read_bytes=np.array(read[0]),
        shard_bytes=np.array(shard_bytes(model)),
        **{f"param/{k}": v for k, v in flat.items()},
    )
    models.save_hf(model, f"{out_dir}/saved", max_shard_bytes=40_000)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
