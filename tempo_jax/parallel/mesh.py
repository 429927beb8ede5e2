"""The device mesh with axes (data, fsdp, tensor), sized from config.

Axis types are `Auto`: the train steps are `jax.jit` with explicit `in_shardings` /
`out_shardings` and let the partitioner propagate shardings through the model. `Explicit` axes
would make every op's output sharding part of its type, so each einsum in the models would need an
`out_sharding` annotation; nothing in this project needs that control, and `Auto` keeps the models
mesh-agnostic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")


def _axis_sizes_from(config: Any) -> dict[str, int]:
    """Reads {axis: size} from a ConfigDict / dataclass / mapping / (data, fsdp, tensor) tuple."""
    if isinstance(config, Sequence) and not isinstance(config, str):
        if len(config) != len(MESH_AXES):
            raise ValueError(
                f"mesh: expected {len(MESH_AXES)} sizes for axes {MESH_AXES}, got {tuple(config)}"
            )
        return dict(zip(MESH_AXES, config, strict=True))
    sizes = {}
    for name in MESH_AXES:
        if isinstance(config, Mapping):
            if name not in config:
                raise ValueError(f"mesh: missing field '{name}' (axes are {MESH_AXES})")
            sizes[name] = config[name]
        elif hasattr(config, name):
            sizes[name] = getattr(config, name)
        else:
            raise ValueError(f"mesh: missing field '{name}' (axes are {MESH_AXES})")
    return sizes


def resolve_mesh_shape(config: Any, num_devices: int) -> tuple[int, ...]:
    """Resolves axis sizes, where one axis may be -1 ("the rest of the devices").

    Args:
      config: fields `data`, `fsdp`, `tensor` (ConfigDict, dataclass, mapping or a 3-tuple).
      num_devices: total devices the mesh must cover.

    Returns:
      (data, fsdp, tensor) sizes whose product is `num_devices`.

    Raises:
      ValueError: naming the field when a size is invalid or the product does not match.
    """
    sizes = _axis_sizes_from(config)
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
            raise ValueError(f"mesh.{name} must be an int (-1 = the rest); got {size!r}")
        if size == 0 or size < -1:
            raise ValueError(f"mesh.{name} must be a positive int or -1 (the rest); got {size}")
    rest = [name for name, size in sizes.items() if size == -1]
    described = " x ".join(f"{n}={s}" for n, s in sizes.items())
    if len(rest) > 1:
        raise ValueError(f"mesh: at most one axis may be -1 (the rest); got {described}")
    fixed = math.prod(int(s) for s in sizes.values() if s != -1)
    if rest:
        if num_devices % fixed:
            raise ValueError(
                f"mesh {described}: the fixed axes multiply to {fixed}, which does not divide the "
                f"{num_devices} available devices, so mesh.{rest[0]}=-1 cannot take the rest"
            )
        sizes[rest[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(
            f"mesh {described} = {fixed} devices, but {num_devices} devices are available; "
            "the product must equal the device count (set one axis to -1 to take the rest)"
        )
    return tuple(int(sizes[name]) for name in MESH_AXES)


def make_mesh(config: Any, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """Builds the (data, fsdp, tensor) mesh with `Auto` axis types.

    Args:
      config: mesh sizes, see `resolve_mesh_shape`.
      devices: devices to use; default all global devices (every process's, when multi-host).

    Returns:
      A `jax.sharding.Mesh` over `devices` with axis names `MESH_AXES`.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(config, len(devices))
    return jax.make_mesh(
        shape,
        MESH_AXES,
        axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
        devices=devices,
    )
