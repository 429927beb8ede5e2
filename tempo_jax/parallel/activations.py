"""Activation sharding: logical-axis constraints that the models apply inside a mesh context.

The models stay mesh-agnostic. At the few places where XLA's sharding propagation would
otherwise choose badly they call `constrain(x, ("batch", "length", "activation_embed"))`, the
identity unless the function is being traced inside `activation_sharding(mesh, rules)`:

    with parallel.activation_sharding(mesh, rules):
        lowered = jax.jit(step_fn, in_shardings=..., out_shardings=...).lower(state, batch)

Why it matters: the parameters are sharded on their `embed` axis over `fsdp` (ZeRO-3), and
without a constraint on the residual stream the partitioner may keep activations split on that
same axis instead of on the batch, so every chip holds whole-micro-batch activations and each
matmul all-reduces them; per-chip temporaries then grow with the chip count at a fixed number of
rows per chip. With the batch constrained over the `batch` rule's mesh axes (data, fsdp) the
weights are all-gathered instead and the activations stay split by rows.

A constraint never falls back to replication: a dimension that its mesh axes do not divide
raises a ValueError naming the logical axis, the size and the mesh axes (a silently replicated
activation is how a run that fits on paper runs out of memory on a pod).

The context is a hashable value (`ActivationSharding`), so jitted inner functions can take it
as a static argument and cache one trace per context (see `tempo_jax.models.decoder`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import jax
from jax.sharding import NamedSharding

from tempo_jax.parallel.rules import DEFAULT_RULES, parse_rule_value
from tempo_jax.parallel.shardings import Checker

_HINT = (
    "(it would be replicated on every device; choose row counts (prompts per step, samples, "
    "micro-batches) that the mesh divides)"
)


@dataclasses.dataclass(frozen=True)
class ActivationSharding:
    """A mesh and a rules table, hashable (rules as sorted (name, axes) pairs).

    Attributes:
      mesh: the device mesh.
      rules: ((logical name, mesh axes), ...).
    """

    mesh: jax.sharding.Mesh
    rules: tuple[tuple[str, tuple[str, ...]], ...]

    @classmethod
    def create(
        cls, mesh: jax.sharding.Mesh, rules: Mapping[str, Sequence[str]] | None = None
    ) -> ActivationSharding:
        rules = DEFAULT_RULES if rules is None else rules
        return cls(mesh, tuple(sorted((k, parse_rule_value(k, v)) for k, v in rules.items())))

    def sharding(self, shape: Sequence[int], logical_axes: Sequence[str | None]) -> NamedSharding:
        """The NamedSharding of an array of `shape` with these logical names.

        Raises:
          ValueError: when a dimension is not divisible by the product of its mesh axes, or the
            number of names differs from the rank.
        """
        checker = Checker(self.mesh, dict(self.rules), "error")
        sharding = checker.sharding(tuple(shape), logical_axes, f"activation {tuple(shape)}")
        if checker.problems:
            raise ValueError("\n".join([*checker.problems, _HINT]))
        return sharding


_CURRENT: contextvars.ContextVar[ActivationSharding | None] = contextvars.ContextVar(
    "tempo_jax_activation_sharding", default=None
)


@contextlib.contextmanager
def activation_sharding(
    mesh: jax.sharding.Mesh | None, rules: Mapping[str, Sequence[str]] | None = None
) -> Iterator[ActivationSharding | None]:
    """Within this context, `constrain` shards activations over `mesh` by `rules`.

    Only tracing needs it (wrap the `jit(...).lower(...)` or the first call). `mesh=None` turns
    constraints off (a single-device run).
    """
    value = None if mesh is None else ActivationSharding.create(mesh, rules)
    token = _CURRENT.set(value)
    try:
        yield value
    finally:
        _CURRENT.reset(token)


def current_activation_sharding() -> ActivationSharding | None:
    """The active context (None outside `activation_sharding`)."""
    return _CURRENT.get()


def constrain(
    x: jax.Array,
    logical_axes: Sequence[str | None],
    context: ActivationSharding | None = None,
) -> jax.Array:
    """`with_sharding_constraint` by logical names under `context` (default: the active one);
    the identity when there is none. Raises ValueError instead of replicating (module doc)."""
    context = current_activation_sharding() if context is None else context
    if context is None:
        return x
    return jax.lax.with_sharding_constraint(x, context.sharding(x.shape, logical_axes))
