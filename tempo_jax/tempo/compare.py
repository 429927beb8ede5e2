"""Compare finished runs of a sweep: methods x seeds, from each run's `metrics.jsonl`.

For every method, each eval metric's value at the last evaluation is averaged over seeds (mean
and sample standard deviation), written as a Markdown table and JSON, and the seed-mean curves
of the headline metrics are drawn one panel per metric, one line per method.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from tempo_jax.tempo.report import eval_series, save_png
from tempo_jax.train import storage

# Headline metrics (table columns and plot panels), in this order; "@*" stands for the largest
# k the runs report (eval.n differs between configs: 8 on CPU, 16 in the AIME recipe).
HEADLINE = (
    "eval/unlabeled/mean@*",
    "eval/unlabeled/maj@*",
    "eval/unlabeled/greedy_accuracy",
    "eval/holdout/mean@*",
    "eval/unlabeled/critic/auroc",
    "eval/unlabeled/distinct_answers",
)


def headline_metrics(keys: set[str] | Sequence[str], patterns: Sequence[str] = HEADLINE) -> list:
    """The metric names that `patterns` pick out of `keys`."""
    keys = set(keys)
    out = []
    for pattern in patterns:
        if pattern.endswith("@*"):
            stem = pattern[:-1]
            ks = [
                int(k[len(stem) :]) for k in keys if k.startswith(stem) and k[len(stem) :].isdigit()
            ]
            if ks:
                out.append(f"{stem}{max(ks)}")
        elif pattern in keys:
            out.append(pattern)
    return out


def final_values(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Each eval metric's value at its last evaluation."""
    return {key: points[-1][1] for key, points in eval_series(list(records)).items()}


def aggregate(runs: Mapping[str, tuple[str, Sequence[Mapping[str, Any]]]]) -> dict[str, Any]:
    """`{method: {metric: {"mean", "std", "n"}}}` over seeds.

    Args:
      runs: run name -> (method, metrics records).
    """
    by_method: dict[str, list[dict[str, float]]] = {}
    for method, records in runs.values():
        by_method.setdefault(method, []).append(final_values(records))
    out: dict[str, Any] = {}
    for method, finals in sorted(by_method.items()):
        keys = sorted({k for f in finals for k in f})
        out[method] = {}
        for key in keys:
            values = [f[key] for f in finals if key in f]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            out[method][key] = {"mean": statistics.fmean(values), "std": std, "n": len(values)}
    return out


def markdown_table(summary: Mapping[str, Any], metrics: Sequence[str] | None = None) -> str:
    """Methods as rows, metrics as columns (default: the headline ones): `mean ± std (n=seeds)`;
    '–' where a method lacks the metric (e.g. critic AUROC of a critic-free baseline)."""
    if metrics is None:
        metrics = headline_metrics({k for per in summary.values() for k in per})
    shown = [m for m in metrics if any(m in per for per in summary.values())]
    if not shown:
        return "no evaluation records\n"
    short = [m.removeprefix("eval/") for m in shown]
    lines = ["| method | " + " | ".join(short) + " |", "|---" * (len(shown) + 1) + "|"]
    for method, per in summary.items():
        cells = []
        for m in shown:
            if m in per:
                s = per[m]
                cells.append(f"{s['mean']:.3f} ± {s['std']:.3f} (n={s['n']})")
            else:
                cells.append("–")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_curves(
    runs: Mapping[str, tuple[str, Sequence[Mapping[str, Any]]]], metric: str
) -> dict[str, list[tuple[int, float]]]:
    """`{method: [(step, seed-mean value), ...]}` over the steps every seed evaluated."""
    per_method: dict[str, list[dict[int, float]]] = {}
    for method, records in runs.values():
        points = eval_series(list(records)).get(metric)
        if points:
            per_method.setdefault(method, []).append(dict(points))
    curves = {}
    for method, seeds in sorted(per_method.items()):
        steps = sorted(set.intersection(*(set(s) for s in seeds)))
        curves[method] = [(t, statistics.fmean(s[t] for s in seeds)) for t in steps]
    return curves


def plot_comparison(
    runs: Mapping[str, tuple[str, Sequence[Mapping[str, Any]]]],
    path: str,
    metrics: Sequence[str] | None = None,
) -> list[str]:
    """Writes a PNG with one panel per metric (default: the headline ones), one seed-mean line
    per method; returns the plotted metrics."""
    if metrics is None:
        keys = {k for _, records in runs.values() for k in eval_series(list(records))}
        metrics = headline_metrics(keys)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(m, mean_curves(runs, m)) for m in metrics]
    panels = [(m, c) for m, c in panels if c]
    if not panels:
        return []
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (metric, curves) in zip(axes.flat, panels, strict=False):
        for method, points in curves.items():
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o", markersize=3, label=method)
        ax.set_title(metric.removeprefix("eval/"), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    save_png(fig, path)
    return [m for m, _ in panels]


def write_comparison(
    root: str, runs: Mapping[str, tuple[str, Sequence[Mapping[str, Any]]]]
) -> dict[str, str]:
    """Writes comparison.md, comparison.json and comparison.png under `root`; returns paths."""
    summary = aggregate(runs)
    paths = {
        "markdown": os.path.join(root, "comparison.md"),
        "json": os.path.join(root, "comparison.json"),
        "plot": os.path.join(root, "comparison.png"),
    }
    storage.write_atomic(paths["markdown"], markdown_table(summary))
    storage.write_atomic(paths["json"], json.dumps(summary, indent=1, sort_keys=True))
    plot_comparison(runs, paths["plot"])
    return paths
