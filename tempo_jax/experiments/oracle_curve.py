"""The critic-quality curve: how good TEMPO's reward must be before its loop gains.

Reads the `tempo_oracle` / `tempo_mixed_oracle` runs of a sweep over `--oracle_flip_probs`
(workdirs `<method>[-r<k>]-p<p>-s<seed>`), and for each run takes the final change of D_U
mean@k and pass@k against its own step-0 evaluation (the seed's initial policy) and the
measured within-question AUROC of the reward its policy saw (`<phase>/reward_auroc_within_question`,
averaged over the training steps). Points are means over seeds with their standard errors;
reference methods (e.g. ttrl and oracle, from a study's `runs.json`) are horizontal lines.

    python -m tempo_jax.experiments.oracle_curve --root=runs/ctl/oracle \\
        --reference=docs/cadence/runs.json#tiny_repro --out=docs/tempo_oracle

writes OUT/curve.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from tempo_jax.experiments.compare import headline_metrics
from tempo_jax.train import storage
from tempo_jax.train.metric_writers import read_jsonl
from tempo_jax.train.run_report import save_png

_NAME = re.compile(r"^(?P<method>[a-z_]+?)(?:-r(?P<r>\d+))?-p(?P<p>[0-9.]+)-s(?P<seed>\d+)$")
_AUROC_SUFFIX = "/reward_auroc_within_question"


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (0 for one value)."""
    if len(values) < 2:
        return float(values[0]), 0.0
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def run_point(name: str, records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """One run's point: method, p, seed, measured reward AUROC and the final Δ of D_U mean@k
    and pass@k against its step 0; None for a run without a step-0 and a later evaluation."""
    match = _NAME.match(name)
    evals = [r for r in records if any(k.startswith("eval/unlabeled/") for k in r)]
    if match is None or len(evals) < 2 or evals[0].get("step") != 0:
        return None
    first, last = evals[0], evals[-1]
    mean_key, pass_key = headline_metrics(
        first.keys(), ("eval/unlabeled/mean@*", "eval/unlabeled/pass@*")
    )
    aurocs = [
        v
        for r in records
        for k, v in r.items()
        if k.endswith(_AUROC_SUFFIX) and isinstance(v, float) and not math.isnan(v)
    ]
    return {
        "method": match["method"],
        "p": float(match["p"]),
        "seed": int(match["seed"]),
        "steps": int(last["step"]),
        "reward_auroc_within_question": statistics.fmean(aurocs) if aurocs else math.nan,
        "base_mean": first[mean_key],
        "delta_mean": last[mean_key] - first[mean_key],
        "delta_pass": last[pass_key] - first[pass_key],
        "metrics": (mean_key.rsplit("/", 1)[1], pass_key.rsplit("/", 1)[1]),
    }


def read_points(root: str) -> list[dict[str, Any]]:
    """The points of every finished run under the local directory `root`."""
    out = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name, "metrics.jsonl")
        if storage.exists(path):
            point = run_point(name, read_jsonl(path))
            if point is not None:
                out.append(point)
    return out


def curves(points: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """`{method: [row per p]}`, each row the mean ± s.e. over seeds of the reward AUROC and
    the deltas, sorted by p."""
    by: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for pt in points:
        by.setdefault((pt["method"], pt["p"]), []).append(pt)
    out: dict[str, list[dict[str, Any]]] = {}
    for (method, p), pts in sorted(by.items()):
        row: dict[str, Any] = {"p": p, "seeds": sorted(x["seed"] for x in pts)}
        for key in ("reward_auroc_within_question", "delta_mean", "delta_pass"):
            row[key], row[f"{key}_se"] = mean_se([x[key] for x in pts])
        out.setdefault(method, []).append(row)
    return out


def references(
    path: str,
    labels: Sequence[str],
    seeds: Sequence[int] | None = None,
    section: str | None = None,
) -> dict[str, dict[str, float]]:
    """Mean ± s.e. over seeds (all, or `seeds`) of the Δ mean@k / pass@k (step 0 -> last) of the
    runs labelled `labels` in a study's `runs.json` (`{"runs": {"<label>-s<seed>": {"step0",
    "step<N>"}}}`, or that under the key `section`, as docs/cadence/runs.json holds one per
    distribution).

    Raises:
      ValueError: the file has no such section, or no "runs" in it.
    """
    payload = json.loads(storage.read_text(path))
    if section is not None:
        if section not in payload:
            raise ValueError(f"{path}: no section {section!r} (has {sorted(payload)})")
        payload = payload[section]
    if "runs" not in payload:
        raise ValueError(f'{path}{"#" + section if section else ""}: no "runs" mapping')
    runs = payload["runs"]
    out = {}
    for label in labels:
        pts = [
            v
            for k, v in runs.items()
            if (m := re.fullmatch(rf"{re.escape(label)}-s(\d+)", k))
            and (seeds is None or int(m[1]) in seeds)
        ]
        if not pts:
            continue
        deltas = {"delta_mean": [], "delta_pass": []}
        for run in pts:
            last = max(
                (k for k in run if k.startswith("step") and k != "step0"), key=lambda k: int(k[4:])
            )
            mean_k = max(k for k in run["step0"] if k.startswith("mean@"))
            pass_k = max(k for k in run["step0"] if k.startswith("pass@"))
            deltas["delta_mean"].append(run[last][mean_k] - run["step0"][mean_k])
            deltas["delta_pass"].append(run[last][pass_k] - run["step0"][pass_k])
        row: dict[str, float] = {"n": float(len(pts))}
        for key, values in deltas.items():
            row[key], row[f"{key}_se"] = mean_se(values)
        out[label] = row
    return out


def markdown(table: Mapping[str, Sequence[Mapping[str, Any]]], refs: Mapping[str, Any]) -> str:
    """The curve as a table (one row per method and p), then the reference lines."""
    lines = [
        "| method | p | reward AUROC within a question | Δ mean@k | Δ pass@k | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for method, rows in table.items():
        for r in rows:
            lines.append(
                f"| {method} | {r['p']:g} | {r['reward_auroc_within_question']:.3f} ± "
                f"{r['reward_auroc_within_question_se']:.3f} | {r['delta_mean']:+.3f} ± "
                f"{r['delta_mean_se']:.3f} | {r['delta_pass']:+.3f} ± {r['delta_pass_se']:.3f} | "
                f"{','.join(map(str, r['seeds']))} |"
            )
    for label, r in refs.items():
        lines.append(
            f"| {label} (reference) | – | – | {r['delta_mean']:+.3f} ± {r['delta_mean_se']:.3f} | "
            f"{r['delta_pass']:+.3f} ± {r['delta_pass_se']:.3f} | n={int(r['n'])} |"
        )
    return "\n".join(lines) + "\n"


def plot(table: Mapping[str, Sequence[Mapping[str, Any]]], refs: Mapping[str, Any], path: str):
    """Two panels (Δ mean@k, Δ pass@k) against the measured reward AUROC, one line per method
    with s.e. bars, references as dashed horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    cmap = plt.get_cmap("tab10")
    for ax, key, title in zip(
        axes, ("delta_mean", "delta_pass"), ("Δ D_U mean@k", "Δ D_U pass@k"), strict=True
    ):
        for i, (method, rows) in enumerate(table.items()):
            ax.errorbar(
                [r["reward_auroc_within_question"] for r in rows],
                [r[key] for r in rows],
                xerr=[r["reward_auroc_within_question_se"] for r in rows],
                yerr=[r[f"{key}_se"] for r in rows],
                marker="o",
                markersize=4,
                capsize=2,
                color=cmap(i),
                label=method,
            )
        for j, (label, r) in enumerate(refs.items()):
            ax.axhline(r[key], ls="--", lw=1, color=cmap(len(table) + j), label=label)
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set_xlabel("reward AUROC within a question (measured)")
        ax.set_title(f"{title} (final - step 0, paired by seed)", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the sweep root of the tempo_oracle runs")
    parser.add_argument(
        "--reference",
        default="",
        help="a study's runs.json for the lines; FILE#NAME reads its section NAME",
    )
    parser.add_argument("--reference_labels", default="ttrl,oracle")
    parser.add_argument("--out", required=True, help="directory for curve.{md,json,png}")
    parser.add_argument("--seeds", default="", help="only these seeds, e.g. 0 (default: all)")
    args = parser.parse_args(argv)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()] or None
    points = [p for p in read_points(args.root) if seeds is None or p["seed"] in seeds]
    if not points:
        parser.error(f"no finished <method>-p<p>-s<seed> runs under {args.root}")
    table = curves(points)
    refs = {}
    if args.reference:
        labels = [x for x in args.reference_labels.split(",") if x]
        path, _, section = args.reference.partition("#")
        try:
            refs = references(path, labels, seeds, section or None)
        except ValueError as e:
            parser.error(str(e))
    storage.makedirs(args.out)
    text = markdown(table, refs)
    storage.write_atomic(os.path.join(args.out, "curve.md"), text)
    payload = {"points": points, "curves": table, "references": refs}
    storage.write_atomic(os.path.join(args.out, "curve.json"), json.dumps(payload, indent=1))
    plot(table, refs, os.path.join(args.out, "curve.png"))
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
