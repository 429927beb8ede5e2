"""Ablation sweeps: one config, several methods x seeds, run one after another, then compared.

    python launch/sweep.py --config=configs/tiny_arith.py --root=runs/sweep \\
        --methods=tempo,tempo_frozen,ttrl,empo,intuitor,rlvr --seeds=0,1 \\
        --set=total_steps=32 --set=eval_every=8

Each run is `tempo-jax train --config=CONFIG --workdir=ROOT/<method>-s<seed> --config.method=...
--config.seed=... [--config.KEY=VALUE ...]` in its own process, so one failing run does not stop
the others (its log is ROOT/<run>/sweep.log), and rerunning a killed sweep resumes it: every run
restores its latest checkpoint (a finished one only rewrites its report). At the end (and with
`--compare_only`) ROOT/comparison.{md,json,png} hold the per-method means over seeds.
`--dry_run` prints the commands and runs nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import shlex
import subprocess
import sys
import time

from tempo_jax.tempo.compare import aggregate, markdown_table, write_comparison
from tempo_jax.tempo.methods import METHODS
from tempo_jax.train.metric_writers import read_jsonl


@dataclasses.dataclass(frozen=True)
class SweepRun:
    """One run of the grid."""

    method: str
    seed: int
    workdir: str
    command: tuple[str, ...]

    @property
    def name(self) -> str:
        return os.path.basename(self.workdir)


def parse_overrides(items: list[str]) -> list[tuple[str, str]]:
    """`KEY=VALUE` pairs (KEY is a dotted config field, without the `config.` prefix)."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or key.startswith("config."):
            raise ValueError(f"--set expects KEY=VALUE with KEY like rollout.n, got {item!r}")
        if key in ("method", "seed"):
            raise ValueError(f"--set {key}=...: use --methods / --seeds for the grid")
        out.append((key, value))
    return out


def grid(
    config: str,
    root: str,
    methods: list[str],
    seeds: list[int],
    overrides: list[tuple[str, str]],
    executable: tuple[str, ...] = (sys.executable, "-m", "tempo_jax.cli"),
) -> list[SweepRun]:
    """The runs of methods x seeds, in method-major order."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; known: {sorted(METHODS)}")
    if len(set(methods)) != len(methods) or len(set(seeds)) != len(seeds):
        raise ValueError("--methods and --seeds must not repeat a value")
    runs = []
    for method, seed in itertools.product(methods, seeds):
        workdir = os.path.join(root, f"{method}-s{seed}")
        command = (
            *executable,
            "train",
            f"--config={config}",
            f"--workdir={workdir}",
            f"--config.method={method}",
            f"--config.seed={seed}",
            *(f"--config.{k}={v}" for k, v in overrides),
        )
        runs.append(SweepRun(method, seed, workdir, command))
    return runs


def run_all(runs: list[SweepRun]) -> dict[str, int]:
    """Runs each run in a subprocess (output appended to WORKDIR/sweep.log); returns
    `{name: exit code}`. A finished run restores its last checkpoint and only rewrites its
    report; an interrupted one (or one given more steps) continues from its checkpoint."""
    codes = {}
    for i, run in enumerate(runs, 1):
        os.makedirs(run.workdir, exist_ok=True)
        start = time.monotonic()
        print(f"[{i}/{len(runs)}] {run.name}: {shlex.join(run.command)}", flush=True)
        with open(os.path.join(run.workdir, "sweep.log"), "a", encoding="utf-8") as log:
            codes[run.name] = subprocess.run(
                run.command, stdout=log, stderr=subprocess.STDOUT, check=False
            ).returncode
        status = "ok" if codes[run.name] == 0 else f"FAILED (exit {codes[run.name]}, see log)"
        print(f"[{i}/{len(runs)}] {run.name}: {status} in {time.monotonic() - start:.0f}s")
    return codes


def collect(runs: list[SweepRun]) -> dict[str, tuple[str, list[dict]]]:
    """`{name: (method, records)}` of the runs that wrote metrics."""
    out = {}
    for run in runs:
        path = os.path.join(run.workdir, "metrics.jsonl")
        if os.path.exists(path):
            out[run.name] = (run.method, read_jsonl(path))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="config file (configs/X.py[:arg])")
    parser.add_argument("--root", required=True, help="directory holding one workdir per run")
    parser.add_argument("--methods", default="tempo,tempo_frozen,ttrl,empo,intuitor,rlvr")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    parser.add_argument("--compare_only", action="store_true", help="only write the comparison")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        runs = grid(args.config, args.root, methods, seeds, parse_overrides(args.set))
    except ValueError as e:
        parser.error(str(e))
    if args.dry_run:
        for run in runs:
            print(shlex.join(run.command))
        return 0
    codes = {} if args.compare_only else run_all(runs)
    results = collect(runs)
    if results:
        paths = write_comparison(args.root, results)
        print(markdown_table(aggregate(results)), end="")
        print(f"wrote {paths['markdown']}, {paths['json']}, {paths['plot']}")
    failed = sorted(name for name, code in codes.items() if code != 0)
    if failed:
        print(f"failed runs: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
