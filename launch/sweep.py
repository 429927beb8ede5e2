"""Ablation sweeps: one config, several methods x seeds, then compared.

    python launch/sweep.py --config=configs/tiny_repro.py --root=runs/repro \\
        --methods=base,oracle,tempo,tempo_frozen,ttrl,empo,intuitor \\
        --variants=tempo:tempo.recalibrate_every=1,2,4,8 --seeds=0,1,2 --jobs=2 --share_sft

Each run is `tempo-jax train --config=CONFIG --workdir=ROOT/<label>-s<seed> --config.method=...
--config.seed=... [--config.KEY=VALUE ...]` in its own process, so one failing run does not stop
the others (its log is ROOT/<run>/sweep.log), and rerunning a killed sweep resumes it: every run
restores its latest checkpoint (a finished one only rewrites its report). At the end (and with
`--compare_only`) ROOT/comparison.{md,json,png} hold the per-method means over seeds, the
differences to `base` paired by seed, and the critic's D_U AUROC over steps.

Methods:
  - a registry method (`tempo`, `ttrl`, ..., `oracle`);
  - `base`: the initial policy, no training. It costs nothing: every run of a seed starts from
    the same policy and evaluates it at step 0 with the same samples, so base is read from the
    step-0 evaluation of the seed's runs (`tempo_jax.tempo.compare.base_runs`);
  - a variant `METHOD:KEY=V1,V2,...` (`--variants`): one labelled run per value, e.g.
    `tempo:tempo.recalibrate_every=1,2` gives `tempo-recalibrate_every=1` and `...=2`.

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
import itertools
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time

from tempo_jax.tempo.compare import BASE, base_runs, comparison_markdown, write_comparison
from tempo_jax.tempo.methods import METHODS
from tempo_jax.train.metric_writers import read_jsonl

# Overrides that change what SFT produces: a run with one of them cannot share a seed's SFT.
SFT_FIELDS = ("sft.", "model.", "data.", "tokenizer.", "seed")


@dataclasses.dataclass(frozen=True)
class SweepRun:
    """One process of the grid (a training run, or a seed's shared SFT when `method` is '')."""

    method: str
    label: str
    seed: int
    workdir: str
    command: tuple[str, ...]
    sft_from: str = ""  # a seed's SFT workdir whose sft/ is copied in before the run starts

    @property
    def name(self) -> str:
        return os.path.basename(self.workdir)


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A method with run-specific overrides, under a label."""

    method: str
    label: str
    overrides: tuple[tuple[str, str], ...] = ()


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


def parse_variants(items: list[str]) -> list[MethodSpec]:
    """`METHOD:KEY=V1,V2,...` -> one MethodSpec per value, labelled `METHOD-<last key>=V`."""
    out = []
    for item in items:
        method, sep, assignment = item.partition(":")
        key, eq, values = assignment.partition("=")
        if not sep or not eq or not key or not values:
            raise ValueError(f"--variants expects METHOD:KEY=V1,V2,..., got {item!r}")
        [(key, value_list)] = parse_overrides([f"{key}={values}"])
        short = key.rsplit(".", 1)[-1]
        for value in value_list.split(","):
            out.append(MethodSpec(method, f"{method}-{short}={value}", ((key, value),)))
    return out


def grid(
    config: str,
    root: str,
    methods: list[str] | list[MethodSpec],
    seeds: list[int],
    overrides: list[tuple[str, str]],
    executable: tuple[str, ...] = (sys.executable, "-m", "tempo_jax.cli"),
    share_sft: bool = False,
) -> list[SweepRun]:
    """The runs of methods x seeds in method-major order (`base` has no run of its own), after
    one SFT run per seed when `share_sft`."""
    specs = [m if isinstance(m, MethodSpec) else MethodSpec(m, m) for m in methods]
    unknown = [s.method for s in specs if s.method not in METHODS and s.method != BASE]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; known: {sorted(METHODS)} and {BASE!r}")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels) or len(set(seeds)) != len(seeds):
        raise ValueError("--methods and --seeds must not repeat a value")
    trained = [s for s in specs if s.method != BASE]
    if not trained:
        raise ValueError(f"--methods: {BASE!r} is read from the trained runs' step 0; add one")
    if share_sft:
        for spec in trained:
            bad = [k for k, _ in spec.overrides if k.startswith(SFT_FIELDS)]
            if bad:
                raise ValueError(f"--share_sft: variant {spec.label} changes the SFT ({bad})")
    config_args = (f"--config={config}",)
    extra = tuple(f"--config.{k}={v}" for k, v in overrides)
    runs = []
    if share_sft:
        for seed in seeds:
            workdir = os.path.join(root, f"sft-s{seed}")
            command = (
                *executable,
                "sft",
                *config_args,
                f"--workdir={workdir}",
                f"--config.seed={seed}",
                *extra,
            )
            runs.append(SweepRun("", "sft", seed, workdir, command))
    for spec, seed in itertools.product(trained, seeds):
        workdir = os.path.join(root, f"{spec.label}-s{seed}")
        command = (
            *executable,
            "train",
            *config_args,
            f"--workdir={workdir}",
            f"--config.method={spec.method}",
            f"--config.seed={seed}",
            *extra,
            *(f"--config.{k}={v}" for k, v in spec.overrides),
        )
        sft_from = os.path.join(root, f"sft-s{seed}") if share_sft else ""
        runs.append(SweepRun(spec.method, spec.label, seed, workdir, command, sft_from))
    return runs


def _copy_sft(run: SweepRun) -> None:
    """Copies the seed's shared sft/ into a run's workdir unless it has one (or checkpoints)."""
    target = os.path.join(run.workdir, "sft")
    started = os.path.isdir(os.path.join(run.workdir, "checkpoints"))
    if run.sft_from and not os.path.isdir(target) and not started:
        shutil.copytree(os.path.join(run.sft_from, "sft"), target)


def _pinning(jobs: int):
    """A function giving slot i's CPU set (one CPU each, round robin), or None for one job."""
    if jobs <= 1 or not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return lambda slot: {cpus[slot % len(cpus)]}


def _child_env(root: str) -> dict[str, str]:
    """The children's environment: a persistent compilation cache shared by every run of the
    sweep (ROOT/jax_cache unless JAX_COMPILATION_CACHE_DIR is set), since all runs compile the
    same shapes; each run otherwise spends its first step compiling."""
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(root, "jax_cache"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    return env


def run_all(runs: list[SweepRun], jobs: int = 1) -> dict[str, int]:
    """Runs each run in a subprocess (output appended to WORKDIR/sweep.log), `jobs` at a time,
    every seed's SFT before the runs that copy it; returns `{name: exit code}`. A finished run
    restores its last checkpoint and only rewrites its report; an interrupted one (or one given
    more steps) continues from its checkpoint."""
    codes: dict[str, int] = {}
    pin = _pinning(jobs)
    env = _child_env(os.path.dirname(os.path.abspath(runs[0].workdir)) if runs else ".")
    free_slots = list(range(max(jobs, 1)))
    lock = threading.Lock()
    total = len(runs)

    def one(index: int, run: SweepRun) -> None:
        with lock:
            slot = free_slots.pop(0)
        try:
            os.makedirs(run.workdir, exist_ok=True)
            if run.sft_from and codes.get(os.path.basename(run.sft_from), 0) != 0:
                codes[run.name] = -1
                print(f"[{index}/{total}] {run.name}: SKIPPED (its SFT failed)", flush=True)
                return
            _copy_sft(run)
            start = time.monotonic()
            print(f"[{index}/{total}] {run.name}: {shlex.join(run.command)}", flush=True)
            preexec = (lambda s=slot: os.sched_setaffinity(0, pin(s))) if pin else None
            with open(os.path.join(run.workdir, "sweep.log"), "a", encoding="utf-8") as log:
                code = subprocess.run(
                    run.command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    check=False,
                    preexec_fn=preexec,
                    env=env,
                ).returncode
            codes[run.name] = code
            status = "ok" if code == 0 else f"FAILED (exit {code}, see log)"
            print(f"[{index}/{total}] {run.name}: {status} in {time.monotonic() - start:.0f}s")
        finally:
            with lock:
                free_slots.append(slot)

    # Every SFT is queued first; a run waits only for its own seed's SFT, and runs go seed by
    # seed, so the first seeds' runs use the CPUs while the last SFT is still going.
    sft_done = {r.seed: threading.Event() for r in runs if not r.method}
    order = [r for r in runs if not r.method] + sorted(
        (r for r in runs if r.method), key=lambda r: r.seed
    )
    index = {r.name: i for i, r in enumerate(runs, 1)}

    def task(run: SweepRun) -> None:
        if run.sft_from:
            sft_done[run.seed].wait()
        try:
            one(index[run.name], run)
        finally:
            if not run.method:
                sft_done[run.seed].set()

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        for future in [pool.submit(task, r) for r in order]:
            future.result()
    return codes


def collect(runs: list[SweepRun], with_base: bool) -> dict[str, tuple[str, list[dict]]]:
    """`{name: (label, records)}` of the trained runs that wrote metrics, plus `base-s<seed>`
    rows (the step-0 evaluations) when `with_base`."""
    out = {}
    for run in runs:
        path = os.path.join(run.workdir, "metrics.jsonl")
        if run.method and os.path.exists(path):
            out[run.name] = (run.label, read_jsonl(path))
    if with_base:
        out = {**base_runs(out), **out}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="config file (configs/X.py[:arg])")
    parser.add_argument("--root", required=True, help="directory holding one workdir per run")
    parser.add_argument("--methods", default="tempo,tempo_frozen,ttrl,empo,intuitor,rlvr")
    parser.add_argument("--variants", action="append", default=[], metavar="METHOD:KEY=V1,V2")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each on one CPU)")
    parser.add_argument("--share_sft", action="store_true", help="one SFT per seed, copied")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    parser.add_argument("--compare_only", action="store_true", help="only write the comparison")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        methods: list = [m.strip() for m in args.methods.split(",") if m.strip()]
        methods += parse_variants(args.variants)
        runs = grid(
            args.config,
            args.root,
            methods,
            seeds,
            parse_overrides(args.set),
            share_sft=args.share_sft,
        )
        if args.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    except ValueError as e:
        parser.error(str(e))
    if args.dry_run:
        for run in runs:
            print(shlex.join(run.command))
        return 0
    start = time.monotonic()
    codes = {} if args.compare_only else run_all(runs, args.jobs)
    results = collect(runs, with_base=BASE in methods)
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
