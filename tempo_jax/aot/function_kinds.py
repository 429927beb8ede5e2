"""What the compile report needs of each kind of function `tempo.functions.planned_calls` plans:
one row per function name, read wherever the report treats calls differently.

    kind = KINDS[call.function]
    compiled = kind.lower(plan, call)
    own = kind.state_bytes(plan)         # the state the call takes, per chip

Each row says how to lower the call, which state it takes and what else of the run stays live
around it (`resident`), its KV cache, its FLOPs and roofline time (`tempo_jax.models.roofline`)
and its shape in words.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from flax import nnx

from tempo_jax.aot import engine_compile
from tempo_jax.aot.plan import (
    Plan,
    decode_weight_bytes,
    engine_pool_pages,
    sft_args,
    static_cache_bytes,
    tree_bytes_per_chip,
)
from tempo_jax.models import roofline
from tempo_jax.parallel.topology import ChipSpec
from tempo_jax.sampling.engine_layout import page_bytes_per_chip
from tempo_jax.tempo import functions as fns
from tempo_jax.train import sft

# What else of the run is live on the chip while a function runs (`Kind.resident`).
OTHER_STATES = "the train states besides its own"
ALL_STATES = "both train states"  # the paged engine holds its own copy of the parameters
NOTHING = "nothing"  # SFT runs before the train states exist


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of compiled function, as the compile report sees it.

    Attributes:
      lower: (plan, call) -> the compiled executable (lowering and compiling happen there).
      state_bytes: plan -> bytes per chip of the state the call takes.
      resident: OTHER_STATES, ALL_STATES or NOTHING.
      kv_cache_bytes: (plan, call) -> bytes per chip of its KV cache (0 without one).
      cost: (plan, call, chip) -> (FLOPs of one call on all chips, roofline seconds).
      sampler: whether it is a sampler's call (its shape is prompts x samples, P + L tokens).
      shape_detail: (plan, call) -> what its shape in words adds to the rows and tokens.
    """

    lower: Callable[[Plan, fns.Call], Any]
    state_bytes: Callable[[Plan], int]
    resident: str
    cost: Callable[[Plan, fns.Call, ChipSpec], tuple[float, float]]
    kv_cache_bytes: Callable[[Plan, fns.Call], int] = lambda plan, call: 0
    sampler: bool = False
    shape_detail: Callable[[Plan, fns.Call], str] = lambda plan, call: ""

    def resident_bytes(self, plan: Plan, own: int) -> int:
        """The run's other live state per chip while the call runs."""
        if self.resident == NOTHING:
            return 0
        states = plan.train_state_bytes()
        return states if self.resident == ALL_STATES else states - own

    def shape(self, plan: Plan, call: fns.Call) -> str:
        """The call's shape in words."""
        if not self.sampler:
            response = call.length or plan.response_length
            return f"{call.rows} rows x {plan.prompt_width} + {response} tokens"
        return (
            f"{call.prompts} prompts x {call.samples} = {call.rows} rows, "
            f"{plan.prompt_width} + {plan.response_length} tokens"
        ) + self.shape_detail(plan, call)


def _train_cost(
    plan: Plan, call: fns.Call, chip: ChipSpec, *, head: bool, backward: bool, remat: bool
) -> tuple[float, float]:
    """`roofline.train_call` on the call's length bucket (SFT, without one, on the full L)."""
    response = call.length or plan.response_length
    return roofline.train_call(
        plan.model, chip, plan.mesh.size, rows=call.rows, prompt=plan.prompt_width,
        response=response, head=head, backward=backward, remat=remat,
    )  # fmt: skip


def _trained(step: str, state: str, *, head: bool, backward: bool) -> Kind:
    """A train step (`backward`) or forward of the policy or the critic (`state`) on its
    length bucket; `head`: the policy's log-prob head runs at the response positions."""

    def taken(plan: Plan):
        whole = getattr(plan, state)
        return whole if backward else whole.params

    def lower(plan: Plan, call: fns.Call):
        make = getattr(plan.functions, step)
        return make(taken(plan), call.rows, call.length).lower().compile()

    def cost(plan: Plan, call: fns.Call, chip: ChipSpec) -> tuple[float, float]:
        return _train_cost(
            plan, call, chip, head=head, backward=backward, remat=plan.settings.remat
        )

    return Kind(
        lower=lower,
        state_bytes=lambda plan: tree_bytes_per_chip(taken(plan)),
        resident=OTHER_STATES,
        cost=cost,
    )


def _sft_lower(plan: Plan, call: fns.Call):
    tx = sft.sft_optimizer(plan.config.sft)
    graphdef = nnx.split(plan.policy_module, nnx.Param)[0]
    return sft.make_sft_step(graphdef, tx).lower(*sft_args(plan, tx)).compile()


def _sft_state_bytes(plan: Plan) -> int:
    # Parameters and optimizer state, all on one device.
    return tree_bytes_per_chip(sft_args(plan, sft.sft_optimizer(plan.config.sft))[:2])


def _engine_lower(plan: Plan, call: fns.Call):
    return engine_compile.engine_executable(
        plan.sampler,
        plan.policy.params,
        call,
        plan.prompt_width,
        engine_pool_pages(plan, call),
        plan.sampler.stop.arrays(),
    )


def _engine_shape(plan: Plan, call: fns.Call) -> str:
    return engine_compile.engine_shape_detail(
        plan.sampler, call, plan.prompt_width, engine_pool_pages(plan, call)
    )


def _engine_pool_bytes(plan: Plan, call: fns.Call) -> int:
    e = plan.sampler
    return engine_pool_pages(plan, call) * page_bytes_per_chip(
        plan.model, e.page_size, e.layout.tensor
    )


def _engine_weights_bytes(plan: Plan) -> int:
    # The engine's decode weights: a copy in compute dtype, in the decode layout.
    return plan.sampler.decode_weight_bytes(plan.policy.params)


def _engine_cost(plan: Plan, call: fns.Call, chip: ChipSpec) -> tuple[float, float]:
    return engine_compile.engine_flops_and_roofline(
        plan.sampler,
        plan.model,
        call,
        plan.prompt_width,
        plan.response_length,
        chip,
        _engine_weights_bytes(plan),
    )


def _sampler_cost(plan: Plan, call: fns.Call, chip: ChipSpec) -> tuple[float, float]:
    prefill_rows = call.prompts if plan.sampler.shares_prefill(call.prompts) else call.rows
    # Per decode step each chip reads its weights and its whole cache slice.
    step_bytes = decode_weight_bytes(plan) + static_cache_bytes(plan, call)
    return roofline.static_sampler_call(
        plan.model,
        chip,
        plan.mesh.size,
        rows=call.rows,
        prefill_rows=prefill_rows,
        prompt=plan.prompt_width,
        response=plan.response_length,
        step_bytes=step_bytes,
    )


def _sampler_lower(plan: Plan, call: fns.Call):
    return plan.sampler.compile(plan.policy.params, call.prompts, call.samples, plan.prompt_width)


def _policy_params_bytes(plan: Plan) -> int:
    return tree_bytes_per_chip(plan.policy.params)


_SAMPLER = Kind(
    lower=_sampler_lower, state_bytes=_policy_params_bytes, resident=OTHER_STATES,
    cost=_sampler_cost, kv_cache_bytes=static_cache_bytes, sampler=True,
)  # fmt: skip
# The paged engine's prefill takes the policy's parameters in their training layout; its decode
# takes its own copy of the weights, so both train states' shards stay on the chip beside it.
_ENGINE_PREFILL = Kind(
    lower=_engine_lower, state_bytes=_policy_params_bytes, resident=OTHER_STATES,
    cost=_engine_cost, kv_cache_bytes=_engine_pool_bytes, sampler=True,
    shape_detail=_engine_shape,
)  # fmt: skip

_ENGINE_DECODE = dataclasses.replace(
    _ENGINE_PREFILL, state_bytes=_engine_weights_bytes, resident=ALL_STATES
)

KINDS: dict[str, Kind] = {
    fns.SFT_STEP: Kind(
        lower=_sft_lower,
        state_bytes=_sft_state_bytes,
        resident=NOTHING,
        # SFT runs the module as built (no train.remat).
        cost=functools.partial(_train_cost, head=True, backward=True, remat=False),
    ),
    fns.POLICY_STEP: _trained(fns.POLICY_STEP, "policy", head=True, backward=True),
    fns.CRITIC_STEP: _trained(fns.CRITIC_STEP, "critic", head=False, backward=True),
    fns.TOKEN_STATS: _trained(fns.TOKEN_STATS, "policy", head=True, backward=False),
    fns.VALUES: _trained(fns.VALUES, "critic", head=False, backward=False),
    fns.SAMPLER: _SAMPLER,
    fns.ENGINE_PREFILL: _ENGINE_PREFILL,
    fns.ENGINE_DECODE: _ENGINE_DECODE,
    # A refill (recompute preemption) runs on the decode weights between decode calls.
    fns.ENGINE_REFILL: _ENGINE_DECODE,
}
