"""Which checkpoints a `Checkpointer` keeps: the newest N and, with keep-best, the best one.

Orbax's own machinery does the keeping: a preservation policy in the manager's options, and, for
keep-best, a `best_fn` that makes Orbax store each save's `metrics` (a "metrics" item of the step)
and read them back on restart. Old checkpoints are deleted only after a new one is finalized.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import orbax.checkpoint as ocp


def ranked_metric(name: str, sign: float, metrics: Mapping[str, Any]) -> float:
    """The value by which keep-best ranks a checkpoint (higher is kept); -inf without one."""
    value = metrics.get(name) if isinstance(metrics, Mapping) else None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return -math.inf
    return sign * float(value)


def retention_options(keep: int, keep_best: str, keep_best_mode: str) -> dict[str, Any]:
    """Keyword arguments of `ocp.CheckpointManagerOptions` that keep the newest `keep` and,
    with a `keep_best` metric name, the best checkpoint besides them.

    Saves without the metric (no eval at that step, or a non-finite value) are ranked by recency
    only. `keep_best_mode` is "max" (higher is better) or "min".
    """
    if keep_best_mode not in ("max", "min"):
        raise ValueError(f"keep_best_mode must be 'max' or 'min', got {keep_best_mode!r}")
    newest = ocp.checkpoint_managers.LatestN(keep)
    if not keep_best:
        return {"preservation_policy": newest}
    sign = 1.0 if keep_best_mode == "max" else -1.0
    metric_fn = functools.partial(ranked_metric, keep_best, sign)
    best = ocp.checkpoint_managers.BestN(
        get_metric_fn=metric_fn, n=1, keep_checkpoints_without_metrics=False
    )
    return {
        "preservation_policy": ocp.checkpoint_managers.AnyPreservationPolicy([newest, best]),
        "best_fn": metric_fn,
        "best_mode": "max",
    }
