"""The recalibration-cadence study: final Δ D_U mean@k against `recalibrate_every`.

Reads one or more sweep roots (one per D_U distribution), each holding workdirs
`<label>-s<seed>` with their `metrics.jsonl` (`launch/sweep.py` makes them; `tempo-r4-s0`,
`tempo_mixed-r8-s3`, `ttrl-s1`, ...). For every label it takes the final value of each compared
metric minus the seed's initial policy (`base`, the step-0 evaluation), paired by seed
(`compare.paired_deltas`), and also the difference to each reference run present, paired the
same way: `ttrl` (the paper's claim that TEMPO beats TTRL) and `rlvr` (GRPO on D_L alone, which
tells the mixed loop's labeled half from its critic-rewarded D_U half). The methods with a
cadence (`<method>-r<k>`) become curves over k, the others horizontal reference lines with
their standard-error bands.

    python -m tempo_jax.experiments.cadence --root=tiny_repro=runs/r5 \\
        --root=shifted=runs/s5 --out=docs/cadence

writes OUT/cadence.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from tempo_jax.experiments.compare import DELTA, base_runs, headline_metrics, paired_deltas
from tempo_jax.train import storage
from tempo_jax.train.metric_writers import read_jsonl
from tempo_jax.train.run_report import save_png

_RUN = re.compile(r"^(?P<label>[a-z_]+(?:-[rp][0-9.]+)*)-s(?P<seed>\d+)$")
_CADENCE = re.compile(r"^(?P<method>[a-z_]+)-r(?P<k>\d+)$")
REFERENCES = ("ttrl", "rlvr")


def read_runs(root: str) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """`{name: (label, records)}` of every run under the local directory `root` that evaluated
    at least twice (step 0 and later), plus one `base-s<seed>` row per seed."""
    out = {}
    for name in sorted(os.listdir(root)):
        match = _RUN.match(name)
        path = os.path.join(root, name, "metrics.jsonl")
        if match is None or match["label"] == "sft" or not storage.exists(path):
            continue
        records = read_jsonl(path)
        if sum(1 for r in records if any(k.startswith("eval/") for k in r)) >= 2:
            out[name] = (match["label"], records)
    return {**base_runs(out), **out}


def study(runs: Mapping[str, tuple[str, Sequence[Mapping[str, Any]]]]) -> dict[str, Any]:
    """The paired differences of one distribution's runs: `vs_base` and `vs_<reference>` (for
    each of REFERENCES, empty when the reference did not run) as `compare.paired_deltas` gives
    them (`{label: {metric: {mean, se, n, z}}}`), the compared metrics, and `cadence`:
    `{method: [(k, label), ...]}` sorted by k."""
    keys = {k for _, records in runs.values() for r in records for k in r}
    metrics = headline_metrics(keys, DELTA)
    labels = {label for label, _ in runs.values()}
    cadence: dict[str, list[tuple[int, str]]] = {}
    for label in sorted(labels):
        if match := _CADENCE.match(label):
            cadence.setdefault(match["method"], []).append((int(match["k"]), label))
    return {
        "metrics": metrics,
        "vs_base": paired_deltas(runs, metrics),
        **{
            f"vs_{ref}": paired_deltas(runs, metrics, reference=ref) if ref in labels else {}
            for ref in REFERENCES
        },
        "cadence": {m: sorted(points) for m, points in sorted(cadence.items())},
    }


def _cell(d: Mapping[str, float] | None) -> str:
    if d is None:
        return "–"
    z = "–" if math.isnan(d["z"]) else f"{d['z']:+.1f}"
    return f"{d['mean']:+.3f} ± {d['se']:.3f} ({z})"


def markdown(name: str, result: Mapping[str, Any]) -> str:
    """One distribution's table: per label, Δ ± s.e. (z) of each metric against base, and of
    the first metric (mean@k) against each reference that ran, with the number of paired
    seeds."""
    metrics = result["metrics"]
    refs = [ref for ref in REFERENCES if result[f"vs_{ref}"]]
    short = [m.removeprefix("eval/unlabeled/") for m in metrics]
    head = [f"Δ {s} vs base" for s in short] + [f"Δ {short[0]} vs {r}" for r in refs] + ["seeds"]
    lines = [f"### {name}\n", "| run | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for label, per in result["vs_base"].items():
        vs_refs = [result[f"vs_{r}"].get(label, {}).get(metrics[0]) for r in refs]
        n = max((d["n"] for d in per.values()), default=0)
        cells = [_cell(per.get(m)) for m in metrics] + [_cell(d) for d in vs_refs] + [str(n)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: Mapping[str, Mapping[str, Any]], path: str) -> None:
    """One panel per distribution: Δ D_U mean@k (± s.e.) against recalibrate_every for each
    method with a cadence; the other runs as dashed lines with their s.e. bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.4), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (name, result) in zip(axes[0], results.items(), strict=True):
        metric = result["metrics"][0]
        deltas = result["vs_base"]
        color = 0
        ks_all: set[int] = set()
        for method, points in result["cadence"].items():
            pts = [(k, deltas[label][metric]) for k, label in points if metric in deltas[label]]
            if not pts:
                continue
            ks_all.update(k for k, _ in pts)
            ax.errorbar(
                [k for k, _ in pts],
                [d["mean"] for _, d in pts],
                yerr=[0.0 if math.isnan(d["se"]) else d["se"] for _, d in pts],
                marker="o",
                capsize=3,
                lw=2,
                color=cmap(color),
                label=method,
            )
            color += 1
        in_cadence = {label for points in result["cadence"].values() for _, label in points}
        for label, per in deltas.items():
            if label in in_cadence or metric not in per:
                continue
            d, c = per[metric], cmap(color % 10)
            ax.axhline(d["mean"], ls="--", lw=1, color=c, label=label)
            if not math.isnan(d["se"]):
                ax.axhspan(d["mean"] - d["se"], d["mean"] + d["se"], color=c, alpha=0.08)
            color += 1
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set_xscale("log", base=2)
        if ks_all:
            ax.set_xticks(sorted(ks_all), [str(k) for k in sorted(ks_all)])
        ax.set_xlabel("recalibrate_every (steps between critic recalibrations)")
        ax.set_ylabel(f"Δ {metric.removeprefix('eval/unlabeled/')} vs base (± s.e.)")
        ax.set_title(f"{name}: final - step 0, paired by seed", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    width = fig.get_figwidth()  # fixed margins in inches: room for the y label and ticks
    fig.subplots_adjust(
        left=0.85 / width, right=1 - 0.15 / width, bottom=0.13, top=0.92, wspace=0.3
    )
    save_png(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", action="append", required=True, help="NAME=DIR, one per distribution"
    )
    parser.add_argument("--out", required=True, help="directory for cadence.{md,json,png}")
    args = parser.parse_args(argv)
    results = {}
    for item in args.root:
        name, sep, root = item.partition("=")
        if not sep or not name or not root:
            parser.error(f"--root expects NAME=DIR, got {item!r}")
        if not os.path.isdir(root):
            parser.error(f"--root {name}: {root} is not a directory")
        runs = read_runs(root)
        if not any(label == "base" for label, _ in runs.values()):
            parser.error(f"--root {name}: no finished <label>-s<seed> run under {root}")
        results[name] = study(runs)
    storage.makedirs(args.out)
    text = "".join(markdown(name, result) + "\n" for name, result in results.items())
    storage.write_atomic(os.path.join(args.out, "cadence.md"), text)
    storage.write_atomic(os.path.join(args.out, "cadence.json"), json.dumps(results, indent=1))
    plot(results, os.path.join(args.out, "cadence.png"))
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
