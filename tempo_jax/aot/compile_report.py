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

FLOPs are analytic (`tempo_jax.models.roofline`; `cost_analysis()` counts a loop body once): the
FLOPs one call executes, on all chips together, remat recomputation included. `roofline_s` is
the time at the chips' peak FLOP/s, and for the sampler's decode steps at the HBM bandwidth when
that is slower (each step reads the weights and the whole KV cache). What differs between kinds
of function (how to lower each, its state, cache and cost) is one table,
`tempo_jax.aot.function_kinds.KINDS`; the abstract run is `tempo_jax.aot.plan.Plan`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import ml_collections

from tempo_jax.aot.function_kinds import KINDS
from tempo_jax.aot.plan import HBM_LIMIT_FRACTION, Plan, build_plan, compute_dtype_bytes
from tempo_jax.aot.rollout_estimates import rollout_recipe, rollout_section
from tempo_jax.parallel.topology import GIB, ChipSpec, topology_devices
from tempo_jax.tempo import functions as fns

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


def _measure(plan: Plan, call: fns.Call, chip: ChipSpec) -> FunctionReport:
    kind = KINDS[call.function]
    report = FunctionReport(call.key, call.purpose, kind.shape(plan, call))
    start = time.perf_counter()
    try:
        report.state_bytes = kind.state_bytes(plan)
        report.resident_bytes = kind.resident_bytes(plan, report.state_bytes)
        report.kv_cache_bytes = kind.kv_cache_bytes(plan, call)
        report.flops, report.roofline_s = kind.cost(plan, call, chip)
        compiled = kind.lower(plan, call)
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
    plan, source = build_plan(config, devices)
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


def _rollout(plan: Plan, planned: list[fns.Call], chip: ChipSpec) -> dict[str, Any]:
    """The report's rollout seconds per step (`aot.rollout_estimates`)."""
    rollout = next(c for c in planned if c.purpose == "rollout")
    states = plan.train_state_bytes()  # the train states' shards, all live during rollouts
    tensor = plan.mesh.shape["tensor"]
    recipe = rollout_recipe(
        plan.config,
        plan.model,
        chip,
        plan.mesh.size,
        tensor,
        compute_dtype_bytes(plan.policy.params, plan.model),  # the whole decode weights
        states,
        rollout.rows,
        HBM_LIMIT_FRACTION,
    )
    return rollout_section(plan.config, recipe, tensor)
