"""Mesh, logical-axis rules, shardings of states and batches, multi-host setup."""

from tempo_jax.parallel.config import get_config
from tempo_jax.parallel.mesh import MESH_AXES, make_mesh, resolve_mesh_shape
from tempo_jax.parallel.multihost import (
    DistributedConfig,
    global_batch_from_local,
    initialize_distributed,
    process_batch_rows,
    process_batch_slice,
    resolve_distributed_config,
)
from tempo_jax.parallel.rules import (
    DEFAULT_RULES,
    logical_to_spec,
    make_rules,
    mesh_axes_for,
)
from tempo_jax.parallel.shardings import (
    abstract_state,
    batch_sharding,
    batch_shardings,
    logical_axes_of,
    optimizer_shardings,
    place,
    state_shardings,
    with_logical_constraint,
)

__all__ = [
    "DEFAULT_RULES",
    "MESH_AXES",
    "DistributedConfig",
    "abstract_state",
    "batch_sharding",
    "batch_shardings",
    "get_config",
    "global_batch_from_local",
    "initialize_distributed",
    "logical_axes_of",
    "logical_to_spec",
    "make_mesh",
    "make_rules",
    "mesh_axes_for",
    "optimizer_shardings",
    "place",
    "process_batch_rows",
    "process_batch_slice",
    "resolve_distributed_config",
    "resolve_mesh_shape",
    "state_shardings",
    "with_logical_constraint",
]
