"""The README's `tempo-jax compile` tables from the report JSONs in this folder.

    python benchmarks/compile/table.py benchmarks/compile/*.json

Each JSON is what `tempo-jax compile --out=F.json` wrote for every function of one recipe on
one topology, named <recipe>.<topology>.json (the commands are in the README next to the
tables). Two tables:

- fit: per function kind, the largest per-chip total (peak + resident) over its row counts and
  length buckets (always the full-length bucket) against HBM, or the compiler's verdict;
- time: the sampler's rollout chunk (rows, KV cache per chip, roofline per chunk and per step)
  and the roofline of one E-step and one M-step at full length, from the analytic FLOPs
  (`roofline_s`) and the recipe's own counts (config file named in the report), plus the
  compile time of all the report's functions;
- rollout: seconds of one step's rollouts per length distribution (`full`, `aime`) for the paged
  engine's estimate, the bandwidth floor and today's static sampler (`tempo_jax.models.
  rollout_time`), from the report's `rollout` section; a report written before that section
  gets it computed here from the recipe and the report's measured per-chip state of the
  rollout sampler (same inputs as `tempo-jax compile`, weights counted from the model's shape).
"""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import re
import sys

GIB = 2**30
ROOT = pathlib.Path(__file__).resolve().parents[2]

# Fit-table columns: (header, function name, purpose or None for any).
COLUMNS = (
    ("policy step", "policy_step", None),
    ("critic step", "critic_step", None),
    ("log-probs", "token_stats", None),
    ("values", "values", None),
    ("rollout chunk", "sampler", "rollout"),
    ("eval chunk", "sampler", "eval"),
    ("greedy chunk", "sampler", "eval greedy"),
)


def _cell(f: dict) -> str:
    if f["status"] == "oom":  # the compiler's message carries what it needed
        needed = re.search(r"temporaries \(([\d.]+)G\)", f["message"])
        return f"OOM ({needed.group(1)} GiB temp)" if needed else "compiler OOM"
    if f["status"] == "error":
        return f"error: {f['message'][:60]}"
    return f"{f['total_bytes'] / GIB:.1f} ({100 * f['hbm_fraction']:.0f}%)"


def _config(report: dict):
    """The recipe's config (its file is named in the report, with any ':argument')."""
    if str(ROOT) not in sys.path:  # the config files import tempo_jax from this tree
        sys.path.insert(0, str(ROOT))
    path, _, arg = report["config"].partition(":")
    path = ROOT / path if not pathlib.Path(path).is_absolute() else pathlib.Path(path)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*([arg] if arg else []))


def _largest(functions: list[dict], name: str, purpose: str | None) -> dict | None:
    chosen = [
        f
        for f in functions
        if f["name"].split("/")[0] == name and (purpose is None or f["purpose"] == purpose)
    ]
    if not chosen:
        return None
    failed = [f for f in chosen if f["status"] != "ok"]
    return failed[0] if failed else max(chosen, key=lambda f: f["total_bytes"])


def _full(functions: list[dict], name: str, purpose: str, length: int) -> dict:
    return next(
        f
        for f in functions
        if f["name"].split("/")[0] == name
        and f["purpose"] == purpose
        and f["name"].endswith(f"x{length}")
    )


def _label(report: dict) -> tuple[str, str]:
    recipe = pathlib.Path(report["config"]).name.removesuffix(".py").replace(".py:", ":")
    chip = f"{report['topology']} ({report['chips']} x {report['chip']['hbm_bytes'] / GIB:.0f} GiB)"
    mesh = "x".join(str(v) for v in report["mesh"].values())
    attention = report.get("attention", "–")  # reports before the field: see the README
    return recipe, f"{chip}, mesh {mesh}, {attention}"


def fit_rows(paths: list[pathlib.Path]) -> list[str]:
    header = " | ".join(c[0] for c in COLUMNS)
    out = [
        f"| recipe | topology, mesh (data x fsdp x tensor), attention | {header} | largest |",
        "|" + "---|" * (len(COLUMNS) + 3),
    ]
    for path in paths:
        report = json.loads(path.read_text())
        functions = report["functions"]
        cells = []
        for _, name, purpose in COLUMNS:
            f = _largest(functions, name, purpose)
            cells.append("–" if f is None else _cell(f))
        largest = max(functions, key=lambda f: f["hbm_fraction"])
        recipe, where = _label(report)
        out.append(
            f"| {recipe} | {where} | {' | '.join(cells)} "
            f"| {100 * largest['hbm_fraction']:.0f}% {largest['name']} |"
        )
    return out


def time_rows(paths: list[pathlib.Path]) -> list[str]:
    out = [
        "| recipe | topology | rollout chunk | KV cache / chip | rollout s / chunk | chunks "
        "| rollout s / step | E-step s | M-step s | compile s (functions) |",
        "|" + "---|" * 10,
    ]
    for path in paths:
        report = json.loads(path.read_text())
        functions = report["functions"]
        config = _config(report)
        length = config.rollout.max_new_tokens
        rollout = next(f for f in functions if f["purpose"] == "rollout")
        chunk_rows = int(rollout["name"].split("/")[1].split("x")[0]) * config.rollout.n
        prompts = config.data.prompts_per_step
        chunks = math.ceil(prompts * config.rollout.n / chunk_rows)
        critic = _full(functions, "critic_step", "E-step", length)
        targets = _full(functions, "values", "critic targets", length)
        e_step = config.tempo.critic_updates * critic["roofline_s"] + targets["roofline_s"]
        updates = prompts / (config.data.prompts_per_update or prompts)
        m_step = (
            updates * _full(functions, "policy_step", "M-step", length)["roofline_s"]
            + _full(functions, "token_stats", "old log-probs", length)["roofline_s"]
            + targets["roofline_s"]  # the M-step's value baseline: the same call
        )
        compile_s = sum(f["compile_s"] for f in functions)
        recipe, _ = _label(report)
        out.append(
            f"| {recipe} | {report['topology']} | {chunk_rows} rows "
            f"| {rollout['kv_cache_bytes'] / GIB:.1f} GiB | {rollout['roofline_s']:.0f} | {chunks} "
            f"| {chunks * rollout['roofline_s']:.0f} | {e_step:.0f} | {m_step:.0f} "
            f"| {compile_s:.0f} ({len(functions)}) |"
        )
    return out


def _rollout_section(report: dict) -> dict:
    """The report's rollout section, or the same computed from its recipe and measured state."""
    if report.get("rollout"):
        return report["rollout"]
    from tempo_jax.aot.rollout_estimates import rollout_recipe, rollout_section
    from tempo_jax.models import rollout_time
    from tempo_jax.parallel.topology import ChipSpec
    from tempo_jax.tempo.build import planned_model_config

    config = _config(report)
    model = planned_model_config(config, "policy", "tpu")[0]
    params = model.num_layers * rollout_time.model_flops.layer_matmul_params(model)
    params += model.vocab_size * model.hidden_size * (1 if model.tie_word_embeddings else 2)
    sampler = next(f for f in report["functions"] if f["purpose"] == "rollout")
    rows = int(sampler["name"].split("/")[1].split("x")[0]) * config.rollout.n
    recipe = rollout_recipe(
        config,
        model,
        ChipSpec(**report["chip"]),
        report["chips"],
        report["mesh"]["tensor"],
        params * rollout_time.np.dtype(model.compute_dtype).itemsize,
        sampler["state_bytes"] + sampler["resident_bytes"],
        rows,
        report["hbm_limit_fraction"],
    )
    return rollout_section(config, recipe, report["mesh"]["tensor"])


def rollout_rows(paths: list[pathlib.Path]) -> list[str]:
    out = [
        "| recipe | topology | decode weights | distribution | engine s / step | floor s / step "
        "| engine / floor | static sampler s / step | static / engine |",
        "|" + "---|" * 9,
    ]
    for path in paths:
        report = json.loads(path.read_text())
        section = _rollout_section(report)
        recipe, _ = _label(report)
        layout = f"{section['decode_layout']} (tensor {section['decode_tensor']})"
        for name, seconds in section["seconds_per_step"].items():
            floor = section["floor_seconds_per_step"][name]
            static = section["static_seconds_per_step"][name]
            out.append(
                f"| {recipe} | {report['topology']} | {layout} | {name} | {seconds:.0f} "
                f"| {floor:.0f} | {seconds / floor:.2f} | {static:.0f} | {static / seconds:.1f} |"
            )
    return out


def engine_rows(paths: list[pathlib.Path]) -> list[str]:
    """Per paged-engine function of `--only=rollout` reports: its per-chip memory and verdict."""
    out = [
        "| recipe | topology | function | shape | args | temp | total / HBM | status |",
        "|" + "---|" * 8,
    ]
    for path in paths:
        report = json.loads(path.read_text())
        recipe, _ = _label(report)
        for f in report["functions"]:
            gib = lambda b: f"{b / GIB:.1f}"  # noqa: E731
            out.append(
                f"| {recipe} | {report['topology']} | {f['name']} | {f['shape']} "
                f"| {gib(f['argument_bytes'])} | {gib(f['temp_bytes'])} "
                f"| {_cell(f) if f['status'] == 'oom' else _cell({**f, 'status': 'ok'})} "
                f"| {f['status']} |"
            )
    return out


def main(paths: list[str]) -> None:
    files = [pathlib.Path(p) for p in paths]
    # `--only=rollout` reports (<recipe>.rollout.<topology>.json) hold the engine's functions only.
    rollout_only = [f for f in files if ".rollout." in f.name]
    full = [f for f in files if f not in rollout_only]
    if full:
        print("\n".join(fit_rows(full)))
        print()
        print("\n".join(time_rows(full)))
        print()
    # One rollout row set per recipe and topology: a rollout report's own section when there is one.
    covered = {f.name.replace(".rollout.", ".") for f in rollout_only}
    print("\n".join(rollout_rows([f for f in files if f.name not in covered])))
    if rollout_only:
        print()
        print("\n".join(engine_rows(rollout_only)))


if __name__ == "__main__":
    main(sys.argv[1:])
