"""An ablation grid as one xmanager experiment: a work unit per point of methods x seeds x
`tempo.recalibrate_every`, then the comparison of `launch/sweep.py`.

    python launch/xm_launch.py --config=configs/tiny_arith.py --root=runs/xm \\
        --methods=tempo,tempo_frozen,ttrl --seeds=0,1 --recalibrate_every=2,4 \\
        [--set=total_steps=32] [--max_parallel=2] [--dry_run]
    python launch/xm_launch.py --executor=tpu --tpu=slice-a,slice-b --zone=us-east5-a \\
        --config=configs/qwen3_8b_aime.py --root=gs://bucket/runs/ablation --methods=tempo,ttrl

xmanager is the optional extra `.[xm]`, in an environment of its own: it pins protobuf below 7,
which would downgrade this project's (README, "Sweeps and pods"). It is imported only to launch.

- A work unit per grid point, named after it (`tempo-r2-s0`); its workdir is ROOT/<name>, from
  the hyperparameters only (never the experiment id), so launching the same grid again resumes
  every unit from its checkpoint (a finished one only rewrites its report).
- `--max_parallel` units run at once (xmanager's local executor would start them all).
- ROOT/xm_experiments.jsonl gets one line per work unit launched: experiment id, work-unit id,
  name, workdir and the unit's command line (xmanager's database does not keep local jobs' args).
- SIGINT / SIGTERM: every running unit's trainer gets SIGTERM (it finishes its step, saves and
  exits), then its whole process group is killed; xmanager's own terminate would end only the
  /bin/sh wrapper and leave the training running. Each unit records its process group itself
  (the `unit` mode of this script, which then becomes the unit's command).
- Executors: `local` (processes on this machine) and `tpu` (a unit runs launch/tpu_pod.py
  --foreground on one free slice of --tpu, which ships, installs, trains and streams the run);
  `vertex` and `kubernetes` refuse a TPU they cannot express, with the reason.
- After the grid, ROOT/comparison.{md,json,png} as for sweep.py (runs differing only in the seed
  are averaged). `--dry_run` prints each unit's command and imports no xmanager.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
EXECUTORS = ("local", "tpu", "vertex", "kubernetes")
RECORD = "xm_experiments.jsonl"
# TPU generations xmanager 0.8.5's Vertex executor can request (cloud/vertex.py maps only these;
# v4, v5e, v5p, v6e raise KeyError there).
VERTEX_TPUS = ("v2", "v3")


def check_executor(executor: str, accelerator: str) -> None:
    """Raises ValueError, saying why, for an executor this launcher cannot run the grid on."""
    if executor in ("local", "tpu"):
        return
    generation = accelerator.split("-", 1)[0].lower()
    if executor == "vertex":
        if accelerator and generation not in VERTEX_TPUS:
            raise ValueError(
                f"--executor=vertex cannot express TPU {accelerator!r}: xmanager's Vertex executor "
                f"knows TPU {'/'.join(VERTEX_TPUS)} only. Use --executor=tpu --tpu=SLICE."
            )
        raise ValueError(
            "--executor=vertex needs the run packaged as a container image, which this launcher "
            "does not build; use --executor=tpu --tpu=SLICE (TPU VMs) or --executor=local."
        )
    if executor == "kubernetes":
        raise ValueError(
            "--executor=kubernetes cannot express a TPU slice: xmanager's Kubernetes executor sets "
            "no TPU topology. Use --executor=tpu --tpu=SLICE."
        )
    raise ValueError(f"--executor: unknown {executor!r}; known: {list(EXECUTORS)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from tempo_jax.experiments import grid

    grid.add_flags(parser)
    parser.add_argument("--max_parallel", type=int, default=1, help="units running at once")
    parser.add_argument("--executor", default="local", choices=EXECUTORS)
    parser.add_argument("--accelerator", default="", help="cloud executors: e.g. v5p-64")
    parser.add_argument("--tpu", default="", help="executor tpu: slices, one unit on each")
    parser.add_argument("--zone", default="")
    parser.add_argument("--project", default="")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--tpu_steps", default="ship,install,train", help="tpu_pod.py --steps")
    parser.add_argument("--python", default=sys.executable, help="interpreter of local units")
    parser.add_argument("--title", default="", help="experiment title (default: from the grid)")
    parser.add_argument("--stop_timeout_s", type=float, default=1800.0, help="save grace period")
    parser.add_argument("--dry_run", action="store_true", help="print the units' commands only")
    args = parser.parse_args(argv)
    try:
        check_executor(args.executor, args.accelerator)
    except ValueError as e:
        parser.error(str(e))
    args.slices = [s.strip() for s in args.tpu.split(",") if s.strip()]
    if args.executor == "tpu" and (not args.slices or not args.zone):
        parser.error("--executor=tpu needs --tpu=SLICE[,SLICE...] and --zone")
    if args.max_parallel < 1:
        parser.error(f"--max_parallel must be >= 1, got {args.max_parallel}")
    return args


def grid_runs(args: argparse.Namespace):
    """The grid's runs (their `command` is the local `tempo-jax train` line)."""
    from tempo_jax.experiments import grid

    return grid.runs_from_flags(
        args, (args.python, "-m", "tempo_jax.cli"), ("--config.progress_bar=False",)
    )


def unit_command(args: argparse.Namespace, run, tpu_slice: str = "") -> list[str]:
    """What a unit runs: the local train command, or tpu_pod.py in the foreground on a slice."""
    if args.executor == "local":
        return list(run.command)
    overrides = [a.removeprefix("--config.") for a in run.command if a.startswith("--config.")]
    command = [
        args.python,
        os.path.join(HERE, "tpu_pod.py"),
        f"--tpu={tpu_slice}",
        f"--zone={args.zone}",
        f"--config={args.config}",
        f"--workdir={run.workdir}",
        "--foreground",
        f"--steps={args.tpu_steps}",
        *(f"--set={o}" for o in overrides if not o.startswith("progress_bar=")),
        *(f"--env={e}" for e in args.env),
    ]
    if args.project:
        command.insert(4, f"--project={args.project}")
    return command


# --------------------------------------------------------------------------- process groups


def unit_main(argv: list[str]) -> None:
    """`xm_launch.py unit PGID_FILE COMMAND...`: leads a new process group, records its id in
    PGID_FILE, then becomes COMMAND (exec), so the launcher can end COMMAND and all it started."""
    pgid_file, command = argv[0], argv[1:]
    os.setpgid(0, 0)
    tmp = f"{pgid_file}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpgid(0)))
    os.replace(tmp, pgid_file)
    os.execvp(command[0], command)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class GroupStopper:
    """Ends the process groups of the units this launcher started: SIGTERM to each group's
    leader (the trainer or tpu_pod.py, which save first), then SIGKILL to what is left."""

    def __init__(self, state_dir: str, timeout_s: float):
        self.state_dir = state_dir
        self.timeout_s = timeout_s
        self.signal_name: str | None = None
        self._signalled: set[int] = set()

    def pgid_file(self, name: str) -> str:
        return os.path.join(self.state_dir, f"{name}.pgid")

    def _groups(self) -> list[int]:
        out = []
        for entry in os.listdir(self.state_dir):
            if entry.endswith(".pgid"):
                with open(os.path.join(self.state_dir, entry)) as f:
                    out.append(int(f.read()))
        return out

    def request(self, signum: int) -> None:
        """The signal handler: from now on every unit's leader gets SIGTERM (see `sweep`)."""
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            print(f"{self.signal_name}: stopping every unit (each saves first)", flush=True)
        self.sweep()

    def sweep(self) -> None:
        """SIGTERM to the leaders not signalled yet (a unit may record its group only after
        the signal came)."""
        if self.signal_name is None:
            return
        for pgid in self._groups():
            if pgid not in self._signalled:
                self._signalled.add(pgid)
                try:
                    os.kill(pgid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def kill_all(self) -> None:
        """Waits up to the timeout for the leaders to exit, then kills every unit's group."""
        groups = self._groups()
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline and any(_pid_alive(g) for g in groups):
            time.sleep(0.2)
        for pgid in groups:
            if _group_alive(pgid):
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --------------------------------------------------------------------------- the experiment


def _record(args: argparse.Namespace, entry: dict) -> None:
    from tempo_jax.train import storage

    storage.append(os.path.join(args.root, RECORD), json.dumps(entry, sort_keys=True) + "\n")


class _Experiment:
    """One launch of the grid as an xmanager experiment."""

    def __init__(self, args: argparse.Namespace, stopper: GroupStopper):
        self.args = args
        self.stopper = stopper
        self.outcomes: dict[str, str] = {}
        parallel = args.max_parallel
        if args.executor == "tpu":
            parallel = min(parallel, len(args.slices))
        self.slots = asyncio.Semaphore(parallel)
        self.free_slices: asyncio.Queue[str] = asyncio.Queue()
        for s in args.slices:
            self.free_slices.put_nowait(s)

    async def run(self, runs) -> dict[str, str]:
        """Launches the units (at most --max_parallel at once); returns {name: outcome}."""
        from xmanager import xm, xm_local

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopper.request, sig)
        title = self.args.title or f"tempo_jax {os.path.basename(self.args.root.rstrip('/'))}"
        sweeper = asyncio.ensure_future(self._sweep_while_running())
        try:
            async with xm_local.create_experiment(experiment_title=title) as experiment:
                spec = xm.binary(path=self.args.python, executor_spec=xm_local.LocalSpec())
                [executable] = experiment.package([spec])
                await asyncio.gather(*(self._unit(experiment, executable, r) for r in runs))
        except (RuntimeError, xm.ExperimentUnitError):
            # xmanager raises again for a failed unit when the experiment closes; it is reported.
            if not any(o.startswith("failed") for o in self.outcomes.values()):
                raise
        finally:
            sweeper.cancel()
        return self.outcomes

    async def _sweep_while_running(self) -> None:
        while True:
            self.stopper.sweep()
            await asyncio.sleep(0.5)

    async def _unit(self, experiment, executable, run) -> None:
        from xmanager import xm, xm_local

        async with self.slots:
            tpu_slice = await self.free_slices.get() if self.args.executor == "tpu" else ""
            try:
                if self.stopper.signal_name is not None:
                    self.outcomes[run.name] = "not started"
                    return
                command = unit_command(self.args, run, tpu_slice)
                wrapper = [os.path.abspath(__file__), "unit", self.stopper.pgid_file(run.name)]
                job = xm.Job(
                    executable, executor=xm_local.Local(), name=run.name, args=wrapper + command
                )
                work_unit = await experiment.add(job, identity=run.name)
                unit_id = work_unit.work_unit_id
                record = {
                    "experiment_id": experiment.experiment_id,
                    "work_unit_id": unit_id,
                    "name": run.name,
                    "workdir": run.workdir,
                    "executor": self.args.executor,
                    "tpu": tpu_slice,
                    "args": command,
                    "time": time.time(),
                }
                _record(self.args, record)
                print(f"[{run.name}] work unit {unit_id}: {shlex.join(command)}", flush=True)
                try:
                    await work_unit.wait_until_complete()
                    self.outcomes[run.name] = "ok"
                except xm.ExperimentUnitError as e:
                    self.outcomes[run.name] = f"failed ({e})"
            finally:
                if tpu_slice:
                    self.free_slices.put_nowait(tpu_slice)


def launch(args: argparse.Namespace, runs) -> int:
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # xmanager reads absl flags; ours are argparse's
    with tempfile.TemporaryDirectory(prefix="xm_launch_") as state_dir:
        stopper = GroupStopper(state_dir, args.stop_timeout_s)
        try:
            outcomes = asyncio.run(_Experiment(args, stopper).run(runs))
        finally:
            stopper.kill_all()
    for name, outcome in outcomes.items():
        print(f"{name}: {outcome}")
    if stopper.signal_name is not None:
        print(f"stopped on {stopper.signal_name}; launch the same command again to resume")
        return 128 + signal.Signals[stopper.signal_name].value
    from tempo_jax.experiments import grid

    compare(args.root, runs, with_base=grid.wants_base(args))
    return 0 if all(o == "ok" for o in outcomes.values()) else 1


def compare(root: str, runs, with_base: bool = False) -> None:
    """ROOT/comparison.{md,json,png} over the units that wrote metrics (as sweep.py)."""
    from tempo_jax.experiments import grid
    from tempo_jax.experiments.compare import comparison_markdown, write_comparison

    results = grid.collect(runs, with_base)
    if results:
        paths = write_comparison(root, results)
        print(comparison_markdown(results), end="")
        print(f"wrote {paths['markdown']}, {paths['json']}, {paths['plot']}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["unit"]:
        unit_main(argv[1:])
    args = parse_args(argv)
    try:
        runs = grid_runs(args)
    except ValueError as e:
        print(f"xm_launch.py: error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for i, run in enumerate(runs):
            tpu_slice = args.slices[i % len(args.slices)] if args.slices else ""
            print(f"{run.name}: {shlex.join(unit_command(args, run, tpu_slice))}")
        return 0
    try:
        import xmanager  # noqa: F401
    except ImportError:
        print(
            "xm_launch.py: error: xmanager is not installed; install the .[xm] extra in its own "
            "environment (README: Sweeps and pods)",
            file=sys.stderr,
        )
        return 2
    return launch(args, runs)


if __name__ == "__main__":
    sys.exit(main())
