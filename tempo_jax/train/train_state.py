"""Train state pytrees (params, optimizer state, step) and how they are built and sharded.

A model is split once into a static graphdef (kept outside every jit: the model structure and its
config, including the compute dtype and remat choice) and an `nnx.State` of its Params. The
`TrainState` holds only arrays, so it is what the jitted steps take and return (donated), what
`tempo_jax.parallel` shards, and what Orbax saves.

    graphdef, params = split_for_training(policy, settings)
    state = create_train_state(params, settings.policy_optimizer, mesh, rules)   # sharded
    state_shardings = train_state_shardings(state, mesh, rules)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from tempo_jax import parallel
from tempo_jax.parallel.rules import Rules
from tempo_jax.train.config import OptimizerSettings, TrainSettings
from tempo_jax.train.optimizers import make_optimizer


@flax.struct.dataclass
class TrainState:
    """Everything one role (policy or critic) carries between steps.

    Attributes:
      params: `nnx.State` of the model's Params (Variables keep their `logical_axes`).
      opt_state: the optax state of `make_optimizer(settings)` over `params`.
      step: int32 scalar, optimizer updates applied so far (skipped steps do not count); the
        learning-rate schedule is a function of it.
    """

    params: nnx.State
    opt_state: Any
    step: jax.Array


def split_for_training(
    model: nnx.Module, settings: TrainSettings
) -> tuple[nnx.GraphDef, nnx.State]:
    """The graphdef to run under the step functions and the model's parameter state.

    The graphdef is rebuilt (abstractly, nothing is allocated) from the model's config with the
    settings' compute dtype and remat choice; the parameters keep their stored dtype, so
    `compute_dtype = 'bfloat16'` over float32 params trains in bfloat16 with float32 params and
    optimizer state.

    Args:
      model: a `tempo_jax.models.Policy` or `Critic` (anything with a dataclass `config` field
        that has `dtype` and `remat`, and a `(config, rngs=)` constructor).
      settings: validated train settings.

    Returns:
      (graphdef, params): `nnx.merge(graphdef, params)` is the model in the training dtypes.
    """
    config = model.config
    changes: dict[str, Any] = {"remat": settings.remat}
    if settings.compute_dtype:
        changes["dtype"] = settings.compute_dtype
    config = dataclasses.replace(config, **changes)
    abstract = nnx.eval_shape(lambda: type(model)(config, rngs=nnx.Rngs(0)))
    graphdef, abstract_params, rest = nnx.split(abstract, nnx.Param, ...)
    params, other = nnx.split_state(nnx.state(model), nnx.Param, ...)
    if len(jax.tree.leaves(rest)) or len(jax.tree.leaves(other)):
        raise ValueError(
            f"{type(model).__name__} holds non-Param state; the train steps expect parameters only"
        )

    def signature(tree):
        return [
            (jax.tree_util.keystr(path), tuple(x.shape), jnp.dtype(x.dtype))
            for path, x in jax.tree_util.tree_leaves_with_path(tree)
        ]

    mismatched = sorted(set(signature(params)) ^ set(signature(abstract_params)))
    if mismatched:
        raise ValueError(
            f"{type(model).__name__}: parameters do not match its config (path, shape, dtype "
            f"differ: {mismatched[:4]})"
        )
    return graphdef, params


def _init_fn(optimizer: OptimizerSettings):
    tx = make_optimizer(optimizer)

    def init(params: nnx.State) -> TrainState:
        return TrainState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32))

    return init


def train_state_shardings(
    state: TrainState,
    mesh: jax.sharding.Mesh,
    rules: Rules | None = None,
    *,
    on_indivisible: str = "error",
) -> TrainState:
    """NamedShardings for a (concrete or abstract) TrainState, from the params' logical axes.

    Raises:
      ValueError: from `tempo_jax.parallel`, naming every parameter dimension its mesh axes do
        not divide (before anything is compiled).
    """
    return TrainState(
        params=parallel.state_shardings(state.params, mesh, rules, on_indivisible=on_indivisible),
        opt_state=parallel.optimizer_shardings(
            state.opt_state, state.params, mesh, rules, on_indivisible=on_indivisible
        ),
        step=NamedSharding(mesh, PartitionSpec()),
    )


def abstract_train_state(
    params: nnx.State,
    optimizer: OptimizerSettings,
    mesh: jax.sharding.Mesh | None = None,
    rules: Rules | None = None,
    *,
    on_indivisible: str = "error",
) -> TrainState:
    """The state's `jax.ShapeDtypeStruct`s (with shardings when `mesh` is given), e.g. as the
    target of an Orbax restore. `params` may be abstract (`nnx.eval_shape`)."""
    abstract = jax.eval_shape(_init_fn(optimizer), params)
    if mesh is None:
        return abstract
    shardings = train_state_shardings(abstract, mesh, rules, on_indivisible=on_indivisible)
    return parallel.abstract_state(abstract, shardings)


def create_train_state(
    params: nnx.State,
    optimizer: OptimizerSettings,
    mesh: jax.sharding.Mesh | None = None,
    rules: Rules | None = None,
    *,
    on_indivisible: str = "error",
) -> TrainState:
    """A fresh TrainState (step 0, zero moments), sharded over `mesh` when given.

    The parameters are placed with their shardings but not copied where they already are (the
    state may share buffers with `params`, and the first donated step then invalidates them: pass
    `jax.tree.map(jnp.copy, params)` to keep the originals). The optimizer state is created
    directly in its shardings by a small jitted init, so no device ever holds an unsharded copy of
    it. Multi-host: every process passes the same parameter values.

    Raises:
      ValueError: (before compiling) when the mesh does not divide a parameter dimension.
    """
    init = _init_fn(optimizer)
    if mesh is None:
        return jax.jit(init)(params)
    abstract = jax.eval_shape(init, params)
    shardings = train_state_shardings(abstract, mesh, rules, on_indivisible=on_indivisible)
    placed = parallel.place(params, shardings.params)
    return jax.jit(init, in_shardings=(shardings.params,), out_shardings=shardings)(placed)
