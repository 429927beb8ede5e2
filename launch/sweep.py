"""Ablation sweeps: one config, several methods x seeds, then compared.

    python launch/sweep.py --config=configs/tiny_repro.py --root=runs/repro \\
        --methods=base,oracle,tempo,tempo_frozen,ttrl,empo,intuitor \\
        --recalibrate_every=1,2,4,8 --seeds=0,1,2 --share_sft --jobs=2

Each run is `tempo-jax train --config=CONFIG --workdir=ROOT/<method>-s<seed> --config.method=...
--config.seed=... [--config.KEY=VALUE ...]` in its own process (with `--recalibrate_every=2,4` the
TEMPO methods that recalibrate, phased or mixed, run once per value too, as
ROOT/<method>-r<k>-s<seed>; the grid is `tempo_jax.experiments.grid`, shared with
launch/xm_launch.py), so one failing run does not stop
the others (its log is ROOT/<run>/sweep.log), and rerunning a killed sweep resumes it: every run
restores its latest checkpoint (a finished one only rewrites its report). At the end (and with
`--compare_only`) ROOT/comparison.{md,json,png} hold the per-method means over seeds, the
differences to `base` paired by seed, and the critic's D_U AUROC over steps
(`tempo_jax.experiments.compare`).

`--oracle_flip_probs=0,0.1,...` multiplies the `tempo_oracle` / `tempo_mixed_oracle` controls by
`tempo.oracle_flip_prob` (runs ROOT/<method>-p<p>-s<seed>);
`python -m tempo_jax.experiments.oracle_curve --root=ROOT --out=DIR` then plots
their gain against the reward's measured within-question AUROC.

`base` in `--methods` is the initial policy, no training. It costs nothing: every run of a seed
starts from the same policy and evaluates it at step 0 with the same samples, so base is read
from the step-0 evaluation of the seed's runs (`tempo_jax.experiments.compare.base_runs`).

`--share_sft` fine-tunes once per seed (ROOT/sft-s<seed>, `tempo-jax sft`) and copies the result
into each run's workdir before it starts (a run skips SFT when `sft/<steps>` exists), instead
of every run repeating the same SFT. `--jobs N` runs N processes at once; each is pinned to one
CPU of this process's affinity set (round robin), so XLA in each sizes its thread pool to 1.
`--dry_run` prints the commands and runs nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

from tempo_jax.experiments import grid as grids
from tempo_jax.experiments.compare import comparison_markdown, write_comparison
from tempo_jax.experiments.grid import GridRun
from tempo_jax.train import storage

EXECUTABLE = (sys.executable, "-m", "tempo_jax.cli")


@dataclasses.dataclass(frozen=True)
class SftRun:
    """A seed's shared SFT (`tempo-jax sft`), copied into each of that seed's runs."""

    seed: int
    workdir: str
    command: tuple[str, ...]

    @property
    def name(self) -> str:
        return os.path.basename(self.workdir)


def grid(
    config: str,
    root: str,
    methods: list[str],
    seeds: list[int],
    overrides: list[tuple[str, str]],
    executable: tuple[str, ...] = EXECUTABLE,
    recalibrate_every: list[int] = (),
) -> list[GridRun]:
    """The runs of methods x seeds (x recalibrate_every), in method-major order."""
    points = grids.points(methods, seeds, recalibrate_every)
    return grids.runs(config, root, points, overrides, executable)


def shared_sft(
    config: str,
    root: str,
    seeds: Sequence[int],
    overrides: Sequence[tuple[str, str]],
    executable: Sequence[str] = EXECUTABLE,
) -> list[SftRun]:
    """One `tempo-jax sft` per seed, in ROOT/sft-s<seed>, with the grid's overrides (the grid's
    only other axes, method and recalibrate_every, do not change what SFT produces)."""
    out = []
    for seed in seeds:
        workdir = os.path.join(root, f"sft-s{seed}")
        command = (
            *executable,
            "sft",
            f"--config={config}",
            f"--workdir={workdir}",
            f"--config.seed={seed}",
            *(f"--config.{k}={v}" for k, v in overrides),
        )
        out.append(SftRun(seed, workdir, command))
    return out


def _copy_sft(sft: SftRun, run: GridRun) -> None:
    """Copies the seed's shared sft/ into a run's workdir unless it has one (or checkpoints)."""
    target = os.path.join(run.workdir, "sft")
    started = storage.exists(os.path.join(run.workdir, "checkpoints"))
    if storage.exists(target) or started:
        return
    source = os.path.join(sft.workdir, "sft")
    if storage.is_remote(target):
        storage.copy_tree(source, target)
    else:
        shutil.copytree(source, target)


def _pinning(jobs: int):
    """A function giving slot i's CPU set (one CPU each, round robin), or None for one job."""
    if jobs <= 1 or not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return lambda slot: {cpus[slot % len(cpus)]}


def _child_env(root: str) -> dict[str, str]:
    """The children's environment: a persistent compilation cache shared by every run of a local
    sweep (ROOT/jax_cache unless JAX_COMPILATION_CACHE_DIR is set), since all runs compile the
    same shapes; each run otherwise spends its first step compiling."""
    env = dict(os.environ)
    if not storage.is_remote(root):
        env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(root, "jax_cache"))
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    return env


def _run_logged(
    command: Sequence[str], workdir: str, env: dict, preexec
) -> tuple[int, float | None]:
    """Runs `command` with its output appended to WORKDIR/sweep.log; returns its exit code and
    the CPU seconds (user + system) it and its children used (None where `os.wait4` is missing).
    A local log is written as the run goes; a bucket's (objects cannot be appended to while a
    process writes them) is staged locally and appended when the run ends."""
    log_path = os.path.join(workdir, "sweep.log")
    storage.makedirs(workdir)
    remote = storage.is_remote(log_path)
    with tempfile.TemporaryFile() if remote else open(log_path, "ab") as log:  # noqa: SIM115
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec, env=env
        )
        cpu = None
        if hasattr(os, "wait4"):
            # The run's own CPU time: on a shared machine its wall time measures the load too.
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            cpu = usage.ru_utime + usage.ru_stime
        code = process.wait()
        if remote:
            log.seek(0)
            storage.append(log_path, log.read().decode("utf-8", errors="replace"))
    return code, cpu


def run_all(
    runs: list[GridRun], sfts: Sequence[SftRun] = (), jobs: int = 1, root: str = "."
) -> dict[str, int]:
    """Runs each SFT and run in a subprocess, `jobs` at a time; a run waits only for its own
    seed's SFT (when `sfts` has one) and is skipped if that failed. Returns `{name: exit code}`
    (-1 for a skipped run). A finished run restores its last checkpoint and only rewrites its
    report; an interrupted one (or one given more steps) continues from its checkpoint."""
    codes: dict[str, int] = {}
    pin = _pinning(jobs)
    env = _child_env(root)
    free_slots = list(range(max(jobs, 1)))
    lock = threading.Lock()
    sft_of = {s.seed: s for s in sfts}
    sft_done = {s.seed: threading.Event() for s in sfts}
    # Every SFT first, then the runs seed by seed, so the first seeds' runs use the CPUs while
    # the last SFT is still going.
    order: list[SftRun | GridRun] = [*sfts, *sorted(runs, key=lambda r: r.point.seed)]
    number = {job.name: i for i, job in enumerate([*sfts, *runs], 1)}
    total = len(order)

    def one(job: SftRun | GridRun) -> None:
        prefix = f"[{number[job.name]}/{total}] {job.name}:"
        sft = sft_of.get(job.point.seed) if isinstance(job, GridRun) else None
        if sft is not None:
            sft_done[sft.seed].wait()
            if codes.get(sft.name) != 0:
                codes[job.name] = -1
                print(f"{prefix} SKIPPED (its SFT failed)", flush=True)
                return
            _copy_sft(sft, job)
        with lock:
            slot = free_slots.pop(0)
        try:
            start = time.monotonic()
            print(f"{prefix} {shlex.join(job.command)}", flush=True)
            preexec = (lambda s=slot: os.sched_setaffinity(0, pin(s))) if pin else None
            code, cpu = _run_logged(job.command, job.workdir, env, preexec)
            codes[job.name] = code
            status = "ok" if code == 0 else f"FAILED (exit {code}, see log)"
            used = "" if cpu is None else f" (CPU {cpu:.0f}s)"
            print(f"{prefix} {status} in {time.monotonic() - start:.0f}s{used}", flush=True)
        finally:
            with lock:
                free_slots.append(slot)
            if isinstance(job, SftRun):
                sft_done[job.seed].set()

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        for future in [pool.submit(one, job) for job in order]:
            future.result()
    return codes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    grids.add_flags(parser)
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each on one CPU)")
    parser.add_argument("--share_sft", action="store_true", help="one SFT per seed, copied")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    parser.add_argument("--compare_only", action="store_true", help="only write the comparison")
    args = parser.parse_args(argv)
    try:
        runs = grids.runs_from_flags(args, EXECUTABLE)
        if args.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    except ValueError as e:
        parser.error(str(e))
    sfts = []
    if args.share_sft:
        seeds = sorted({r.point.seed for r in runs})
        sfts = shared_sft(args.config, args.root, seeds, grids.parse_overrides(args.set))
    if args.dry_run:
        for job in [*sfts, *runs]:
            print(shlex.join(job.command))
        return 0
    start = time.monotonic()
    codes = {} if args.compare_only else run_all(runs, sfts, args.jobs, args.root)
    results = grids.collect(runs, with_base=grids.wants_base(args))
    if results:
        paths = write_comparison(args.root, results)
        print(comparison_markdown(results), end="")
        print(f"wrote {paths['markdown']}, {paths['json']}, {paths['plot']}")
    if not args.compare_only:
        print(f"sweep wall time: {time.monotonic() - start:.0f}s")
    failed = sorted(name for name, code in codes.items() if code != 0)
    if failed:
        print(f"failed runs: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
