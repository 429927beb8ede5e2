"""Mesh, logical-axis rules, shardings of states and batches, multi-host setup.

Public API (all sharding trees mirror their input's structure; Variables stay Variables):

  get_config() -> ConfigDict for `config.parallel` (mesh, rules, on_indivisible, distributed)
  make_mesh(mesh_config | (data, fsdp, tensor), devices=None) -> Mesh, Auto axis types, -1 = rest
  make_rules(overrides=None) -> {logical name: mesh axes}; logical_to_spec(names, rules) -> P
  rules_key(rules) -> the rules as a hashable value (cache keys)
  state_shardings(params, mesh, rules=None, on_indivisible="error") -> NamedSharding tree
  optimizer_shardings(opt_state, params, mesh, rules=None, ...) -> NamedSharding tree
  batch_sharding(mesh, rules=None) -> NamedSharding P(batch axes)
  batch_shardings(batch, mesh, rules=None) -> NamedSharding tree (dim 0 checked)
  place(tree, shardings) -> tree on the mesh; abstract_state(tree, shardings) -> ShapeDtypeStructs
  activation_sharding(mesh, rules) context; constrain(x, names) -> x constrained by the active
    context (identity outside one; an indivisible dimension raises instead of replicating)
  inference_rules(rules) -> rules whose parameter axes avoid the batch's mesh axes (sampler)
  initialize_distributed(config=None) -> bool; process_batch_slice(B, sharding) -> slice;
  process_batch_rows(B, sharding) -> rows [n] (then jax.make_array_from_process_local_data)
  global_from_host(tree, shardings) / host_from_global(tree): host values equal on every process
    <-> global arrays; broadcast_from_main(tree); is_main_process(); sync_processes(name)

Divisibility is checked in Python before anything is lowered: one ValueError names every
offending parameter path, logical axis, dimension, size and mesh axes.
"""

from tempo_jax.parallel.activations import (
    ActivationSharding,
    activation_sharding,
    constrain,
    current_activation_sharding,
)
from tempo_jax.parallel.config import get_config
from tempo_jax.parallel.mesh import MESH_AXES, make_mesh, resolve_mesh_shape
from tempo_jax.parallel.multihost import (
    DistributedConfig,
    broadcast_from_main,
    global_from_host,
    host_from_global,
    initialize_distributed,
    is_main_process,
    process_batch_rows,
    process_batch_slice,
    resolve_distributed_config,
    sync_processes,
)
from tempo_jax.parallel.rules import (
    DEFAULT_RULES,
    PARAMETER_AXES,
    inference_rules,
    logical_to_spec,
    make_rules,
    mesh_axes_for,
    rules_key,
)
from tempo_jax.parallel.shardings import (
    abstract_state,
    batch_sharding,
    batch_shardings,
    logical_axes_of,
    optimizer_shardings,
    place,
    state_shardings,
)

__all__ = [
    "DEFAULT_RULES",
    "PARAMETER_AXES",
    "ActivationSharding",
    "activation_sharding",
    "constrain",
    "current_activation_sharding",
    "inference_rules",
    "MESH_AXES",
    "DistributedConfig",
    "abstract_state",
    "batch_sharding",
    "batch_shardings",
    "broadcast_from_main",
    "get_config",
    "global_from_host",
    "host_from_global",
    "initialize_distributed",
    "is_main_process",
    "logical_axes_of",
    "logical_to_spec",
    "make_mesh",
    "make_rules",
    "rules_key",
    "mesh_axes_for",
    "optimizer_shardings",
    "place",
    "process_batch_rows",
    "process_batch_slice",
    "resolve_distributed_config",
    "resolve_mesh_shape",
    "state_shardings",
    "sync_processes",
]
