"""Run tempo-jax on Cloud TPU pod slices: ship the code, install it, train on every worker.

    python launch/tpu_pod.py --tpu=my-v5p-64 --zone=us-east5-a \\
        --config=configs/qwen3_14b_aime.py:tempo --workdir=gs://my-bucket/runs/qwen3_14b_tempo \\
        --env=TEMPO_ROOT=/mnt/disks/tempo [--steps=ship,install,train] [--foreground] [--dry_run]

Steps (each one `gcloud compute tpus tpu-vm ... --worker=all` per slice, so every host runs it):
  ship     `git archive HEAD` (committed code only: the run is reproducible from its commit), copied
           to every worker and unpacked into --repo_dir.
  install  `pip install -e '.[gcs]' 'jax[tpu]'` on every worker (the TPU build within setup.py's
           pins; gcsfs for a bucket workdir).
  train    `tempo-jax train` on every worker, detached from the ssh session (a dropped connection
           does not stop it), one log per host under --log_dir. JAX finds the other hosts itself
           (`parallel.distributed.cluster_detection`).
  stop     SIGTERM to the training on every worker: it finishes its step, saves and exits 0.

`--foreground`: the train step waits for the run, streams every host's log, and exits with the
run's exit code; SIGINT / SIGTERM to this script stop the run (the `stop` step) and wait for it
to save. This is how `launch/xm_launch.py` runs one work unit on a slice.

Several slices (`--tpu=a,b`): one run over all of them (multislice over the data-center network):
every worker gets MEGASCALE_NUM_SLICES / MEGASCALE_SLICE_ID and the coordinator address, worker 0
of the first slice (`--coordinator`, looked up with `gcloud ... describe` when not given).

The workdir is a bucket (`gs://...`) or a filesystem every worker sees at the same path (NFS /
Filestore): Orbax writes one checkpoint from all hosts and process 0 writes the metrics. Rerunning
the train step after a preemption resumes from the latest checkpoint. `--dry_run` prints the
commands.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import signal
import subprocess
import sys
import threading

STEPS = ("ship", "install", "train", "stop")
DEFAULT_STEPS = ("ship", "install", "train")
ARCHIVE = "/tmp/tempo_jax.tar.gz"
# One resolution for both, so the TPU build stays inside setup.py's tested jax range.
INSTALL = "pip install -e '.[gcs]' 'jax[tpu]'"
# Runs the command given as arguments 2.. in the background of this (setsid'd) shell, forwards
# SIGTERM / SIGINT to it (the trainer then saves and exits 0) and writes its exit code to $1.
SUPERVISOR = (
    'rc_file=$1; shift; "$@" & child=$!; trap \'kill -TERM "$child" 2>/dev/null\' TERM INT; '
    'wait "$child"; rc=$?; while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done; '
    'echo "$rc" > "$rc_file"'
)


def shell_path(path: str) -> str:
    """A path quoted for the remote shell, with a leading `~/` still meaning the home directory."""
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def gcloud(args: argparse.Namespace, verb: str, *rest: str, all_workers=True) -> list[str]:
    """`gcloud compute tpus tpu-vm VERB ... [--worker=all] --zone=Z [--project=P]`."""
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, *rest]
    if all_workers:
        cmd.append("--worker=all")
    cmd.append(f"--zone={args.zone}")
    if args.project:
        cmd.append(f"--project={args.project}")
    return cmd


def remote(args: argparse.Namespace, tpu: str, script: str) -> list[str]:
    """Runs a shell script on every worker of slice `tpu`."""
    return gcloud(args, "ssh", tpu, f"--command={script}")


def log_dir(args: argparse.Namespace) -> str:
    """Where each host's log goes: WORKDIR/logs on a shared filesystem; on a bucket (a shell
    cannot append to an object) a directory on each host named after the workdir."""
    if args.log_dir:
        return args.log_dir
    if args.workdir.startswith("/"):
        return f"{args.workdir}/logs"
    digest = hashlib.sha256(args.workdir.encode()).hexdigest()[:8]
    name = args.workdir.rstrip("/").rsplit("/", 1)[-1]
    return f"~/tempo_jax_logs/{name}-{digest}"


def _host_prefix(args: argparse.Namespace) -> str:
    """Shell code setting L to this host's log path prefix (L.log, L.pid, L.rc), then `; `."""
    logs = shell_path(log_dir(args))
    return f'mkdir -p {logs} || exit 1; L={logs}/"$(hostname)"; '


def train_script(args: argparse.Namespace, slice_id: int = 0) -> str:
    """The per-worker training command of slice `slice_id`: started in its own session under
    the supervisor, detached; in foreground mode the script then streams the host's log until
    the run ends and exits with its exit code."""
    env = [e.split("=", 1) for e in args.env]
    if len(args.tpus) > 1:
        env += [
            ("MEGASCALE_COORDINATOR_ADDRESS", args.coordinator),
            ("MEGASCALE_NUM_SLICES", str(len(args.tpus))),
            ("MEGASCALE_SLICE_ID", str(slice_id)),
        ]
    # NAME=value with only the value quoted: a quoted 'NAME=value' would be run as a command.
    env_prefix = "".join(f"{n}={shlex.quote(v)} " for n, v in env)
    train = shlex.join(
        [
            "tempo-jax",
            "train",
            f"--config={args.config}",
            f"--workdir={args.workdir}",
            "--config.parallel.distributed.cluster_detection=True",
            "--config.progress_bar=False",
            *(f"--config.{item}" for item in args.set),
        ]
    )
    script = (
        f"{_host_prefix(args)}cd {shell_path(args.repo_dir)} || exit 1; "
        f'rm -f "$L.rc"; : > "$L.log"; '
        f'{env_prefix}nohup setsid bash -c {shlex.quote(SUPERVISOR)} supervisor "$L.rc" '
        f'{train} < /dev/null >> "$L.log" 2>&1 & echo $! > "$L.pid"'
    )
    if args.foreground:
        script += (
            '; tail -n +1 --pid="$(cat "$L.pid")" -f "$L.log"; '
            'exit "$(cat "$L.rc" 2>/dev/null || echo 255)"'
        )
    return script


def stop_script(args: argparse.Namespace) -> str:
    """SIGTERM to the supervisor of this host's run (it forwards it to the trainer)."""
    return f'{_host_prefix(args)}kill -TERM "$(cat "$L.pid")" 2>/dev/null || true'


def coordinator_command(args: argparse.Namespace) -> list[str]:
    """Prints the internal IP of worker 0 of the first slice (the multislice coordinator)."""
    fmt = "--format=value(networkEndpoints[0].ipAddress)"
    return gcloud(args, "describe", args.tpus[0], fmt, all_workers=False)


def stages(args: argparse.Namespace) -> list[tuple[str, list[list[str]]]]:
    """The requested steps as (step, commands) stages, run one after another; the commands of
    a stage run at the same time (one per slice: every slice must start its part of a
    multislice run together)."""
    repo = shell_path(args.repo_dir)
    out: list[tuple[str, list[list[str]]]] = []
    if "ship" in args.steps:
        out.append(("ship", [["git", "archive", "--format=tar.gz", f"--output={ARCHIVE}", "HEAD"]]))
        out.append(("ship", [gcloud(args, "scp", ARCHIVE, f"{t}:{ARCHIVE}") for t in args.tpus]))
        unpack = f"mkdir -p {repo} && tar -xzf {ARCHIVE} -C {repo}"
        out.append(("ship", [remote(args, tpu, unpack) for tpu in args.tpus]))
    if "install" in args.steps:
        out.append(("install", [remote(args, t, f"cd {repo} && {INSTALL}") for t in args.tpus]))
    if "train" in args.steps:
        train = [remote(args, tpu, train_script(args, i)) for i, tpu in enumerate(args.tpus)]
        out.append(("train", train))
    if "stop" in args.steps:
        out.append(("stop", [remote(args, tpu, stop_script(args)) for tpu in args.tpus]))
    return out


def commands(args: argparse.Namespace) -> list[list[str]]:
    """Every command, in order (the stages flattened)."""
    return [cmd for _, stage in stages(args) for cmd in stage]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tpu", required=True, help="TPU VM name; several: a multislice run")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", default="")
    parser.add_argument("--config", required=True, help="configs/X.py[:method], repo-relative")
    parser.add_argument("--workdir", required=True, help="gs://... or a path every worker sees")
    parser.add_argument("--repo_dir", default="~/tempo_jax", help="checkout on each worker")
    parser.add_argument("--log_dir", default="", help="per-host logs (default: see log_dir())")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set=total_steps=400",
    )
    parser.add_argument("--steps", default=",".join(DEFAULT_STEPS), help=f"of {','.join(STEPS)}")
    parser.add_argument("--foreground", action="store_true", help="wait for the run, stream logs")
    parser.add_argument("--coordinator", default="", help="multislice: worker 0 of slice 0 (IP)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    args.tpus = [t.strip() for t in args.tpu.split(",") if t.strip()]
    if not args.tpus or len(set(args.tpus)) != len(args.tpus):
        parser.error(f"--tpu: one or more distinct slice names, got {args.tpu!r}")
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(args.steps) - set(STEPS))
    if unknown:
        parser.error(f"--steps: unknown {unknown}; known: {list(STEPS)}")
    if not (args.workdir.startswith("/") or args.workdir.startswith("gs://")):
        parser.error(
            f"--workdir must be gs://... or an absolute path all workers see, got {args.workdir!r}"
        )
    bad = [e for e in args.env if "=" not in e or not e.split("=", 1)[0].isidentifier()]
    bad += [s for s in args.set if "=" not in s]
    if bad:
        parser.error(f"expected NAME=VALUE / KEY=VALUE, got {bad}")
    return args


def _stream(process: subprocess.Popen, prefix: str) -> None:
    for line in process.stdout:
        sys.stdout.write(prefix + line)
        sys.stdout.flush()


def run_stage(stage: list[list[str]], prefixes: list[str], on_signal=None) -> int:
    """Runs the commands of a stage at once, streaming their output (prefixed when several);
    returns the first non-zero exit code (0 if all succeed). `on_signal`, if given, is called
    once on SIGINT / SIGTERM, and the stage is still waited for."""
    stop_requested = threading.Event()

    def handler(signum, frame):
        del frame
        if not stop_requested.is_set():
            stop_requested.set()
            print(f"{signal.Signals(signum).name}: stopping the run", file=sys.stderr, flush=True)
            on_signal()

    previous = {}
    if on_signal is not None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    try:
        processes = [
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for cmd in stage
        ]
        threads = [
            threading.Thread(target=_stream, args=(p, prefix), daemon=True)
            for p, prefix in zip(processes, prefixes, strict=True)
        ]
        for t in threads:
            t.start()
        codes = [p.wait() for p in processes]
        for t in threads:
            t.join()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return next((c for c in codes if c != 0), 0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if len(args.tpus) > 1 and "train" in args.steps and not args.coordinator:
        lookup = coordinator_command(args)
        print(shlex.join(lookup), flush=True)
        if args.dry_run:
            args.coordinator = f"<worker 0 of {args.tpus[0]}>"
        else:
            args.coordinator = subprocess.run(
                lookup, check=True, capture_output=True, text=True
            ).stdout.strip()
    stop = [remote(args, tpu, stop_script(args)) for tpu in args.tpus]
    for step, stage in stages(args):
        for cmd in stage:
            print(shlex.join(cmd), flush=True)
        if args.dry_run:
            continue
        on_signal = None
        if step == "train" and args.foreground:
            on_signal = lambda: [subprocess.run(cmd, check=False) for cmd in stop]
        prefixes = [f"[{tpu}] " for tpu in args.tpus] if len(stage) > 1 else [""]
        code = run_stage(stage, prefixes, on_signal)
        if code != 0:
            print(f"failed (exit {code}): {shlex.join(stage[0])}", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
