"""NamedShardings for parameter states, optimizer states and batches, checked before compiling.

Parameters carry their logical axis names in `nnx.Param(..., logical_axes=(...))` metadata; the
rules table (`tempo_jax.parallel.rules`) turns them into mesh axes. Every function here returns a
tree with the same structure as its input (Variables stay Variables, holding a `NamedSharding`
instead of an array), so the result can go straight into `jax.jit(in_shardings=...,
out_shardings=...)`, `jax.device_put` or `abstract_state`; `State.to_pure_dict()` on it gives the
matching pure-dict form.

Indivisible dimensions: a dimension whose size is not a multiple of the product of its mesh axes
raises one `ValueError` listing every offending parameter path, logical axis, dimension, size and
mesh axes, before anything is compiled (`on_indivisible='error'`, the default: a silent fallback
would quietly replicate a large weight on every device). `on_indivisible='replicate'` replicates
such a dimension instead, as MaxText does, for callers who prefer to run anyway.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from tempo_jax.parallel.rules import DEFAULT_RULES, Rules, mesh_axes_for, spec_from_mesh_axes

OnIndivisible = Literal["error", "replicate"]
LOGICAL_AXES_KEY = "logical_axes"


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else tuple(np.shape(x))


def _path_str(path: Sequence[Any]) -> str:
    return jax.tree_util.keystr(tuple(path), simple=True, separator=".") or "<root>"


def logical_axes_of(x: Any) -> tuple[str | None, ...] | None:
    """The `logical_axes` metadata of a Variable, or None (plain arrays, Variables without it)."""
    if not _is_variable(x):
        return None
    axes = x.get_metadata().get(LOGICAL_AXES_KEY)
    return None if axes is None else tuple(axes)


def _describe_mesh_axes(axes: Sequence[str], mesh: jax.sharding.Mesh) -> str:
    sizes = [mesh.shape[a] for a in axes]
    if len(axes) == 1:
        return f"mesh axis {axes[0]!r} (size {sizes[0]})"
    product = "x".join(str(s) for s in sizes)
    return f"mesh axes {tuple(axes)} (sizes {product} = {math.prod(sizes)})"


class Checker:
    """Resolves logical names to NamedShardings (for parameters, batches and activations alike)
    and collects every indivisible dimension so one error can name them all."""

    def __init__(self, mesh: jax.sharding.Mesh, rules: Rules | None, on_indivisible: OnIndivisible):
        if on_indivisible not in ("error", "replicate"):
            raise ValueError(
                f"on_indivisible must be 'error' or 'replicate', got {on_indivisible!r}"
            )
        self.mesh = mesh
        self.rules = DEFAULT_RULES if rules is None else rules
        self.on_indivisible = on_indivisible
        self.problems: list[str] = []

    def sharding(
        self, shape: tuple[int, ...], logical_axes: Sequence[str | None] | None, where: str
    ) -> NamedSharding:
        if logical_axes is None:
            return NamedSharding(self.mesh, PartitionSpec())
        if len(logical_axes) != len(shape):
            raise ValueError(
                f"{where}: logical_axes {tuple(logical_axes)} has {len(logical_axes)} names but "
                f"the array has shape {shape}"
            )
        per_dim = list(mesh_axes_for(logical_axes, self.rules, where=where))
        for dim, axes in enumerate(per_dim):
            missing = [a for a in axes if a not in self.mesh.shape]
            if missing:
                raise ValueError(
                    f"{where}: logical axis {logical_axes[dim]!r} maps to mesh axes {missing} "
                    f"that the mesh {dict(self.mesh.shape)} does not have"
                )
            size = math.prod(self.mesh.shape[a] for a in axes)
            if shape[dim] % size:
                if self.on_indivisible == "replicate":
                    per_dim[dim] = ()
                else:
                    self.problems.append(
                        f"{where}: logical axis {logical_axes[dim]!r} (dim {dim}, size "
                        f"{shape[dim]}) is not divisible by {_describe_mesh_axes(axes, self.mesh)}"
                    )
        return NamedSharding(self.mesh, spec_from_mesh_axes(per_dim))

    def raise_if_any(self) -> None:
        if self.problems:
            raise ValueError(
                "\n".join(self.problems)
                + "\n(change the mesh sizes or the logical-axis rules, or pass "
                "on_indivisible='replicate' to replicate such dimensions)"
            )


def _leaf_sharding(checker: Checker, path: Sequence[Any], x: Any) -> Any:
    """Sharding for one Variable (kept as a Variable) or one plain leaf (replicated)."""
    where = _path_str(path)
    if _is_variable(x):
        return x.replace(checker.sharding(_shape(x.get_value()), logical_axes_of(x), where))
    return checker.sharding(_shape(x), None, where)


def state_shardings(
    state: Any,
    mesh: jax.sharding.Mesh,
    rules: Rules | None = None,
    *,
    on_indivisible: OnIndivisible = "error",
) -> Any:
    """NamedShardings for a parameter state from its Variables' `logical_axes` metadata.

    Args:
      state: an `nnx.State` or any pytree of Variables / arrays / `jax.ShapeDtypeStruct`s.
        Variables without `logical_axes` and plain arrays are replicated.
      mesh: the device mesh.
      rules: logical name -> mesh axes; default `DEFAULT_RULES`.
      on_indivisible: 'error' (default) or 'replicate', see the module docstring.

    Returns:
      A tree of the same structure whose leaves are `NamedSharding`s.

    Raises:
      ValueError: listing every dimension not divisible by its mesh axes, or a logical name
        without a rule, before any compile.
    """
    checker = Checker(mesh, rules, on_indivisible)
    out = jax.tree_util.tree_map_with_path(
        lambda p, x: _leaf_sharding(checker, p, x), state, is_leaf=_is_variable
    )
    checker.raise_if_any()
    return out


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def optimizer_shardings(
    opt_state: Any,
    params: Any,
    mesh: jax.sharding.Mesh,
    rules: Rules | None = None,
    *,
    on_indivisible: OnIndivisible = "error",
) -> Any:
    """NamedShardings for an optax state whose moments mirror `params`.

    Optax states embed param-shaped trees (Adam's `mu` / `nu`, momentum traces) under extra keys:
    the leaf at `0.mu.attn.q_proj.kernel` mirrors the parameter `attn.q_proj.kernel`. Each leaf
    takes the sharding of the parameter whose path is the longest suffix of its own path, provided
    the shapes agree; this works whether the state was built over an `nnx.State` of Variables or
    over its pure-dict form. Remaining Variables use their own `logical_axes`; everything else
    (step counts, scalars, schedule state, shape-mismatched leaves such as factored statistics)
    is replicated.

    Args:
      opt_state: `optax` state from `tx.init(params)` (or its `jax.eval_shape`).
      params: the parameters with their `logical_axes` metadata (arrays, Variables or
        ShapeDtypeStructs), as given to `state_shardings`.
      mesh, rules, on_indivisible: as in `state_shardings`.

    Returns:
      A tree of the same structure as `opt_state` with `NamedSharding` leaves (Variables kept).
    """
    param_shardings = state_shardings(params, mesh, rules, on_indivisible=on_indivisible)
    by_path: dict[tuple[str, ...], tuple[tuple[int, ...], NamedSharding]] = {}
    for (path, x), sharding in zip(
        jax.tree_util.tree_leaves_with_path(params, is_leaf=_is_variable),
        jax.tree.leaves(param_shardings),
        strict=True,
    ):
        value = x.get_value() if _is_variable(x) else x
        by_path[tuple(_key_name(k) for k in path)] = (_shape(value), sharding)
    checker = Checker(mesh, rules, on_indivisible)

    def one(path: Sequence[Any], x: Any) -> Any:
        keys = tuple(_key_name(k) for k in path)
        value = x.get_value() if _is_variable(x) else x
        for start in range(len(keys)):
            match = by_path.get(keys[start:])
            if match is not None and match[0] == _shape(value):
                return x.replace(match[1]) if _is_variable(x) else match[1]
        return _leaf_sharding(checker, path, x)

    out = jax.tree_util.tree_map_with_path(one, opt_state, is_leaf=_is_variable)
    checker.raise_if_any()
    return out


def batch_sharding(mesh: jax.sharding.Mesh, rules: Rules | None = None) -> NamedSharding:
    """Sharding of any array whose leading dim is the batch: P(batch mesh axes), rest replicated.

    No divisibility check; `batch_shardings` checks a concrete batch.
    """
    return NamedSharding(mesh, spec_from_mesh_axes(mesh_axes_for(("batch",), rules)))


def batch_shardings(batch: Any, mesh: jax.sharding.Mesh, rules: Rules | None = None) -> Any:
    """Shardings for a batch pytree: dim 0 of every leaf over the `batch` rule's mesh axes.

    Args:
      batch: pytree of arrays `[B, ...]` (scalar leaves are replicated).
      mesh, rules: as in `state_shardings`.

    Raises:
      ValueError: naming each leaf whose batch size is not divisible by the batch mesh axes.
    """
    checker = Checker(mesh, rules, "error")

    def one(path: Sequence[Any], x: Any) -> NamedSharding:
        shape = _shape(x)
        logical = None if not shape else ("batch",) + (None,) * (len(shape) - 1)
        return checker.sharding(shape, logical, _path_str(path))

    out = jax.tree_util.tree_map_with_path(one, batch)
    checker.raise_if_any()
    return out


def place(tree: Any, shardings: Any) -> Any:
    """Puts a (host or device) tree on the mesh with the given shardings (same structure).

    Multi-host: every process must pass the same values; each keeps only its addressable shards.
    """
    return jax.device_put(tree, shardings)


def abstract_state(tree: Any, shardings: Any) -> Any:
    """`jax.ShapeDtypeStruct`s carrying shardings, e.g. the target of an Orbax restore.

    Args:
      tree: arrays or ShapeDtypeStructs (e.g. from `nnx.eval_shape`), Variables allowed.
      shardings: a tree of the same structure from `state_shardings` / `optimizer_shardings`.
    """
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(
            _shape(x), x.dtype if hasattr(x, "dtype") else np.result_type(x), sharding=s
        ),
        tree,
        shardings,
    )
