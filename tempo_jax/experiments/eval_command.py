"""`tempo-jax eval`: a run's checkpoint, or any Hugging Face checkpoint, scored on the config's
eval splits by the trainer's own evaluation (`tempo_jax.tempo.evaluation`).

    tempo-jax eval --config=C --workdir=DIR [--step=N] [--split=a,b] [--out=OUT]
    tempo-jax eval --config=C --hf_path=HF_DIR [--step=N] [--split=a,b] --out=OUT

A workdir's checkpoint N (default: the newest good one) is restored through the trainer's
restore path (`loop_checkpoints.abstract_items` + `Checkpointer.restore`), the critic with it
when the method has one. HF_DIR is a checkpoint `load_hf` reads (config.json + safetensors), or
a `tempo-jax export` directory (HF_DIR/policy, and HF_DIR/critic whose values are scored too).

The samples use the trainer's evaluation seed of step N (`phases.step_seed(seed, N, "eval",
0)`; N = 0 for an HF checkpoint unless --step is given), so a workdir's checkpoint N scores
exactly what the trainer logged as `eval/<split>/...` at step N under the same config and mesh.

Output (default OUT = DIR/eval/step_<N>), written by process 0 only, each file atomically:

    OUT/<label>.jsonl          one line per problem: question, ground truths, responses,
                               extracted answers, grades (and critic values)
    OUT/<label>.metrics.json   the split's metrics and what produced them (its "key")
    OUT/report.json            every split's metrics, the checkpoint, seed and sampling settings

A rerun (e.g. after a preemption) skips the splits whose metrics file holds the same key, so a
killed evaluation redoes only its unfinished splits and never leaves a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from typing import Any

import ml_collections
import numpy as np

from tempo_jax import parallel, train
from tempo_jax.tempo import phases
from tempo_jax.tempo.build import build_run, init_critic
from tempo_jax.tempo.evaluation import evaluate_split
from tempo_jax.tempo.loop_checkpoints import abstract_items, changed_config_fields
from tempo_jax.train import storage
from tempo_jax.train.checkpointing import Checkpointer
from tempo_jax.train.metric_writers import ProgressBar

log = logging.getLogger(__name__)

REPORT = "report.json"


class EvalError(ValueError):
    """An evaluation that cannot run as asked (no such split, checkpoint or directory)."""


def select_splits(config: ml_collections.ConfigDict, wanted: tuple[str, ...]) -> dict[str, str]:
    """{label: dataset split} of `config.eval.splits`, limited to `wanted` (labels or dataset
    split names; empty = all)."""
    splits = dict(config.eval.splits.to_dict())
    if not wanted:
        return splits
    out = {}
    for name in wanted:
        hits = {k: v for k, v in splits.items() if name in (k, v)}
        if not hits:
            raise EvalError(
                f"--split={name}: not an eval split of this config; it has "
                + ", ".join(f"{k} (dataset split {v!r})" for k, v in splits.items())
            )
        out.update(hits)
    return out


def _hf_dirs(hf_path: str) -> tuple[str, str]:
    """(policy dir, critic dir or '') of an HF checkpoint or a `tempo-jax export` directory."""
    if os.path.isfile(os.path.join(hf_path, "config.json")):
        return hf_path, ""
    policy = os.path.join(hf_path, "policy")
    if not os.path.isfile(os.path.join(policy, "config.json")):
        raise EvalError(
            f"--hf_path={hf_path}: neither {hf_path}/config.json nor {policy}/config.json exists"
        )
    critic = os.path.join(hf_path, "critic")
    return policy, critic if os.path.isfile(os.path.join(critic, "config.json")) else ""


def _hf_config(config: ml_collections.ConfigDict, hf_path: str) -> ml_collections.ConfigDict:
    """`config` reading its networks from `hf_path` (and its HF tokenizer, when the config's
    tokenizer was the model's own directory)."""
    policy_dir, critic_dir = _hf_dirs(hf_path)
    config = ml_collections.ConfigDict(config.to_dict())
    if config.tokenizer.kind == "hf" and config.tokenizer.path in ("", config.model.hf_path):
        config.tokenizer.path = policy_dir
    config.model.hf_path = policy_dir
    config.model.critic_hf_path = critic_dir
    return config


def _restore_workdir(run, policy_module, workdir: str, step: int | None):
    """(step, policy params, critic params or None, saved config) of checkpoint `step` (None:
    the newest good one)."""
    directory = os.path.join(workdir, "checkpoints")
    policy_params = train.split_for_training(policy_module, run.settings.train)[1]
    critic_params = _critic_params(run, policy_module) if run.method.uses_critic else None
    abstract = abstract_items(run, policy_params, critic_params)
    with Checkpointer(directory, read_only=True) as ckpt:
        if step is None:
            step = ckpt.latest_good_step()
            if step is None:
                raise EvalError(f"no good checkpoint in {directory}")
        try:
            items, metadata = ckpt.restore(step, abstract)
        except FileNotFoundError as e:
            raise EvalError(str(e)) from None
    critic_state = items.get("critic")
    return (
        int(metadata["step"]),
        items["policy"].params,
        None if critic_state is None else critic_state.params,
        metadata.get("config", {}),
    )


def _load_hf(run, policy_module):
    """(policy params, critic params or None) of the HF checkpoints the config points at."""
    policy_params = train.split_for_training(policy_module, run.settings.train)[1]
    if not run.config.model.critic_hf_path:
        return policy_params, None
    return policy_params, _critic_params(run, policy_module)


def _critic_params(run, policy_module):
    """The critic's trainable parameters (`init_critic`); its graphdef goes to the run."""
    critic = init_critic(run.config, policy_module, run.mesh, run.rules)
    graphdef, critic_params = train.split_for_training(critic, run.settings.train)
    run.functions.set_critic(graphdef)
    return critic_params


def _trainer_logged(workdir: str, step: int) -> dict[str, float]:
    """The `eval/*` metrics the trainer wrote for `step` in workdir/metrics.jsonl ({} if none)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not storage.exists(path):
        return {}
    out = {}
    for line in storage.read_text(path).splitlines():
        record = json.loads(line)
        if record.get("step") == step and any(k.startswith("eval/") for k in record):
            out = {
                k: v
                for k, v in record.items()
                if k.startswith("eval/") and isinstance(v, (int, float))
            }
    return out


def _json_number(value: Any) -> Any:
    """NaN / inf as None: strict JSON readers reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def standard_errors(records: list[dict]) -> dict[str, float]:
    """Standard errors of mean@n from one split's per-problem records.

    `binomial_standard_error`: sqrt(p (1 - p) / (P n)), every sample an independent Bernoulli
    draw; `mean_standard_error`: the sd over problems of their per-problem means / sqrt(P),
    which also counts the problems' differing difficulty (samples of one problem are
    correlated), so it is the one to compare two checkpoints on the same problems with.
    """
    correct = [np.asarray(r["correct"], np.float64) for r in records]
    samples = sum(len(c) for c in correct)
    p = float(np.concatenate(correct).mean()) if samples else math.nan
    means = np.array([c.mean() for c in correct], np.float64)
    return {
        "binomial_standard_error": math.sqrt(p * (1.0 - p) / samples) if samples else math.nan,
        "mean_standard_error": (
            float(means.std(ddof=1) / math.sqrt(len(means))) if len(means) > 1 else math.nan
        ),
    }


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    *,
    workdir: str = "",
    hf_path: str = "",
    step: int | None = None,
    splits: tuple[str, ...] = (),
    out: str = "",
    progress: bool = True,
    baseline: str = "",
) -> dict[str, Any]:
    """Scores one checkpoint on the config's eval splits; returns the report (module docstring).

    Args:
      config: the run's config (its eval settings: `eval.n`, `eval.temperature`, `eval.ks`,
        `eval.num_problems`, `eval.splits`, `seed`).
      workdir: a `tempo-jax train` workdir (exclusive with `hf_path`).
      hf_path: an HF checkpoint or `tempo-jax export` directory.
      step: the workdir's checkpoint (None: newest good), or the seed step of an HF checkpoint
        (None: 0).
      splits: eval split labels or dataset split names (empty: all).
      out: the output directory (default workdir/eval/step_<N>; needed with `hf_path`).
      progress: show the progress bar.
      baseline: another evaluation's output directory: the report adds, per split both scored,
        the paired difference of mean@n against it (`paired_difference`).

    Raises:
      EvalError: bad arguments, no such checkpoint or split.
    """
    if bool(workdir) == bool(hf_path):
        raise EvalError("give exactly one of --workdir and --hf_path")
    if hf_path and not out:
        raise EvalError("--hf_path needs --out (where the report goes)")
    if baseline and not storage.path(baseline).is_dir():
        raise EvalError(f"--baseline={baseline}: no such directory")
    chosen = select_splits(config, splits)
    if hf_path:
        config = _hf_config(config, os.path.abspath(hf_path))
        # The dataset is built next to the report (the trainer builds it in its workdir).
        run, policy_module = build_run(config, storage.absolute(out))
    else:
        workdir = storage.absolute(workdir)
        if not storage.path(os.path.join(workdir, "checkpoints")).is_dir():  # before any build
            raise EvalError(f"{workdir} has no checkpoints/ directory (not a trainer workdir?)")
        run, policy_module = build_run(config, workdir)
    try:
        if hf_path:
            policy_params, critic_params = _load_hf(run, policy_module)
            step, source = step or 0, {"hf_path": config.model.hf_path}
            if config.model.critic_hf_path:
                source["critic_hf_path"] = config.model.critic_hf_path
        else:
            step, policy_params, critic_params, saved = _restore_workdir(
                run, policy_module, workdir, step
            )
            changed = changed_config_fields(saved, config)
            if changed:
                log.warning("evaluating step %d with a config that differs: %s", step, changed)
            source = {"workdir": workdir, "step": step}
            out = out or os.path.join(workdir, "eval", f"step_{step}")
        report = _evaluate_and_write(
            run, chosen, policy_params, critic_params, step, source, out, workdir, progress
        )
    finally:
        run.pool.close()
    if baseline and parallel.is_main_process():  # the one process that wrote the records
        report["paired"] = compare_reports(report["out"], baseline, chosen)
        text = json.dumps({k: v for k, v in report.items() if k != "out"}, indent=1)
        storage.write_atomic(os.path.join(report["out"], REPORT), text + "\n")
    return report


def paired_difference(records: list[dict], baseline: list[dict]) -> dict[str, float]:
    """mean@n of `records` minus that of `baseline` over the problems both scored (matched by
    row id), with the paired standard error (sd of the per-problem differences / sqrt(P)) and
    z = delta / se: how to compare two checkpoints on the same problems."""
    base = {r["row_id"]: float(np.mean(r["correct"])) for r in baseline}
    diffs = np.array(
        [float(np.mean(r["correct"])) - base[r["row_id"]] for r in records if r["row_id"] in base]
    )
    if len(diffs) < 2:
        raise EvalError(f"a paired comparison needs 2 or more common problems, got {len(diffs)}")
    se = float(diffs.std(ddof=1) / math.sqrt(len(diffs)))
    delta = float(diffs.mean())
    return {
        "delta": delta,
        "se": se,
        "z": delta / se if se > 0 else math.nan,
        "problems": float(len(diffs)),
    }


def read_records(path: str) -> list[dict]:
    """The per-problem records of a `<label>.jsonl` file."""
    return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


def compare_reports(out: str, baseline: str, labels) -> dict[str, dict[str, float]]:
    """{label: `paired_difference`} of OUT's splits against another evaluation's directory
    (the splits both have)."""
    out_dict = {}
    for label in labels:
        mine, theirs = os.path.join(out, f"{label}.jsonl"), os.path.join(baseline, f"{label}.jsonl")
        if storage.exists(mine) and storage.exists(theirs):
            out_dict[label] = paired_difference(read_records(mine), read_records(theirs))
    if not out_dict:
        raise EvalError(
            f"--baseline={baseline}: none of the splits {list(labels)} was scored there"
        )
    return out_dict


def _config_digest(config: ml_collections.ConfigDict) -> str:
    """A digest of the fields that can change what an evaluation samples (not the console or
    the device layout)."""
    fields = {k: v for k, v in config.to_dict().items() if k not in ("progress_bar", "parallel")}
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _evaluate_and_write(
    run, chosen, policy_params, critic_params, step, source, out, workdir, progress
) -> dict[str, Any]:
    cfg = run.config
    out = storage.absolute(out)
    main = parallel.is_main_process()
    key = {
        **source,
        "seed_step": step,
        "seed": int(cfg.seed),
        "n": int(cfg.eval.n),
        "temperature": float(cfg.eval.temperature),
        "num_problems": int(cfg.eval.num_problems),
        "ks": [int(k) for k in cfg.eval.ks],
        "greedy": bool(cfg.eval.greedy),
        "critic": critic_params is not None,
        # any other change (response length, data, prompt template) also makes old splits stale
        "config_sha256": _config_digest(cfg),
    }
    if main:
        storage.makedirs(out)
    # Process 0 decides which splits are done, so every process runs the same collectives.
    done_here = np.array([_finished(out, label, key) is not None for label in chosen], bool)
    done = np.asarray(parallel.broadcast_from_main(done_here), bool)
    bar = ProgressBar(len(chosen), keys=(f"mean@{cfg.eval.n}",), enabled=main and progress)
    metrics: dict[str, Any] = {}
    timer = phases.Timer()
    try:
        for (label, split), is_done in zip(chosen.items(), done, strict=True):
            if is_done:
                split_metrics = _finished(out, label, key) if main else {}
                log.info("%s: finished in %s, not redone", label, out)
            else:
                records: list[dict] = []
                split_metrics = evaluate_split(
                    run,
                    split,
                    label,
                    policy_params,
                    critic_params,
                    step=step,
                    timer=timer,
                    records=records,
                )
                for name, value in standard_errors(records).items():
                    split_metrics[f"eval/{label}/{name}"] = value
                if main:
                    _write_split(out, label, key, split_metrics, records)
            metrics.update(split_metrics or {})
            bar.update(
                {
                    "phase": label,
                    f"mean@{cfg.eval.n}": metrics.get(f"eval/{label}/mean@{cfg.eval.n}"),
                }
            )
    finally:
        bar.close()
    report = {
        "source": source,
        "step": step,
        "seed": int(cfg.seed),
        "method": cfg.method,
        "eval": {
            "n": int(cfg.eval.n),
            "temperature": float(cfg.eval.temperature),
            "ks": [int(k) for k in cfg.eval.ks],
            "num_problems": int(cfg.eval.num_problems),
            "max_new_tokens": int(cfg.rollout.max_new_tokens),
        },
        "splits": dict(chosen),
        "metrics": {k: _json_number(v) for k, v in sorted(metrics.items())},
        "timing": timer.metrics(),
    }
    if workdir:
        logged = _trainer_logged(workdir, step)
        if logged:
            report["trainer_logged"] = {k: _json_number(v) for k, v in sorted(logged.items())}
    if main:
        storage.write_atomic(os.path.join(out, REPORT), json.dumps(report, indent=1) + "\n")
    report["out"] = out
    return report


def _write_split(out: str, label: str, key: dict, metrics: dict, records: list[dict]) -> None:
    """The split's per-question JSONL, then its metrics file (the marker that it is done)."""
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    storage.write_atomic(os.path.join(out, f"{label}.jsonl"), lines)
    body = {"key": key, "metrics": {k: _json_number(v) for k, v in metrics.items()}}
    storage.write_atomic(os.path.join(out, f"{label}.metrics.json"), json.dumps(body, indent=1))


def _finished(out: str, label: str, key: dict) -> dict[str, Any] | None:
    """A finished split's metrics (written under the same key, with its JSONL), else None."""
    metrics_path = os.path.join(out, f"{label}.metrics.json")
    if not storage.exists(metrics_path) or not storage.exists(os.path.join(out, f"{label}.jsonl")):
        return None
    try:
        body = json.loads(storage.read_text(metrics_path))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if body.get("key") != json.loads(json.dumps(key)):
        return None
    return {k: (math.nan if v is None else v) for k, v in body["metrics"].items()}


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The report as console lines: one per split with its main metrics."""
    n = report["eval"]["n"]
    lines = [
        f"eval of {report['source']} (seed step {report['step']}, n={n}, "
        f"T={report['eval']['temperature']})"
    ]
    metrics = report["metrics"]
    for label in report["splits"]:
        prefix = f"eval/{label}/"
        parts = []
        for name in (
            f"mean@{n}",
            "mean_standard_error",
            "binomial_standard_error",
            *(f"pass@{k}" for k in report["eval"]["ks"]),
            f"maj@{n}",
            "answer_entropy",
            "response_length",
            "critic/auroc",
            "critic/auroc_within_question",
            "problems",
        ):
            value = metrics.get(prefix + name)
            if value is not None:
                parts.append(f"{name}={value:.4g}")
        lines.append(f"  {label}: " + " ".join(parts))
    logged = report.get("trainer_logged", {})
    for label in report["splits"]:
        key = f"eval/{label}/mean@{n}"
        if key in logged:
            lines.append(f"  trainer logged {key}={logged[key]:.6g} at step {report['step']}")
    for label, p in report.get("paired", {}).items():
        lines.append(
            f"  {label} vs baseline: mean@{n} {p['delta']:+.4f} ± {p['se']:.4f} (paired s.e. "
            f"over {int(p['problems'])} problems, z = {p['z']:.2f})"
        )
    lines.append(f"report: {os.path.join(report['out'], REPORT)}")
    return lines
