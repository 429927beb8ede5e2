"""Run tempo-jax on a Cloud TPU pod slice: ship the code, install it, train on every worker.

    python launch/tpu_pod.py --tpu=my-v5p-64 --zone=us-east5-a \\
        --config=configs/qwen3_14b_aime.py:tempo --workdir=/mnt/shared/runs/qwen3_14b_tempo \\
        --env=TEMPO_ROOT=/mnt/shared/tempo [--steps=ship,install,train] [--dry_run]

Steps (each one `gcloud compute tpus tpu-vm ... --worker=all`, so every host runs it):
  ship     `git archive HEAD` (committed code only: the run is reproducible from its commit), copied
           to every worker and unpacked into --repo_dir.
  install  `pip install -e . 'jax[tpu]'` on every worker (the TPU build within setup.py's pins).
  train    `tempo-jax train` on every worker in the background (nohup), one log per host under the
           workdir. JAX finds the other hosts itself (`parallel.distributed.cluster_detection`).

The workdir must be a filesystem every worker sees at the same path (NFS / Filestore, or a
gcsfuse mount): Orbax writes one checkpoint from all hosts and process 0 writes the metrics.
Rerunning the train step after a preemption resumes from the latest checkpoint. `--dry_run`
prints the commands.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

STEPS = ("ship", "install", "train")
ARCHIVE = "/tmp/tempo_jax.tar.gz"
# One resolution for both, so the TPU build stays inside setup.py's tested jax range.
INSTALL = "pip install -e . 'jax[tpu]'"


def shell_path(path: str) -> str:
    """A path quoted for the remote shell, with a leading `~/` still meaning the home directory."""
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def gcloud(args: argparse.Namespace, verb: str, *rest: str) -> list[str]:
    """`gcloud compute tpus tpu-vm VERB ... --worker=all --zone=Z [--project=P]`."""
    cmd = [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        verb,
        *rest,
        "--worker=all",
        f"--zone={args.zone}",
    ]
    if args.project:
        cmd.append(f"--project={args.project}")
    return cmd


def remote(args: argparse.Namespace, script: str) -> list[str]:
    """Runs a shell script on every worker."""
    return gcloud(args, "ssh", args.tpu, f"--command={script}")


def train_script(args: argparse.Namespace) -> str:
    """The per-worker training command, backgrounded with a per-host log."""
    # NAME=value with only the value quoted: a quoted 'NAME=value' would be run as a command.
    env = " ".join(f"{n}={shlex.quote(v)}" for n, v in (e.split("=", 1) for e in args.env))
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
    logs = shlex.quote(f"{args.workdir}/logs")
    return (
        f"mkdir -p {logs} && cd {shell_path(args.repo_dir)} && "
        f'{env + " " if env else ""}nohup {train} < /dev/null > {logs}/"$(hostname)".log 2>&1 &'
    )


def commands(args: argparse.Namespace) -> list[list[str]]:
    """The commands of the requested steps, in order."""
    repo = shell_path(args.repo_dir)
    out: list[list[str]] = []
    if "ship" in args.steps:
        out.append(["git", "archive", "--format=tar.gz", f"--output={ARCHIVE}", "HEAD"])
        out.append(gcloud(args, "scp", ARCHIVE, f"{args.tpu}:{ARCHIVE}"))
        out.append(remote(args, f"mkdir -p {repo} && tar -xzf {ARCHIVE} -C {repo}"))
    if "install" in args.steps:
        out.append(remote(args, f"cd {repo} && {INSTALL}"))
    if "train" in args.steps:
        out.append(remote(args, train_script(args)))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tpu", required=True, help="TPU VM name")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", default="")
    parser.add_argument("--config", required=True, help="configs/X.py[:method], repo-relative")
    parser.add_argument("--workdir", required=True, help="absolute path shared by every worker")
    parser.add_argument("--repo_dir", default="~/tempo_jax", help="checkout on each worker")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set=total_steps=400",
    )
    parser.add_argument("--steps", default=",".join(STEPS), help=f"subset of {','.join(STEPS)}")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(args.steps) - set(STEPS))
    if unknown:
        parser.error(f"--steps: unknown {unknown}; known: {list(STEPS)}")
    if not args.workdir.startswith("/"):
        parser.error(f"--workdir must be an absolute path every worker sees, got {args.workdir!r}")
    bad = [e for e in args.env if "=" not in e or not e.split("=", 1)[0].isidentifier()]
    bad += [s for s in args.set if "=" not in s]
    if bad:
        parser.error(f"expected NAME=VALUE / KEY=VALUE, got {bad}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for cmd in commands(args):
        print(shlex.join(cmd), flush=True)
        if not args.dry_run:
            code = subprocess.run(cmd, check=False).returncode
            if code != 0:
                print(f"failed (exit {code}): {shlex.join(cmd)}", file=sys.stderr)
                return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
