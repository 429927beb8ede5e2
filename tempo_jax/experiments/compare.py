"""Compare finished runs of a sweep: methods x seeds, from each run's `metrics.jsonl`.

For every method, each eval metric's value at the last evaluation is averaged over seeds (mean
and sample standard deviation); the difference to a reference method (the untrained `base`) is
paired by seed (runs named `<label>-s<seed>`) with its standard error; the result is written as a
Markdown report and JSON, and a PNG shows the seed-mean curves over steps, the final pass@k
curve over k, and the critic's D_U AUROC over steps.

`base` is the initial policy without training: every run of one seed starts from the same
(SFT) policy and its step-0 evaluation draws the same samples, so `base_runs` takes the step-0
evaluation of each seed's first run as that seed's `base` run.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from tempo_jax.train import storage
from tempo_jax.train.run_report import eval_series, save_png

BASE = "base"
Runs = Mapping[str, tuple[str, Sequence[Mapping[str, Any]]]]  # name -> (method, records)

# Headline metrics (table columns and plot panels), in this order; "@*" stands for the largest
# k the runs report (eval.n differs between configs: 8 on CPU, 16 in the AIME recipe).
HEADLINE = (
    "eval/unlabeled/mean@*",
    "eval/unlabeled/maj@*",
    "eval/unlabeled/pass@*",
    "eval/unlabeled/answer_entropy",
    "eval/unlabeled/greedy_accuracy",
    "eval/holdout/mean@*",
    "eval/unlabeled/critic/auroc",
    "eval/unlabeled/critic/auroc_within_question",
)
# Compared with the reference method, paired by seed.
DELTA = ("eval/unlabeled/mean@*", "eval/unlabeled/maj@*", "eval/unlabeled/pass@*")
# Curves over steps in the plot (the pass@k curve over k is drawn besides).
CURVES = (
    "eval/unlabeled/mean@*",
    "eval/unlabeled/maj@*",
    "eval/unlabeled/pass@*",
    "eval/unlabeled/answer_entropy",
    "eval/holdout/mean@*",
    "eval/unlabeled/critic/auroc",
    "eval/unlabeled/critic/auroc_within_question",
)
AUROC_CURVES = {
    "eval/unlabeled/critic/auroc": "Critic AUROC on D_U over steps (pooled over questions)",
    "eval/unlabeled/critic/auroc_within_question": (
        "Critic AUROC on D_U within a question over steps (mean over questions with both right "
        "and wrong samples)"
    ),
}
_SEED = re.compile(r"-s(\d+)$")


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
            if ks and f"{stem}{max(ks)}" not in out:
                out.append(f"{stem}{max(ks)}")
        elif pattern in keys and pattern not in out:
            out.append(pattern)
    return out


def run_seed(name: str) -> int:
    """The seed of a run named `<label>-s<seed>`.

    Raises:
      ValueError: for a name without the `-s<seed>` suffix.
    """
    match = _SEED.search(name)
    if match is None:
        raise ValueError(f"run name {name!r} does not end in -s<seed>")
    return int(match.group(1))


def final_values(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Each eval metric's value at its last evaluation."""
    return {key: points[-1][1] for key, points in eval_series(list(records)).items()}


def initial_record(records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The step-0 evaluation record of a run, without its critic metrics (the untrained policy's
    accuracy is the same in every run of a seed; critics differ by method), or None."""
    for record in records:
        if record.get("step") == 0 and any(k.startswith("eval/") for k in record):
            return {k: v for k, v in record.items() if "/critic/" not in k}
    return None


def base_runs(runs: Runs) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """`{"base-s<seed>": ("base", [step-0 record])}` from the first run of each seed that has
    a step-0 evaluation (see the module docstring)."""
    out: dict[str, tuple[str, list[dict[str, Any]]]] = {}
    for name, (_, records) in runs.items():
        key = f"{BASE}-s{run_seed(name)}"
        record = initial_record(records)
        if key not in out and record is not None:
            out[key] = (BASE, [record])
    return out


def aggregate(runs: Runs) -> dict[str, Any]:
    """`{method: {metric: {"mean", "std", "n"}}}` over seeds of each metric's final value.

    Args:
      runs: run name -> (method, metrics records).
    """
    by_method: dict[str, list[dict[str, float]]] = {}
    for method, records in runs.values():
        by_method.setdefault(method, []).append(final_values(records))
    out: dict[str, Any] = {}
    for method, finals in _ordered(by_method).items():
        keys = sorted({k for f in finals for k in f})
        out[method] = {}
        for key in keys:
            values = [f[key] for f in finals if key in f and not math.isnan(f[key])]
            if not values:
                continue
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            out[method][key] = {"mean": statistics.fmean(values), "std": std, "n": len(values)}
    return out


def _ordered(by_method: Mapping[str, Any]) -> dict[str, Any]:
    """`base` first, then the other methods alphabetically."""
    names = sorted(by_method, key=lambda m: (m != BASE, m))
    return {m: by_method[m] for m in names}


def paired_deltas(
    runs: Runs, metrics: Sequence[str], reference: str = BASE
) -> dict[str, dict[str, dict[str, float]]]:
    """Per method and metric: the seed-paired difference of final values to `reference`.

    Returns:
      `{method: {metric: {"mean", "se", "n", "z"}}}` with `se` the standard error of the mean
      difference over the n shared seeds (sample std / sqrt(n); NaN for n < 2) and `z` = mean /
      se. The reference method itself is left out.
    """
    finals: dict[str, dict[int, dict[str, float]]] = {}
    for name, (method, records) in runs.items():
        finals.setdefault(method, {})[run_seed(name)] = final_values(records)
    ref = finals.get(reference, {})
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method, by_seed in _ordered(finals).items():
        if method == reference:
            continue
        out[method] = {}
        for metric in metrics:
            diffs = [
                v[metric] - ref[s][metric]
                for s, v in sorted(by_seed.items())
                if s in ref and metric in v and metric in ref[s]
            ]
            if not diffs:
                continue
            mean = statistics.fmean(diffs)
            se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
            z = mean / se if se > 0 else math.nan  # (NaN > 0 is False)
            out[method][metric] = {"mean": mean, "se": se, "n": len(diffs), "z": z}
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


def delta_table(deltas: Mapping[str, Any], reference: str = BASE) -> str:
    """Markdown: per method, `Δ ± s.e. (z)` of each compared metric against `reference`."""
    metrics = sorted({m for per in deltas.values() for m in per}, key=_delta_order)
    if not metrics:
        return ""
    short = [f"Δ {m.removeprefix('eval/')}" for m in metrics]
    lines = [f"| method (vs {reference}) | " + " | ".join(short) + " |"]
    lines.append("|---" * (len(metrics) + 1) + "|")
    for method, per in deltas.items():
        cells = []
        for m in metrics:
            d = per.get(m)
            if d is None:
                cells.append("–")
            else:
                z = "–" if math.isnan(d["z"]) else f"{d['z']:+.1f}"
                cells.append(f"{d['mean']:+.3f} ± {d['se']:.3f} ({z})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _delta_order(metric: str) -> int:
    stems = [p[:-1] for p in DELTA]
    return next((i for i, s in enumerate(stems) if metric.startswith(s)), len(stems))


def pass_at_k_curves(summary: Mapping[str, Any], split: str = "unlabeled") -> dict[str, list]:
    """`{method: [(k, mean, std), ...]}` of the final pass@k over k, from `aggregate`'s output."""
    prefix = f"eval/{split}/pass@"
    out = {}
    for method, per in summary.items():
        points = sorted(
            (int(key[len(prefix) :]), s["mean"], s["std"])
            for key, s in per.items()
            if key.startswith(prefix) and key[len(prefix) :].isdigit()
        )
        if points:
            out[method] = points
    return out


def pass_at_k_table(curves: Mapping[str, list[tuple[int, float, float]]]) -> str:
    """Markdown: one row per method, one column per k (`pass_at_k_curves`' seed means)."""
    ks = sorted({k for points in curves.values() for k, _, _ in points})
    lines = ["| method | " + " | ".join(f"k={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for method, points in curves.items():
        means = {k: mean for k, mean, _ in points}
        cells = [f"{means[k]:.3f}" if k in means else "–" for k in ks]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_curves(runs: Runs, metric: str) -> dict[str, list[tuple[int, float]]]:
    """`{method: [(step, seed-mean value), ...]}` over the steps every seed evaluated."""
    per_method: dict[str, list[dict[int, float]]] = {}
    for method, records in runs.values():
        points = eval_series(list(records)).get(metric)
        if points:
            per_method.setdefault(method, []).append(dict(points))
    curves = {}
    for method, seeds in _ordered(per_method).items():
        steps = sorted(set.intersection(*(set(s) for s in seeds)))
        curves[method] = [(t, statistics.fmean(s[t] for s in seeds)) for t in steps]
    return curves


def curve_table(curves: Mapping[str, list[tuple[int, float]]]) -> str:
    """Markdown: one row per method, one column per step (seed means)."""
    steps = sorted({t for points in curves.values() for t, _ in points})
    if not steps:
        return ""
    lines = ["| method | " + " | ".join(f"step {t}" for t in steps) + " |"]
    lines.append("|---" * (len(steps) + 1) + "|")
    for method, points in curves.items():
        values = dict(points)
        cells = [f"{values[t]:.3f}" if t in values else "–" for t in steps]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_comparison(runs: Runs, path: str, metrics: Sequence[str] | None = None) -> list[str]:
    """Writes a PNG with one panel per metric over steps (default: `CURVES`), one seed-mean line
    per method, plus a panel of the final D_U pass@k over k; returns the plotted panels."""
    keys = {k for _, records in runs.values() for k in eval_series(list(records))}
    if metrics is None:
        metrics = headline_metrics(keys, CURVES)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, Any]] = [(m, mean_curves(runs, m)) for m in metrics]
    panels = [(m, c) for m, c in panels if c]
    pass_k = pass_at_k_curves(aggregate(runs))
    if pass_k:
        panels.append(("unlabeled/pass@k (final, over k)", pass_k))
    if not panels:
        return []
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.2 * rows + 0.8), squeeze=False)
    # One colour per method in every panel, one legend for the figure.
    names = list(_ordered({m: None for _, curves in panels for m in curves}))
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    colors = {m: cmap(i) for i, m in enumerate(names)}
    for ax, (metric, curves) in zip(axes.flat, panels, strict=False):
        for method, points in curves.items():
            style = {"marker": "o", "markersize": 3, "label": method, "color": colors[method]}
            if metric.endswith("(final, over k)"):
                ks, means, stds = zip(*points, strict=True)
                ax.errorbar(ks, means, yerr=stds, capsize=2, **style)
                ax.set_xlabel("k")
            else:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, **style)
                ax.set_xlabel("step")
        ax.set_title(metric.removeprefix("eval/"), fontsize=10)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colors[m], marker="o", label=m) for m in names]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(names), 6), fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout(rect=(0, 0.8 / (3.2 * rows + 0.8) + 0.02, 1, 1))
    save_png(fig, path)
    return [m for m, _ in panels]


def comparison_markdown(runs: Runs) -> str:
    """The report: final metrics per method, differences to base, the final D_U pass@k over k,
    the critic's D_U AUROC over steps, and the evaluation's binomial standard error."""
    summary = aggregate(runs)
    parts = ["## Final evaluation (mean ± std over seeds)\n", markdown_table(summary)]
    keys = {k for per in summary.values() for k in per}
    if BASE in summary:
        deltas = paired_deltas(runs, headline_metrics(keys, DELTA))
        if deltas:
            parts += [
                "\n## Difference to base, paired by seed (Δ ± s.e. over seeds, (z = Δ / s.e.))\n",
                delta_table(deltas),
            ]
    pass_k = pass_at_k_curves(summary)
    if pass_k:
        parts += ["\n## Final D_U pass@k over k, seed means\n", pass_at_k_table(pass_k)]
    for metric, title in AUROC_CURVES.items():
        curves = {m: c for m, c in mean_curves(runs, metric).items() if c}
        if curves:
            parts += [f"\n## {title}, seed means\n", curve_table(curves)]
    note = _binomial_note(runs)
    if note:
        parts += ["\n", note]
    return "".join(parts)


def _binomial_note(runs: Runs) -> str:
    """One line: the binomial standard error of one D_U mean@n evaluation at the base accuracy
    (problems x samples; samples of one problem are correlated, so the true error is larger)."""
    for _, records in runs.values():
        for record in records:
            problems = record.get("eval/unlabeled/problems")
            means = [k for k in record if re.fullmatch(r"eval/unlabeled/mean@\d+", k)]
            if problems and means:
                n = int(means[0].rsplit("@", 1)[1])
                p = record[means[0]]
                se = math.sqrt(max(p * (1 - p), 0.0) / (problems * n))
                return (
                    f"One evaluation: {int(problems)} D_U problems x {n} samples; binomial s.e. "
                    f"of mean@{n} at {p:.3f}: {se:.3f} (a lower bound: samples of one problem "
                    "are correlated).\n"
                )
    return ""


def write_comparison(root: str, runs: Runs) -> dict[str, str]:
    """Writes comparison.md, comparison.json and comparison.png under `root`; returns paths.

    The JSON holds `summary` (aggregate), `deltas` (paired to base, when base is among the runs)
    and `auroc_curves` (critic D_U AUROC over steps, pooled and within a question)."""
    summary = aggregate(runs)
    keys = {k for per in summary.values() for k in per}
    payload = {
        "summary": summary,
        "deltas": paired_deltas(runs, headline_metrics(keys, DELTA)) if BASE in summary else {},
        "auroc_curves": {m: mean_curves(runs, m) for m in AUROC_CURVES},
    }
    paths = {
        "markdown": os.path.join(root, "comparison.md"),
        "json": os.path.join(root, "comparison.json"),
        "plot": os.path.join(root, "comparison.png"),
    }
    storage.write_atomic(paths["markdown"], comparison_markdown(runs))
    storage.write_atomic(paths["json"], json.dumps(payload, indent=1, sort_keys=True))
    plot_comparison(runs, paths["plot"])
    return paths
