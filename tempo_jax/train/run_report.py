"""End-of-run report from `metrics.jsonl`: a summary table (text) and a PNG of the eval curves."""

from __future__ import annotations

import io
import math
import os
from typing import Any

from tempo_jax.train import storage
from tempo_jax.train.metric_writers import read_jsonl


def eval_series(records: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """`{eval key: [(step, value), ...]}` for every finite `eval/...` value, in step order."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in sorted(records, key=lambda r: r.get("step", 0)):
        for key, value in record.items():
            if key.startswith("eval/") and isinstance(value, (int, float)):
                if math.isfinite(value):
                    series.setdefault(key, []).append((int(record["step"]), float(value)))
    return series


def summary_table(records: list[dict[str, Any]]) -> str:
    """Plain-text table: for each eval metric, its first, last and best value (and steps)."""
    series = eval_series(records)
    if not series:
        return "no evaluation records\n"
    width = max(len(k) for k in series)
    lines = [f"{'metric':<{width}}  {'first':>9}  {'last':>9}  {'best':>9}  {'best@step':>9}"]
    lines.append("-" * len(lines[0]))
    for key in sorted(series):
        points = series[key]
        lower_is_better = key.endswith(("brier", "calibration_error"))
        best = (
            min(points, key=lambda p: p[1]) if lower_is_better else max(points, key=lambda p: p[1])
        )
        lines.append(
            f"{key:<{width}}  {points[0][1]:>9.4f}  {points[-1][1]:>9.4f}  {best[1]:>9.4f}"
            f"  {best[0]:>9d}"
        )
    return "\n".join(lines) + "\n"


def plot_eval_curves(records: list[dict[str, Any]], path: str, title: str = "") -> list[str]:
    """Writes a PNG grid with one panel per metric family (e.g. mean@k, pass@k, critic auroc);
    the unlabeled and labeled-holdout splits share a panel. Returns the plotted keys."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = eval_series(records)
    panels: dict[str, list[str]] = {}
    for key in sorted(series):
        parts = key.split("/")  # eval/<split>/<metric...>
        metric = "/".join(parts[2:]) if len(parts) > 2 else parts[-1]
        panels.setdefault(metric, []).append(key)
    if not panels:
        return []
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (metric, keys) in zip(axes.flat, sorted(panels.items()), strict=False):
        for key in keys:
            steps, values = zip(*series[key], strict=False)
            split = key.split("/")[1] if key.count("/") >= 2 else key
            ax.plot(steps, values, marker="o", markersize=3, label=split)
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    # Fixed margins in inches instead of tight_layout, which draws the whole figure once more
    # (it doubled the ~2 s of CPU every finished run spends here).
    width, height = 4.2 * cols, 3.0 * rows
    fig.subplots_adjust(
        left=0.5 / width,
        right=1 - 0.15 / width,
        bottom=0.45 / height,
        top=1 - (0.75 if title else 0.35) / height,
        wspace=0.6 / (4.2 - 0.65 / cols),
        hspace=1.0 / (3.0 - 1.35 / rows),
    )
    save_png(fig, path)
    return [k for keys in panels.values() for k in keys]


def save_png(fig, path: storage.PathLike) -> None:
    """Writes a matplotlib figure as a PNG to a local or bucket `path` and closes it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    storage.write_atomic(path, buffer.getvalue())


def write_report(workdir: str, title: str = "") -> tuple[str, str]:
    """Writes `summary.txt` and `eval_curves.png` into `workdir`; returns their paths."""
    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    summary_path = os.path.join(workdir, "summary.txt")
    storage.write_atomic(summary_path, summary_table(records))
    plot_path = os.path.join(workdir, "eval_curves.png")
    plot_eval_curves(records, plot_path, title=title)
    return summary_path, plot_path
