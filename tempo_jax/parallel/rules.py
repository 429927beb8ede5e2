"""Logical-axis rules: one table mapping the models' logical axis names to mesh axes.

Parameters name their dimensions (`vocab, embed, heads, kv_heads, head_dim, mlp, layers`) and
activations use `batch, length, cache_length` and `activation_*`; this table decides which mesh
axes shard each name. The default is MaxText's FSDP + tensor-parallel layout: the batch is split
over `data` and `fsdp`, the embedding dimension of every weight over `fsdp` (ZeRO-3 style), and the
head / MLP / vocabulary dimensions over `tensor` (Megatron style).

In configs a rule's value is a string so that it can be overridden from the command line:
`'data,fsdp'` (several axes), `'fsdp'` (one) or `''` / `'none'` (replicated); Python callers may
also pass a tuple of axis names or None.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jax.sharding import PartitionSpec

from tempo_jax.parallel.mesh import MESH_AXES

Rules = Mapping[str, tuple[str, ...]]

DEFAULT_RULES: dict[str, tuple[str, ...]] = {
    # Parameter axes.
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    "layers": (),
    # Activation axes (for sharding constraints and batches).
    "batch": ("data", "fsdp"),
    "length": (),
    "cache_length": (),
    "activation_embed": (),
    "activation_heads": ("tensor",),
    "activation_kv_heads": ("tensor",),
    "activation_mlp": ("tensor",),
    "activation_vocab": ("tensor",),
}


# Logical names of parameter dimensions (the rest of a rules table names activations).
PARAMETER_AXES = ("vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "layers")


def inference_rules(rules: Rules | None = None) -> dict[str, tuple[str, ...]]:
    """The rules the sampler runs under: parameters never sharded over the batch's mesh axes.

    Training shards each weight's `embed` dimension over `fsdp` (ZeRO-3), which costs one
    all-gather of every weight per forward pass: cheap for a training step, ruinous for a
    decode loop that would repeat it at each of thousands of steps. Under these rules every
    parameter dimension drops the mesh axes that the `batch` rule uses (data, fsdp by default),
    so each batch shard holds whole weights (split only over `tensor`) and decodes its own rows
    with no weight traffic; activation and batch rules are unchanged.

    Args:
      rules: the training rules (default `DEFAULT_RULES`).
    """
    rules = dict(DEFAULT_RULES if rules is None else rules)
    batch_axes = set(parse_rule_value("batch", rules.get("batch", ())))
    for name in PARAMETER_AXES:
        if name in rules:
            axes = parse_rule_value(name, rules[name])
            rules[name] = tuple(a for a in axes if a not in batch_axes)
    return rules


def parse_rule_value(name: str, value: Any) -> tuple[str, ...]:
    """Normalises one rule value to a tuple of mesh axis names (empty = replicated).

    Args:
      name: the logical axis name (for the error message).
      value: None, a string `'data,fsdp'` / `'fsdp'` / `''` / `'none'`, or a sequence of names.

    Raises:
      ValueError: naming the rule when a mesh axis is unknown or repeated.
    """
    if value is None:
        axes: tuple[str, ...] = ()
    elif isinstance(value, str):
        text = value.strip()
        if text.lower() in ("", "none", "null"):
            axes = ()
        else:
            axes = tuple(part.strip() for part in text.replace("+", ",").split(","))
    elif isinstance(value, Sequence):
        axes = tuple(value)
    else:
        raise ValueError(
            f"rules.{name}: expected mesh axis names ('data,fsdp', 'fsdp', '' for replicated), "
            f"got {value!r}"
        )
    for axis in axes:
        if axis not in MESH_AXES:
            raise ValueError(f"rules.{name}: unknown mesh axis {axis!r}; mesh axes are {MESH_AXES}")
    if len(set(axes)) != len(axes):
        raise ValueError(f"rules.{name}: mesh axis repeated in {axes}")
    return axes


def rules_key(rules: Rules | None) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
    """`rules` as a hashable, order-free value (for caches keyed by what a trace depends on)."""
    if rules is None:
        return None
    return tuple(sorted((name, tuple(axes)) for name, axes in rules.items()))


def make_rules(overrides: Mapping[str, Any] | Any | None = None) -> dict[str, tuple[str, ...]]:
    """The default rules with `overrides` applied on top.

    Args:
      overrides: logical name -> mesh axes (a mapping or an ml_collections ConfigDict). New
        names are allowed (e.g. extra activation names); existing names are replaced.

    Returns:
      A fresh dict logical name -> tuple of mesh axis names.
    """
    rules = dict(DEFAULT_RULES)
    if overrides is None:
        return rules
    if hasattr(overrides, "to_dict"):  # ml_collections.ConfigDict
        overrides = overrides.to_dict()
    if not isinstance(overrides, Mapping):
        raise ValueError(f"rules: expected a mapping logical name -> mesh axes, got {overrides!r}")
    for name, value in overrides.items():
        rules[str(name)] = parse_rule_value(str(name), value)
    return rules


def mesh_axes_for(
    logical_axes: Sequence[str | None], rules: Rules | None = None, *, where: str = "array"
) -> tuple[tuple[str, ...], ...]:
    """Mesh axes for each dimension, given its logical names.

    A mesh axis may shard only one dimension of an array; when two dimensions map to the same mesh
    axis (e.g. `('heads', 'mlp')` both -> `tensor`), the first dimension keeps it and the later one
    drops it. (Flax's nnx resolver, `nnx.logical_axis_rules` + `nnx.get_partition_spec`, looks
    each name up alone and would give the invalid `P('tensor', 'tensor')`; see the README.)

    Args:
      logical_axes: one logical name (or None = replicated) per dimension.
      rules: the table; default `DEFAULT_RULES`.
      where: what the names belong to, for error messages (a parameter path).

    Raises:
      ValueError: when a logical name has no rule.
    """
    rules = DEFAULT_RULES if rules is None else rules
    used: set[str] = set()
    out = []
    for dim, name in enumerate(logical_axes):
        if name is None:
            out.append(())
            continue
        if name not in rules:
            raise ValueError(
                f"{where}: logical axis {name!r} (dim {dim}) has no sharding rule; "
                f"known names: {sorted(rules)}"
            )
        # Parsing here accepts un-normalised tables too ({'embed': 'fsdp'}, not only tuples).
        axes = tuple(a for a in parse_rule_value(name, rules[name]) if a not in used)
        used.update(axes)
        out.append(axes)
    return tuple(out)


def spec_from_mesh_axes(mesh_axes: Sequence[Sequence[str]]) -> PartitionSpec:
    """PartitionSpec for per-dimension mesh axes; trailing replicated dims are dropped."""
    entries: list[Any] = [
        None if not axes else (axes[0] if len(axes) == 1 else tuple(axes)) for axes in mesh_axes
    ]
    while entries and entries[-1] is None:
        entries.pop()
    return PartitionSpec(*entries)


def logical_to_spec(
    logical_axes: Sequence[str | None], rules: Rules | None = None
) -> PartitionSpec:
    """PartitionSpec for logical names, e.g. ('embed', 'mlp') -> P('fsdp', 'tensor').

    No divisibility check (no shapes here); use `tempo_jax.parallel.shardings` for arrays.
    """
    return spec_from_mesh_axes(mesh_axes_for(logical_axes, rules))
