"""`tempo-jax compile`: every function a run executes, compiled ahead of time for a TPU topology
(or the local devices), with per-chip memory against HBM. No weights, data or tokenizer are read.

    report = compile_report(config, "v5p:2x2x4")        # one entry per planned call
    print(report.table()); report.failures()             # names of functions that do not fit

For each call of `functions.planned_calls(config)` the report lowers the very `CompiledStep` (or
`Sampler.compile`) the run uses, with abstract arguments carrying the run's shardings, and reads
`compiled.memory_analysis()` (per chip): argument, output, aliased (donated), temporary and code
bytes, and `peak = argument + output - alias + temporary + code`. Around a function the run also
holds what it does not pass in (the critic's TrainState during a policy step, the policy's
optimizer state during sampling): `resident`, from shapes and shardings. `total = peak +
resident` is compared with the chip's HBM; a function fits when it is at most
`HBM_LIMIT_FRACTION` of it and the compiler did not report RESOURCE_EXHAUSTED. A constraint that
would replicate an array instead of splitting it fails before compiling (`error`).

FLOPs are analytic (`tempo_jax.models.flops`; `cost_analysis()` counts a loop body once): the
FLOPs one call executes, on all chips together, remat recomputation included. `roofline_s` is
the time at the chips' peak FLOP/s, and for the sampler's decode steps at the HBM bandwidth when
that is slower (each step reads the weights and the whole KV cache).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from tempo_jax import models, parallel, train
from tempo_jax.models import flops as model_flops
from tempo_jax.parallel.topology import GIB, ChipSpec, topology_devices
from tempo_jax.sampling.engine_layout import page_bytes_per_chip
from tempo_jax.tempo import engine_compile, sft
from tempo_jax.tempo import functions as fns
from tempo_jax.tempo.build import make_sampler, planned_model_config
from tempo_jax.tempo.methods import get_method
from tempo_jax.tempo.rollout_estimates import rollout_recipe, rollout_section

HBM_LIMIT_FRACTION = 0.9
OK, OVER, OOM, ERROR = "ok", "over", "oom", "error"


@dataclasses.dataclass
class FunctionReport:
    """One compiled function (bytes are per chip).

    Attributes:
      name: the call's key (e.g. "policy_step/512", "sampler/256x8").
      purpose: what the run uses it for.
      shape: rows x tokens, in words.
      status: ok | over (total above the HBM limit) | oom (compiler RESOURCE_EXHAUSTED) | error.
      message: why it failed (empty when ok).
      argument_bytes, output_bytes, alias_bytes, temp_bytes, code_bytes: memory_analysis().
      peak_bytes: argument + output - alias + temp + code.
      resident_bytes: the run's other live state while this function runs.
      total_bytes: peak + resident.
      hbm_fraction: total / HBM.
      state_bytes: the function's own parameters (+ optimizer state for a step).
      kv_cache_bytes: the sampler's KV cache (0 elsewhere).
      flops: analytic FLOPs of one call on all chips.
      roofline_s: lower bound on one call's time at the chips' peak.
      compile_s: lowering + compiling wall time.
    """

    name: str
    purpose: str
    shape: str
    status: str = OK
    message: str = ""
    argument_bytes: int = 0
    output_bytes: int = 0
    alias_bytes: int = 0
    temp_bytes: int = 0
    code_bytes: int = 0
    peak_bytes: int = 0
    resident_bytes: int = 0
    total_bytes: int = 0
    hbm_fraction: float = 0.0
    state_bytes: int = 0
    kv_cache_bytes: int = 0
    flops: float = 0.0
    roofline_s: float = 0.0
    compile_s: float = 0.0


@dataclasses.dataclass
class Report:
    """Everything `tempo-jax compile` prints and writes."""

    config: str
    topology: str
    chip: dict[str, Any]
    chips: int
    mesh: dict[str, int]
    model: str
    attention: str
    hbm_limit_fraction: float
    functions: list[FunctionReport]
    rollout: dict[str, Any] = dataclasses.field(default_factory=dict)

    def failures(self) -> list[FunctionReport]:
        return [f for f in self.functions if f.status != OK]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    def table(self) -> str:
        """A markdown table (GiB per chip)."""
        hbm = self.chip["hbm_bytes"] / GIB
        lines = [
            f"{self.config} on {self.topology}: {self.chips} x {self.chip['name']} "
            f"({hbm:.0f} GiB HBM), mesh {self.mesh}, model {self.model}, "
            f"attention {self.attention}",
            "",
            "| function | purpose | shape | status | args | temp | peak | resident | total / HBM "
            "| params+opt | KV cache | TFLOP | roofline s | compile s |",
            "|" + "---|" * 14,
        ]
        for f in self.functions:
            gib = lambda b: f"{b / GIB:.2f}"  # noqa: E731
            lines.append(
                f"| {f.name} | {f.purpose} | {f.shape} | {f.status} | {gib(f.argument_bytes)} "
                f"| {gib(f.temp_bytes)} | {gib(f.peak_bytes)} | {gib(f.resident_bytes)} "
                f"| {gib(f.total_bytes)} ({100 * f.hbm_fraction:.0f}%) | {gib(f.state_bytes)} "
                f"| {gib(f.kv_cache_bytes)} | {f.flops / 1e12:.1f} | {f.roofline_s:.3g} "
                f"| {f.compile_s:.0f} |"
            )
        for f in self.failures():
            lines.append(f"\n{f.name}: {f.status}: {f.message}")
        if self.rollout.get("error"):
            lines.append(f"\nrollout: {self.rollout['error']}")
        elif self.rollout:
            r = self.rollout
            lines.append(
                f"\nrollout seconds per step, decode weights {r['decode_layout']} "
                f"(tensor {r['decode_tensor']}; setting {r['decode_layout_setting']}):"
            )
            for d, seconds in r["seconds_per_step"].items():
                floor, static = r["floor_seconds_per_step"][d], r["static_seconds_per_step"][d]
                lines.append(
                    f"  {d}: engine {seconds:.0f} s, floor {floor:.0f} s ({seconds / floor:.2f}x), "
                    f"static sampler {static:.0f} s"
                )
        return "\n".join(lines)


def tree_bytes_per_chip(tree: Any) -> int:
    """Bytes one chip holds of a tree of ShapeDtypeStructs / arrays carrying NamedShardings."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total


@dataclasses.dataclass
class _Plan:
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
    engine_note: str = ""  # why the paged engine cannot run on this mesh ("" when it can)


def _abstract_state(model_config, cls, settings, optimizer, mesh, rules):
    module = nnx.eval_shape(lambda: cls(model_config, rngs=nnx.Rngs(0)))
    graphdef, params = train.split_for_training(module, settings)
    return module, graphdef, train.abstract_train_state(params, optimizer, mesh, rules)


def _plan(config: ml_collections.ConfigDict, devices: Sequence[jax.Device]) -> tuple[_Plan, str]:
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
    engine_note = ""
    try:
        sampler = make_sampler(config, policy_module, mesh, rules, eos_ids, pad_id)
    except ValueError as e:  # the paged engine refuses a mesh spanning several processes
        if config.rollout.engine != "paged":
            raise
        # Its functions still compile for one chip, which is what the engine would run on.
        engine_note = f"a run on this topology fails: {e}"
        sampler = make_sampler(config, policy_module, None, rules, eos_ids, pad_id)
    plan = _Plan(
        config,
        policy_config,
        policy_module,
        mesh,
        rules,
        settings,
        functions,
        sampler,
        policy,
        critic,
        engine_note=engine_note,
    )
    return plan, source


def _sft_args(plan: _Plan, tx) -> tuple:
    """Abstract SFT arguments on the mesh's first device: SFT runs unsharded (see tempo.sft)."""
    one = jax.sharding.SingleDeviceSharding(plan.mesh.devices.flat[0])

    def on_one(tree):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), tree)

    params = on_one(nnx.state(plan.policy_module, nnx.Param))
    rows, cfg = plan.config.sft.batch_size, plan.config
    width = cfg.data.max_prompt_length + cfg.rollout.max_new_tokens
    seq = jax.ShapeDtypeStruct((rows, width), np.int32, sharding=one)
    response = jax.ShapeDtypeStruct((rows, cfg.rollout.max_new_tokens), np.int32, sharding=one)
    return params, on_one(jax.eval_shape(tx.init, params)), seq, seq, response


def _lower(plan: _Plan, call: fns.Call):
    """The compiled executable of `call` (lowering and compiling happen here)."""
    f = plan.functions
    if call.function == fns.POLICY_STEP:
        return f.policy_step(plan.policy, call.rows, call.length).lower().compile()
    if call.function == fns.CRITIC_STEP:
        return f.critic_step(plan.critic, call.rows, call.length).lower().compile()
    if call.function == fns.TOKEN_STATS:
        return f.token_stats(plan.policy.params, call.rows, call.length).lower().compile()
    if call.function == fns.VALUES:
        return f.values(plan.critic.params, call.rows, call.length).lower().compile()
    if call.function == fns.SAMPLER:
        width = plan.config.data.max_prompt_length
        return plan.sampler.compile(plan.policy.params, call.prompts, call.samples, width)
    if call.function in (fns.ENGINE_PREFILL, fns.ENGINE_DECODE):
        return engine_compile.engine_executable(
            plan.sampler,
            plan.policy.params,
            call,
            plan.config.data.max_prompt_length,
            _engine_pool_pages(plan, call),
            plan.sampler.stop.arrays(),
        )
    if call.function == fns.SFT_STEP:
        tx = sft.sft_optimizer(plan.config.sft)
        graphdef = nnx.split(plan.policy_module, nnx.Param)[0]
        return sft.make_sft_step(graphdef, tx).lower(*_sft_args(plan, tx)).compile()
    raise ValueError(f"unknown function {call.function!r}")


def _own_and_resident(plan: _Plan, call: fns.Call) -> tuple[int, int]:
    """(bytes of the state the call takes, bytes of the run's other live state), per chip."""
    policy = tree_bytes_per_chip(plan.policy)
    critic = tree_bytes_per_chip(plan.critic) if plan.critic is not None else 0
    if call.function == fns.SFT_STEP:  # before the train states exist; one device holds all
        tx = sft.sft_optimizer(plan.config.sft)
        params, opt_state = _sft_args(plan, tx)[:2]
        return tree_bytes_per_chip((params, opt_state)), 0
    own = {
        fns.POLICY_STEP: lambda: policy,
        fns.CRITIC_STEP: lambda: critic,
        fns.TOKEN_STATS: lambda: tree_bytes_per_chip(plan.policy.params),
        fns.SAMPLER: lambda: tree_bytes_per_chip(plan.policy.params),
        fns.ENGINE_PREFILL: lambda: tree_bytes_per_chip(plan.policy.params),
        # The decode weights (compute dtype, decode layout): a copy beside the train states.
        fns.ENGINE_DECODE: lambda: plan.sampler.decode_weight_bytes(plan.policy.params),
        fns.VALUES: lambda: tree_bytes_per_chip(plan.critic.params),
    }[call.function]()
    if call.function == fns.ENGINE_DECODE:
        return own, policy + critic  # the train states' shards stay on the chip too
    return own, policy + critic - own


def _decode_weight_bytes(plan: _Plan) -> int:
    """Bytes of the policy's weights per chip in the sampler's layout and compute dtype."""
    params = plan.policy.params
    shardings = parallel.state_shardings(params, plan.mesh, plan.sampler.inference_rules)
    itemsize = np.dtype(plan.model.compute_dtype).itemsize
    return sum(
        math.prod(s.shard_shape(x.shape)) * itemsize
        for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(shardings), strict=True)
    )


def _compute_dtype_bytes(params: Any, model: models.ModelConfig) -> int:
    """Bytes of all of `params` in the model's compute dtype (the decode weights, whole)."""
    itemsize = np.dtype(model.compute_dtype).itemsize
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params)) * itemsize


def _engine_pool_pages(plan: _Plan, call: fns.Call) -> int:
    """The engine's full-attention pool per row shard: `rollout.paged.num_pages`, or (0) what
    the chip's HBM limit leaves after the train states (`engine_compile.engine_pool_pages`)."""
    policy = tree_bytes_per_chip(plan.policy)
    critic = tree_bytes_per_chip(plan.critic) if plan.critic is not None else 0
    free = int(HBM_LIMIT_FRACTION * plan.chip.hbm_bytes) - policy - critic
    width = plan.config.data.max_prompt_length
    return engine_compile.engine_pool_pages(plan.sampler, plan.policy.params, call, width, free)


def _kv_cache_bytes(plan: _Plan, call: fns.Call) -> int:
    if call.function in (fns.ENGINE_PREFILL, fns.ENGINE_DECODE):
        e = plan.sampler
        page = page_bytes_per_chip(plan.model, e.page_size, e.layout.tensor)
        return _engine_pool_pages(plan, call) * page
    if call.function != fns.SAMPLER:
        return 0
    c = plan.model
    slots = plan.config.data.max_prompt_length + plan.config.rollout.max_new_tokens - 1
    shape = (c.num_layers, call.rows, slots, c.num_kv_heads, c.head_dim)
    context = parallel.ActivationSharding.create(plan.mesh, plan.sampler.inference_rules)
    sharding = context.sharding(shape, models.KV_CACHE_LOGICAL_AXES)
    return 2 * math.prod(sharding.shard_shape(shape)) * np.dtype(c.compute_dtype).itemsize


def _flops_and_roofline(plan: _Plan, call: fns.Call, chip: ChipSpec) -> tuple[float, float]:
    c, cfg = plan.model, plan.config
    chips = plan.mesh.size
    prompt, response = cfg.data.max_prompt_length, cfg.rollout.max_new_tokens
    remat = 1 if plan.settings.remat else 0
    if call.function in (fns.ENGINE_PREFILL, fns.ENGINE_DECODE):
        weights = plan.sampler.decode_weight_bytes(plan.policy.params)
        return engine_compile.engine_flops_and_roofline(
            plan.sampler, c, call, prompt, response, chip, weights
        )
    if call.function == fns.SAMPLER:
        prefill_rows = call.prompts if plan.sampler.shares_prefill(call.prompts) else call.rows
        flops = model_flops.forward_flops(c, prefill_rows, prompt, head_positions=1)
        seconds = flops / (chips * chip.peak_flops)
        # Per decode step each chip reads its weights and its whole cache slice.
        step_bytes = _decode_weight_bytes(plan) + _kv_cache_bytes(plan, call)
        for t in range(1, response):
            step = model_flops.forward_flops(
                c, call.rows, 1, head_positions=1, context=prompt + t - 1
            )
            flops += step
            seconds += max(step / (chips * chip.peak_flops), step_bytes / chip.hbm_bandwidth)
        return float(flops), seconds
    # Training functions run on their length bucket (SFT on the full length).
    response = call.length or response
    width = prompt + response
    head = 0 if call.function in (fns.CRITIC_STEP, fns.VALUES) else response
    if call.function == fns.SFT_STEP:
        remat = 0  # SFT runs the module as built (no train.remat)
    forward = model_flops.forward_flops(c, call.rows, width, head_positions=head)
    if call.function in (fns.TOKEN_STATS, fns.VALUES):
        flops = forward
    else:
        trunk = model_flops.forward_flops(c, call.rows, width, head_positions=0)
        # Backward = 2 x forward; remat replays the trunk; the chunked log-prob VJP replays
        # the head's logits.
        flops = trunk * (3 + remat) + (forward - trunk) * 4
    return float(flops), flops / (chips * chip.peak_flops)


def _measure(plan: _Plan, call: fns.Call, chip: ChipSpec) -> FunctionReport:
    cfg = plan.config
    if call.function in (fns.ENGINE_PREFILL, fns.ENGINE_DECODE):
        shape = engine_compile.engine_shape(
            plan.sampler,
            call,
            cfg.data.max_prompt_length,
            cfg.rollout.max_new_tokens,
            _engine_pool_pages(plan, call),
        )
    elif call.function in fns.SAMPLERS:
        shape = (
            f"{call.prompts} prompts x {call.samples} = {call.rows} rows, "
            f"{cfg.data.max_prompt_length} + {cfg.rollout.max_new_tokens} tokens"
        )
    else:
        response = call.length or cfg.rollout.max_new_tokens
        shape = f"{call.rows} rows x {cfg.data.max_prompt_length} + {response} tokens"
    report = FunctionReport(call.key, call.purpose, shape)
    start = time.perf_counter()
    try:
        report.state_bytes, report.resident_bytes = _own_and_resident(plan, call)
        report.kv_cache_bytes = _kv_cache_bytes(plan, call)
        report.flops, report.roofline_s = _flops_and_roofline(plan, call, chip)
        compiled = _lower(plan, call)
    except Exception as e:  # the compiler's OOM is an XlaRuntimeError; sharding checks raise
        report.compile_s = time.perf_counter() - start
        text = str(e)
        report.status = OOM if "RESOURCE_EXHAUSTED" in text else ERROR
        report.message = text.strip().splitlines()[0][:500] if text.strip() else type(e).__name__
        return report
    report.compile_s = time.perf_counter() - start
    m = compiled.memory_analysis()
    report.argument_bytes = int(m.argument_size_in_bytes)
    report.output_bytes = int(m.output_size_in_bytes)
    report.alias_bytes = int(m.alias_size_in_bytes)
    report.temp_bytes = int(m.temp_size_in_bytes)
    report.code_bytes = int(m.generated_code_size_in_bytes)
    report.peak_bytes = (
        report.argument_bytes
        + report.output_bytes
        - report.alias_bytes
        + report.temp_bytes
        + report.code_bytes
    )
    report.total_bytes = report.peak_bytes + report.resident_bytes
    report.hbm_fraction = report.total_bytes / chip.hbm_bytes
    if report.hbm_fraction > HBM_LIMIT_FRACTION:
        report.status = OVER
        report.message = (
            f"needs {report.total_bytes / GIB:.2f} GiB per chip (peak "
            f"{report.peak_bytes / GIB:.2f} + resident {report.resident_bytes / GIB:.2f}), over "
            f"{HBM_LIMIT_FRACTION:.0%} of {chip.hbm_bytes / GIB:.0f} GiB"
        )
    return report


def compile_report(
    config: ml_collections.ConfigDict,
    topology: str,
    *,
    config_name: str = "",
    hbm_gib: float | None = None,
    only: Sequence[str] = (),
    log=None,
) -> Report:
    """Compiles every planned call of `config` for `topology` and measures it.

    Args:
      config: a validated run config.
      topology: "cpu" or a TPU topology name ("v5p:2x2x4").
      config_name: for the report's title.
      hbm_gib: the chip's memory instead of its spec (GiB).
      only: function names or call keys to compile (default: all).
      log: called with each progress line (default: print to stderr).

    Raises:
      ValueError: for an unknown topology, a mesh the devices do not fill, or a parameter the
        mesh does not divide (before anything is compiled).
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    devices, chip = topology_devices(topology)
    if hbm_gib is not None:
        chip = dataclasses.replace(chip, hbm_bytes=int(hbm_gib * GIB))
    plan, source = _plan(config, devices)
    plan.chip = chip
    planned = fns.planned_calls(config, plan.sampler.row_shards)
    calls = [c for c in planned if not only or _selected(c, only)]
    measured = []
    for call in calls:
        log(f"compiling {call.key} ({call.purpose}) for {topology} ...")
        result = _measure(plan, call, chip)
        log(
            f"  {result.status}: total {result.total_bytes / GIB:.2f} GiB / chip "
            f"({100 * result.hbm_fraction:.0f}% HBM), {result.compile_s:.0f} s"
        )
        measured.append(result)
    return Report(
        config=config_name,
        topology=topology,
        chip=dataclasses.asdict(chip),
        chips=len(devices),
        mesh=dict(plan.mesh.shape),
        model=source,
        attention=plan.model.attention,
        hbm_limit_fraction=HBM_LIMIT_FRACTION,
        functions=measured,
        rollout=_rollout(plan, planned, chip),
    )


def _selected(call: fns.Call, only: Sequence[str]) -> bool:
    """`--only`: a function name, a call key, or `rollout` for the functions rollouts run."""
    return (
        call.function in only
        or call.key in only
        or ("rollout" in only and call.purpose == "rollout")
    )


def _rollout(plan: _Plan, planned: list[fns.Call], chip: ChipSpec) -> dict[str, Any]:
    """The report's rollout seconds per step (`tempo.rollout_estimates`)."""
    rollout = next(c for c in planned if c.purpose == "rollout")
    # The train states' shards, all live during rollouts.
    states = tree_bytes_per_chip(plan.policy)
    states += tree_bytes_per_chip(plan.critic) if plan.critic is not None else 0
    tensor = plan.mesh.shape["tensor"]
    recipe = rollout_recipe(
        plan.config,
        plan.model,
        chip,
        plan.mesh.size,
        tensor,
        _compute_dtype_bytes(plan.policy.params, plan.model),  # the whole decode weights
        states,
        rollout.rows,
        HBM_LIMIT_FRACTION,
    )
    section = rollout_section(plan.config, recipe, tensor)
    if plan.engine_note:
        section["engine_note"] = plan.engine_note
    return section
