"""Step functions under `jax.jit` with explicit shardings, compiled once per (function, mesh).

    step = compile_train_step(make_policy_step(graphdef, settings), state, batch, mesh, rules,
                              micro_batches=settings.micro_batches, name="policy_step")
    state, metrics = step(state, batch)        # state donated; metrics replicated scalars
    step.cache_size()                          # compiled executables so far (1 after any calls)

The in/out shardings come from `tempo_jax.parallel`: parameters and optimizer state from the
params' logical axes, batch leaves split over the `batch` rule's mesh axes on dim 0, metrics
replicated. The function is traced inside `parallel.activation_sharding(mesh, rules)`, so the
model's activation constraints (rows over the batch axes) apply. `step.lower()` lowers it for
its example arguments, which may be abstract: what `tempo-jax compile` measures. Every check
(divisible dimensions, micro-batches, batch shapes and dtypes) runs in Python before tracing,
and each call is checked against the example it was built with, so a batch of another shape
fails with a message instead of silently compiling a second executable.

Multi-process: host (numpy) inputs must be equal on every process (they become global arrays,
each process placing its own shards); sharded outputs come back to the host with
`parallel.host_from_global`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from tempo_jax import parallel
from tempo_jax.parallel.activations import activation_sharding
from tempo_jax.parallel.rules import Rules, mesh_axes_for
from tempo_jax.train.batch import RLBatch, Sequences, check_batch
from tempo_jax.train.train_state import TrainState, train_state_shardings

# Canonical dtypes of batch fields, so that every batch hits the same executable.
BATCH_DTYPES: dict[str, Any] = {
    "tokens": jnp.int32,
    "attention_mask": jnp.bool_,
    "response_mask": jnp.bool_,
    "old_logprobs": jnp.float32,
    "advantages": jnp.float32,
    "returns": jnp.float32,
    "old_values": jnp.float32,
    "is_labeled": jnp.bool_,
    "keep": jnp.bool_,
}


def canonical_batch(batch: Sequences | RLBatch) -> Sequences | RLBatch:
    """The batch with every field cast to `BATCH_DTYPES` (no copy where it already matches).

    Works on host (numpy) and device arrays; multi-host callers cast their local numpy batch
    before `jax.make_array_from_process_local_data`.
    """
    changes = {}
    for name in batch.__dataclass_fields__:
        value = getattr(batch, name)
        dtype = np.dtype(BATCH_DTYPES[name])
        if np.dtype(value.dtype) != dtype:
            changes[name] = value.astype(dtype)
    return batch.replace(**changes) if changes else batch


def _signature(tree: Any) -> tuple[Any, tuple[tuple[str, tuple[int, ...], np.dtype], ...]]:
    """(treedef, ((leaf path, shape, dtype), ...)) of a pytree of arrays / ShapeDtypeStructs."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return treedef, tuple(
        (jax.tree_util.keystr(path, simple=True, separator="."), tuple(x.shape), np.dtype(x.dtype))
        for path, x in leaves
    )


def check_micro_batches(
    num_rows: int, micro_batches: int, mesh: jax.sharding.Mesh, rules: Rules | None = None
) -> None:
    """Each of k micro-batches takes N / k rows, which the batch's mesh axes must divide.

    Raises:
      ValueError: naming `train.micro_batches`, the row count and the batch shards.
    """
    if num_rows % micro_batches:
        raise ValueError(
            f"train.micro_batches={micro_batches} does not divide the batch of {num_rows} rows"
        )
    (axes,) = mesh_axes_for(("batch",), rules)
    shards = math.prod(mesh.shape[a] for a in axes)
    if (num_rows // micro_batches) % shards:
        raise ValueError(
            f"train.micro_batches={micro_batches}: micro-batches of {num_rows // micro_batches} "
            f"rows cannot be split over the {shards} batch shards of mesh axes {axes} "
            f"{dict(mesh.shape)}; use a batch of a multiple of {micro_batches * shards} rows"
        )


class CompiledStep:
    """A function under `jax.jit` with fixed shardings, checked against its example inputs.

    Call it like the function. `cache_size()` is the number of executables jit holds for it (it
    stays 1 as long as callers pass inputs like the example, which `__call__` enforces).
    """

    def __init__(
        self,
        name: str,
        fn: Callable,
        example_args: tuple[Any, ...],
        in_shardings: tuple[Any, ...],
        out_shardings: Any,
        donate_argnums: tuple[int, ...] = (),
        compiler_options: dict[str, Any] | None = None,
        *,
        mesh: jax.sharding.Mesh | None = None,
        rules: Rules | None = None,
    ):
        self.name = name
        self.in_shardings = in_shardings
        self.out_shardings = out_shardings
        self.example_args = example_args
        self._signatures = tuple(_signature(a) for a in example_args)

        def traced(*args):
            # Activation constraints by the same rules as the parameters (traced only here).
            with activation_sharding(mesh, rules):
                return fn(*args)

        self._jitted = jax.jit(
            traced,
            in_shardings=in_shardings,
            out_shardings=out_shardings,
            donate_argnums=donate_argnums,
            compiler_options=compiler_options,
        )

    def _check(self, args: tuple[Any, ...]) -> None:
        for i, (arg, (treedef, leaves)) in enumerate(zip(args, self._signatures, strict=True)):
            if isinstance(arg, Sequences | RLBatch):
                check_batch(arg)
            got_treedef, got_leaves = _signature(arg)
            where = f"{self.name} argument {i}"
            if got_treedef != treedef:
                raise ValueError(f"{where}: pytree structure differs from the compiled example")
            for got, expected in zip(got_leaves, leaves, strict=True):
                if got != expected:
                    raise ValueError(
                        f"{where}, field {got[0]}: shape {got[1]} {got[2]} differs from the "
                        f"compiled {expected[1]} {expected[2]}; a step compiles once for one "
                        "batch shape (use canonical_batch for dtypes, pad to the compiled shape)"
                    )

    def __call__(self, *args: Any) -> Any:
        self._check(args)
        if jax.process_count() > 1:
            # jit refuses numpy inputs with sharded in_shardings across processes; every process
            # holds the same host batch, so each places its own shards of it.
            args = tuple(
                parallel.global_from_host(arg, shardings)
                for arg, shardings in zip(args, self.in_shardings, strict=True)
            )
        return self._jitted(*args)

    def lower(self, *args: Any) -> jax.stages.Lowered:
        """The lowered computation for `args` (default: the example arguments, which may be
        abstract: `ShapeDtypeStruct`s); does not count as a call. `.compile()` on it is what
        `tempo-jax compile` measures."""
        return self._jitted.lower(*(args or self.example_args))

    def cache_size(self) -> int:
        """Executables compiled for this function so far."""
        return self._jitted._cache_size()


def compile_train_step(
    step_fn: Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]],
    state: TrainState,
    batch: RLBatch,
    mesh: jax.sharding.Mesh,
    rules: Rules | None = None,
    *,
    micro_batches: int = 1,
    on_indivisible: str = "error",
    name: str = "train_step",
    compiler_options: dict[str, Any] | None = None,
) -> CompiledStep:
    """`jax.jit(step_fn, in_shardings, out_shardings, donate_argnums=(0,))` for one mesh.

    Args:
      step_fn: `make_policy_step(...)` or `make_critic_step(...)`.
      state: a TrainState (concrete or abstract) fixing the state's structure and shapes.
      batch: an example batch (concrete or abstract) fixing the batch shapes and dtypes.
      mesh, rules: where it runs; `rules` default to `parallel.DEFAULT_RULES`.
      micro_batches: the step's `settings.micro_batches` (checked against the batch and mesh).
      on_indivisible: passed to `tempo_jax.parallel` ('error' fails before compiling).
      name: for error messages.
      compiler_options: XLA options for `jax.jit` (e.g. the tests lower the CPU backend's
        optimisation level to halve compile time); None = XLA's defaults.

    Raises:
      ValueError: before any compile, for a mesh that does not divide a parameter (the parallel
        module's message), a batch the mesh or the micro-batches do not divide, or a bad batch.
    """
    check_batch(batch)
    state_shardings = train_state_shardings(state, mesh, rules, on_indivisible=on_indivisible)
    batch_shardings = parallel.batch_shardings(batch, mesh, rules)
    check_micro_batches(batch.tokens.shape[0], micro_batches, mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    return CompiledStep(
        name,
        step_fn,
        (state, batch),
        (state_shardings, batch_shardings),
        (state_shardings, replicated),
        donate_argnums=(0,),
        compiler_options=compiler_options,
        mesh=mesh,
        rules=rules,
    )


def compile_forward(
    forward_fn: Callable[[Any, Sequences], Any],
    params: Any,
    seqs: Sequences,
    mesh: jax.sharding.Mesh,
    rules: Rules | None = None,
    *,
    micro_batches: int = 1,
    on_indivisible: str = "error",
    name: str = "forward",
    compiler_options: dict[str, Any] | None = None,
) -> CompiledStep:
    """`jax.jit` of a forward-only function `(params, seqs) -> [N, L] arrays` for one mesh.

    Outputs are split over the batch axes like the inputs' rows (ready to go into an RLBatch).
    Arguments as in `compile_train_step`.
    """
    check_batch(seqs)
    param_shardings = parallel.state_shardings(params, mesh, rules, on_indivisible=on_indivisible)
    seq_shardings = parallel.batch_shardings(seqs, mesh, rules)
    check_micro_batches(seqs.tokens.shape[0], micro_batches, mesh, rules)
    return CompiledStep(
        name,
        forward_fn,
        (params, seqs),
        (param_shardings, seq_shardings),
        parallel.batch_sharding(mesh, rules),
        compiler_options=compiler_options,
        mesh=mesh,
        rules=rules,
    )
