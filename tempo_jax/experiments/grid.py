"""An experiment grid: methods x seeds x the critic's recalibration cadence (only for methods
that recalibrate: `tempo.recalibrate_every` of the phased ones, `tempo.mixed_recalibrate_every`
of the mixed ones) x `tempo.oracle_flip_prob` (only the tempo_oracle controls), one run
per point, named after its hyperparameters, in its own workdir under one root (a local
directory or a bucket). Nothing in a name or workdir depends on when or by whom the grid was
launched, so launching the same grid again resumes every run.

Shared by `launch/sweep.py` (local subprocesses) and `launch/xm_launch.py` (xmanager work
units), which both compare the runs with `collect` + `tempo_jax.experiments.compare`. The method
`base` (the initial policy, no training) has no run of its own: `collect` reads it from the
step-0 evaluations of the trained runs (`compare.base_runs`).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
from collections.abc import Sequence
from typing import Any

from tempo_jax.config.methods import HIDDEN_TERMINAL, METHODS, MIXED, get_method
from tempo_jax.experiments.compare import BASE, base_runs
from tempo_jax.train import storage
from tempo_jax.train.metric_writers import read_jsonl

RECALIBRATE_EVERY = "tempo.recalibrate_every"
MIXED_RECALIBRATE_EVERY = "tempo.mixed_recalibrate_every"
ORACLE_FLIP_PROB = "tempo.oracle_flip_prob"


@dataclasses.dataclass(frozen=True)
class GridPoint:
    """One point of the grid.

    Attributes:
      method: a registered method name.
      seed: config.seed.
      recalibrate_every: the critic's recalibration cadence k, or None to leave the config's
        value: `tempo.recalibrate_every` of a phased method, `tempo.mixed_recalibrate_every` of
        a mixed one (`recalibrate_field`).
      oracle_flip_prob: config.tempo.oracle_flip_prob (tempo_oracle controls), or None to leave
        the config's value.
    """

    method: str
    seed: int
    recalibrate_every: int | None = None
    oracle_flip_prob: float | None = None

    @property
    def label(self) -> str:
        """Everything but the seed: the row this run is averaged into by the comparison."""
        out = self.method
        if self.recalibrate_every is not None:
            out += f"-r{self.recalibrate_every}"
        if self.oracle_flip_prob is not None:
            out += f"-p{self.oracle_flip_prob:g}"
        return out

    @property
    def name(self) -> str:
        """The run's name and workdir basename, e.g. `tempo-r2-s0`, `tempo_oracle-p0.1-s0`."""
        return f"{self.label}-s{self.seed}"

    def config_args(self) -> tuple[str, ...]:
        """The `--config.*` arguments that select this point."""
        out = (f"--config.method={self.method}", f"--config.seed={self.seed}")
        if self.recalibrate_every is not None:
            field = recalibrate_field(self.method)
            out += (f"--config.{field}={self.recalibrate_every}",)
        if self.oracle_flip_prob is not None:
            out += (f"--config.{ORACLE_FLIP_PROB}={self.oracle_flip_prob:g}",)
        return out


@dataclasses.dataclass(frozen=True)
class GridRun:
    """A point with its workdir and its `tempo-jax train` command line."""

    point: GridPoint
    workdir: str
    command: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.point.name

    @property
    def method(self) -> str:
        return self.point.method


def varies_with_recalibrate_every(method: str) -> bool:
    """Whether the recalibration cadence changes what `method` does: phased E-steps, or the
    mixed loop's critic updates."""
    return get_method(method).recalibrates


def recalibrate_field(method: str) -> str:
    """The config field that holds `method`'s recalibration cadence."""
    return MIXED_RECALIBRATE_EVERY if get_method(method).stream == MIXED else RECALIBRATE_EVERY


def flips_hidden_reward(method: str) -> bool:
    """Whether `tempo.oracle_flip_prob` applies to `method` (the tempo_oracle controls)."""
    return get_method(method).reward == HIDDEN_TERMINAL


def points(
    methods: Sequence[str],
    seeds: Sequence[int],
    recalibrate_every: Sequence[int] = (),
    oracle_flip_probs: Sequence[float] = (),
) -> list[GridPoint]:
    """The grid in method-major order; `recalibrate_every` values multiply only the methods that
    recalibrate (phased or mixed), `oracle_flip_probs` only the tempo_oracle controls (the
    others get one point per seed); `base` gives no point.

    Raises:
      ValueError: an unknown method, a repeated value, a recalibrate_every < 1, a flip
        probability outside [0, 1], or `base` alone.
    """
    unknown = [m for m in methods if m not in METHODS and m != BASE]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; known: {sorted(METHODS)} and {BASE!r}")
    if BASE in methods and all(m == BASE for m in methods):
        raise ValueError(f"--methods: {BASE!r} is read from the trained runs' step 0; add one")
    for flag, values in (
        ("--methods", methods),
        ("--seeds", seeds),
        ("--recalibrate_every", recalibrate_every),
        ("--oracle_flip_probs", oracle_flip_probs),
    ):
        if len(set(values)) != len(values):
            raise ValueError(f"{flag} must not repeat a value, got {list(values)}")
    bad = [k for k in recalibrate_every if not isinstance(k, int) or k < 1]
    if bad:
        raise ValueError(f"--recalibrate_every values must be ints >= 1, got {bad}")
    bad = [p for p in oracle_flip_probs if not 0.0 <= p <= 1.0]
    if bad:
        raise ValueError(f"--oracle_flip_probs values must be in [0, 1], got {bad}")
    out = []
    for method in (m for m in methods if m != BASE):
        ks: Sequence[int | None] = (None,)
        if recalibrate_every and varies_with_recalibrate_every(method):
            ks = recalibrate_every
        ps: Sequence[float | None] = (None,)
        if oracle_flip_probs and flips_hidden_reward(method):
            ps = oracle_flip_probs
        out += [GridPoint(method, seed, k, p) for k, p, seed in itertools.product(ks, ps, seeds)]
    return out


def parse_overrides(items: Sequence[str]) -> list[tuple[str, str]]:
    """`KEY=VALUE` pairs (KEY is a dotted config field, without the `config.` prefix); the grid's
    own axes are refused here (they come from the grid flags)."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or key.startswith("config."):
            raise ValueError(f"--set expects KEY=VALUE with KEY like rollout.n, got {item!r}")
        if key in ("method", "seed", RECALIBRATE_EVERY, MIXED_RECALIBRATE_EVERY, ORACLE_FLIP_PROB):
            flag = {
                "method": "methods",
                "seed": "seeds",
                RECALIBRATE_EVERY: "recalibrate_every",
                MIXED_RECALIBRATE_EVERY: "recalibrate_every",
                ORACLE_FLIP_PROB: "oracle_flip_probs",
            }[key]
            raise ValueError(f"--set {key}=...: use --{flag} for the grid")
        out.append((key, value))
    return out


def runs(
    config: str,
    root: str,
    grid_points: Sequence[GridPoint],
    overrides: Sequence[tuple[str, str]],
    executable: Sequence[str],
    extra_args: Sequence[str] = (),
) -> list[GridRun]:
    """Each point's workdir (ROOT/<name>) and command:
    `EXECUTABLE train --config=CONFIG --workdir=... <point args> --config.KEY=VALUE... EXTRA`."""
    out = []
    for point in grid_points:
        workdir = os.path.join(root, point.name)
        command = (
            *executable,
            "train",
            f"--config={config}",
            f"--workdir={workdir}",
            *point.config_args(),
            *(f"--config.{k}={v}" for k, v in overrides),
            *extra_args,
        )
        out.append(GridRun(point, workdir, command))
    return out


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The grid's command-line flags (both launchers)."""
    parser.add_argument("--config", required=True, help="config file (configs/X.py[:arg])")
    parser.add_argument("--root", required=True, help="directory (or gs://) of the workdirs")
    parser.add_argument("--methods", default="tempo,tempo_frozen,ttrl,empo,intuitor,rlvr")
    parser.add_argument("--seeds", default="0")
    parser.add_argument(
        "--recalibrate_every", default="", help="e.g. 2,4 (methods that recalibrate)"
    )
    parser.add_argument(
        "--oracle_flip_probs", default="", help="e.g. 0,0.1,0.2 (tempo_oracle controls)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")


def runs_from_flags(
    args: argparse.Namespace, executable: Sequence[str], extra_args: Sequence[str] = ()
) -> list[GridRun]:
    """The runs of the grid the `add_flags` flags describe.

    Raises:
      ValueError: a bad list, method, value or override (the message names the flag).
    """

    def ints(flag: str, text: str) -> list[int]:
        try:
            return [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"{flag} expects comma-separated ints, got {text!r}") from None

    def floats(flag: str, text: str) -> list[float]:
        try:
            return [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"{flag} expects comma-separated numbers, got {text!r}") from None

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    grid_points = points(
        methods,
        ints("--seeds", args.seeds),
        ints("--recalibrate_every", args.recalibrate_every),
        floats("--oracle_flip_probs", getattr(args, "oracle_flip_probs", "")),
    )
    overrides = parse_overrides(args.set)
    return runs(args.config, args.root, grid_points, overrides, executable, extra_args)


def wants_base(args: argparse.Namespace) -> bool:
    """Whether the `add_flags` flags ask for the `base` rows."""
    return BASE in [m.strip() for m in args.methods.split(",")]


def collect(
    grid_runs: Sequence[GridRun], with_base: bool = False
) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """`{name: (label, records)}` of the runs that wrote metrics, for `compare.write_comparison`
    (runs of one label, i.e. differing only in the seed, are averaged together), plus one
    `base-s<seed>` row per seed (its step-0 evaluation) when `with_base`."""
    out = {}
    for run in grid_runs:
        path = os.path.join(run.workdir, "metrics.jsonl")
        if storage.exists(path):
            out[run.name] = (run.point.label, read_jsonl(path))
    return {**base_runs(out), **out} if with_base else out
