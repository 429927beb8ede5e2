"""The abstract run that `tempo-jax compile` lowers, and the bytes per chip of its pieces.

    plan, source = build_plan(config, devices)   # no weights, data or tokenizer read
    tree_bytes_per_chip(plan.policy)             # the policy's TrainState on one chip

A `Plan` holds the run's mesh and rules, its `RunFunctions`, its sampler (static or paged) and
the abstract train states (`jax.ShapeDtypeStruct`s carrying the run's shardings).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from tempo_jax import models, parallel, train
from tempo_jax.aot import engine_compile
from tempo_jax.config.methods import get_method
from tempo_jax.parallel.topology import ChipSpec
from tempo_jax.tempo import functions as fns
from tempo_jax.tempo.build import make_sampler, planned_model_config

HBM_LIMIT_FRACTION = 0.9


@dataclasses.dataclass(kw_only=True)
class Plan:
    """The pieces of a run that `compile_report` lowers (all abstract)."""

    config: ml_collections.ConfigDict
    model: models.ModelConfig
    policy_module: models.Policy
    mesh: jax.sharding.Mesh
    rules: Any
    settings: train.TrainSettings
    functions: fns.RunFunctions
    sampler: Any
    policy: train.TrainState
    critic: train.TrainState | None
    chip: ChipSpec | None = None  # set by compile_report

    @property
    def prompt_width(self) -> int:
        return self.config.data.max_prompt_length

    @property
    def response_length(self) -> int:
        return self.config.rollout.max_new_tokens

    def train_state_bytes(self) -> int:
        """The policy's and the critic's TrainState shards on one chip."""
        critic = tree_bytes_per_chip(self.critic) if self.critic is not None else 0
        return tree_bytes_per_chip(self.policy) + critic


def _abstract_state(model_config, cls, settings, optimizer, mesh, rules):
    module = nnx.eval_shape(lambda: cls(model_config, rngs=nnx.Rngs(0)))
    graphdef, params = train.split_for_training(module, settings)
    return module, graphdef, train.abstract_train_state(params, optimizer, mesh, rules)


def build_plan(
    config: ml_collections.ConfigDict, devices: Sequence[jax.Device]
) -> tuple[Plan, str]:
    """(the plan of a run of `config` on `devices`, where its model config came from)."""
    mesh = parallel.make_mesh(config.parallel.mesh, devices=devices)
    rules = parallel.make_rules(config.parallel.rules)
    settings = train.settings_from_config(config.train)
    platform = devices[0].platform
    policy_config, source = planned_model_config(config, "policy", platform)
    policy_module, policy_graphdef, policy = _abstract_state(
        policy_config, models.Policy, settings, settings.policy_optimizer, mesh, rules
    )
    critic_graphdef, critic = None, None
    if get_method(config.method).uses_critic:
        critic_config, _ = planned_model_config(config, "critic", platform)
        _, critic_graphdef, critic = _abstract_state(
            critic_config, models.Critic, settings, settings.critic_optimizer, mesh, rules
        )
    functions = fns.RunFunctions.for_run(
        config, mesh, rules, settings, policy_graphdef, critic_graphdef
    )
    eos = policy_config.eos_token_id
    eos_ids = tuple(np.atleast_1d(eos if eos is not None else 0).tolist())
    pad_id = policy_config.pad_token_id or 0
    sampler = make_sampler(config, policy_module, mesh, rules, eos_ids, pad_id)
    plan = Plan(
        config=config, model=policy_config, policy_module=policy_module, mesh=mesh, rules=rules,
        settings=settings, functions=functions, sampler=sampler, policy=policy, critic=critic,
    )  # fmt: skip
    return plan, source


def tree_bytes_per_chip(tree: Any) -> int:
    """Bytes one chip holds of a tree of ShapeDtypeStructs / arrays carrying NamedShardings."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total


def compute_dtype_bytes(params: Any, model: models.ModelConfig) -> int:
    """Bytes of all of `params` in the model's compute dtype (the decode weights, whole)."""
    itemsize = np.dtype(model.compute_dtype).itemsize
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params)) * itemsize


def decode_weight_bytes(plan: Plan) -> int:
    """Bytes of the policy's weights per chip in the sampler's layout and compute dtype."""
    params = plan.policy.params
    shardings = parallel.state_shardings(params, plan.mesh, plan.sampler.inference_rules)
    itemsize = np.dtype(plan.model.compute_dtype).itemsize
    return sum(
        math.prod(s.shard_shape(x.shape)) * itemsize
        for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(shardings), strict=True)
    )


def engine_pool_pages(plan: Plan, call: fns.Call) -> int:
    """The engine's full-attention pool per row shard: `rollout.paged.num_pages`, or (0) what
    the chip's HBM limit leaves after the train states (`engine_compile.engine_pool_pages`)."""
    free = int(HBM_LIMIT_FRACTION * plan.chip.hbm_bytes) - plan.train_state_bytes()
    return engine_compile.engine_pool_pages(
        plan.sampler, plan.policy.params, call, plan.prompt_width, free
    )


def static_cache_bytes(plan: Plan, call: fns.Call) -> int:
    """Bytes per chip of the static sampler's KV cache [layers, rows, P + L - 1, K, Dh] x 2."""
    c = plan.model
    slots = plan.prompt_width + plan.response_length - 1
    shape = (c.num_layers, call.rows, slots, c.num_kv_heads, c.head_dim)
    context = parallel.ActivationSharding.create(plan.mesh, plan.sampler.inference_rules)
    sharding = context.sharding(shape, models.KV_CACHE_LOGICAL_AXES)
    return 2 * math.prod(sharding.shard_shape(shape)) * np.dtype(c.compute_dtype).itemsize


def sft_args(plan: Plan, tx) -> tuple:
    """Abstract SFT arguments on the mesh's first device: SFT runs unsharded (see train.sft)."""
    one = jax.sharding.SingleDeviceSharding(plan.mesh.devices.flat[0])

    def on_one(tree):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), tree)

    params = on_one(nnx.state(plan.policy_module, nnx.Param))
    rows = plan.config.sft.batch_size
    width = plan.prompt_width + plan.response_length
    seq = jax.ShapeDtypeStruct((rows, width), np.int32, sharding=one)
    response = jax.ShapeDtypeStruct((rows, plan.response_length), np.int32, sharding=one)
    return params, on_one(jax.eval_shape(tx.init, params)), seq, seq, response
