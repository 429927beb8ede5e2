"""Ablation sweeps: one config, several methods x seeds, run one after another, then compared.

    python launch/sweep.py --config=configs/tiny_arith.py --root=runs/sweep \\
        --methods=tempo,tempo_frozen,ttrl,empo,intuitor,rlvr --seeds=0,1 \\
        --set=total_steps=32 --set=eval_every=8

Each run is `tempo-jax train --config=CONFIG --workdir=ROOT/<method>-s<seed> --config.method=...
--config.seed=... [--config.KEY=VALUE ...]` in its own process (with `--recalibrate_every=2,4` the
phased TEMPO methods run once per value too, as ROOT/<method>-r<k>-s<seed>; the grid is
`tempo_jax.tempo.grid`, shared with launch/xm_launch.py), so one failing run does not stop
the others (its log is ROOT/<run>/sweep.log), and rerunning a killed sweep resumes it: every run
restores its latest checkpoint (a finished one only rewrites its report). At the end (and with
`--compare_only`) ROOT/comparison.{md,json,png} hold the per-method means over seeds.
`--dry_run` prints the commands and runs nothing.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time

from tempo_jax.tempo import grid as grids
from tempo_jax.tempo.compare import aggregate, markdown_table, write_comparison
from tempo_jax.tempo.grid import GridRun as SweepRun
from tempo_jax.tempo.grid import collect
from tempo_jax.train import storage


def grid(
    config: str,
    root: str,
    methods: list[str],
    seeds: list[int],
    overrides: list[tuple[str, str]],
    executable: tuple[str, ...] = (sys.executable, "-m", "tempo_jax.cli"),
    recalibrate_every: list[int] = (),
) -> list[SweepRun]:
    """The runs of methods x seeds (x recalibrate_every), in method-major order."""
    points = grids.points(methods, seeds, recalibrate_every)
    return grids.runs(config, root, points, overrides, executable)


def run_all(runs: list[SweepRun]) -> dict[str, int]:
    """Runs each run in a subprocess (output appended to WORKDIR/sweep.log); returns
    `{name: exit code}`. A finished run restores its last checkpoint and only rewrites its
    report; an interrupted one (or one given more steps) continues from its checkpoint."""
    codes = {}
    for i, run in enumerate(runs, 1):
        start = time.monotonic()
        print(f"[{i}/{len(runs)}] {run.name}: {shlex.join(run.command)}", flush=True)
        # A local log is written as the run goes; a bucket's (objects cannot be appended to
        # while a process writes them) is staged locally and appended when the run ends.
        log_path = os.path.join(run.workdir, "sweep.log")
        storage.makedirs(run.workdir)
        with (
            tempfile.TemporaryFile() if storage.is_remote(log_path) else open(log_path, "ab")  # noqa: SIM115
        ) as log:
            codes[run.name] = subprocess.run(
                run.command, stdout=log, stderr=subprocess.STDOUT, check=False
            ).returncode
            if storage.is_remote(log_path):
                log.seek(0)
                storage.append_text(log_path, log.read().decode("utf-8", errors="replace"))
        status = "ok" if codes[run.name] == 0 else f"FAILED (exit {codes[run.name]}, see log)"
        print(f"[{i}/{len(runs)}] {run.name}: {status} in {time.monotonic() - start:.0f}s")
    return codes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    grids.add_flags(parser)
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    parser.add_argument("--compare_only", action="store_true", help="only write the comparison")
    args = parser.parse_args(argv)
    try:
        runs = grids.runs_from_flags(args, (sys.executable, "-m", "tempo_jax.cli"))
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
