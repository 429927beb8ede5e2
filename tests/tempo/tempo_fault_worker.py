"""Runs the `tempo-jax` command line with one injected fault (a subprocess of the tempo tests).

    python tempo_fault_worker.py FAULT train --config=... --workdir=... [--config.x=...]

FAULT (counts are within this process; "" = none; several separated by commas):
  kill_after_save:K      SIGKILL once the checkpoint of TTT step K is finalized on disk.
  kill_in_save:J         SIGKILL inside this process's J-th checkpoint save, after every file is
                         written and before Orbax's commit (the save is left unfinished).
  kill_after_s:SECONDS   SIGKILL from a timer started when this process begins its first TTT step.
  kill_in_step:J         SIGKILL in the middle of this process's J-th TTT step (after its
                         rollouts, before its policy update).
  sigterm_in_step:J      SIGTERM to itself in the middle of the J-th step (likewise sigint_in_step).
  sigterm_at:SCOPE@UNIT  SIGTERM to itself at the phase boundary after journal unit UNIT of SCOPE
                         (`StepJournal.scope`, e.g. "step 2@refine/a0/chunk0", "warm-up step
                         1@warmup/update0"), before the stop check there (likewise sigint_at).
                         Replayed units have no boundary, so it fires once per process.
  sigterm_after_warmup:K SIGTERM to itself once warm-up step K's metrics are written (the stop
                         check between warm-up steps).
  pool_graded            Not a fault: every labeled rollout answers "0+<truth>", a right answer
                         that no cheap check decides, so that grading runs pool tasks.

`install(fault, patch=monkeypatch.setattr)` injects the same faults into the calling process;
`run_cli(fault, workdir, data_dir, changes)` runs this worker on the micro config.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def run_cli(fault: str, workdir, data_dir, changes: dict) -> subprocess.CompletedProcess:
    """`tempo-jax train` on the micro config with `changes` ({dotted field: value}) and `fault`
    injected, in a subprocess; its completed process (stderr captured)."""
    command = [
        sys.executable,
        str(HERE / "tempo_fault_worker.py"),
        fault,
        "train",
        f"--config={HERE / 'tempo_micro.py'}",
        f"--workdir={workdir}",
        f"--config.data.dir={data_dir}",
    ] + [f"--config.{k}={v}" for k, v in changes.items()]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False
    )


def _kill(sig: int = signal.SIGKILL) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), sig)


def install(faults: str, patch=setattr) -> None:
    """Injects `faults`; `patch(owner, name, value)` replaces each attribute (default: for good)."""
    for fault in faults.split(","):
        _install(fault, patch)


def _install(fault: str, patch) -> None:
    import numpy as np

    from tempo_jax.tempo import loop, phases, step_journal
    from tempo_jax.train import checkpointing, metric_writers

    kind, _, arg = fault.partition(":")
    if kind == "kill_after_save":
        target = int(arg)
        save = loop.Trainer._save

        def save_then_kill(self, state, *rest):
            path = save(self, state, *rest)
            if state.step == target:
                self.checkpointer.wait()
                _kill()
            return path

        patch(loop.Trainer, "_save", save_then_kill)
    elif kind == "kill_in_save":
        target, count = int(arg), [0]
        write_manifest = checkpointing.Checkpointer._write_manifest

        def manifest_then_kill(self):
            count[0] += 1
            if count[0] == target:
                _kill()
            write_manifest(self)

        patch(checkpointing.Checkpointer, "_write_manifest", manifest_then_kill)
    elif kind == "kill_after_s":
        seconds, started = float(arg), []
        train_step = loop.Trainer._train_step

        def timed_step(self, state):
            if not started:
                started.append(threading.Timer(seconds, _kill))
                started[0].daemon = True
                started[0].start()
            return train_step(self, state)

        patch(loop.Trainer, "_train_step", timed_step)
    elif kind in ("kill_in_step", "sigterm_in_step", "sigint_in_step"):
        sig = {"kill": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigint": signal.SIGINT}[
            kind.split("_")[0]
        ]
        target, count = int(arg), [0]
        train_step, policy_update = loop.Trainer._train_step, phases.policy_update

        def counted_step(self, state):
            count[0] += 1
            return train_step(self, state)

        def update_with_signal(*args, **kwargs):
            if count[0] == target:
                _kill(sig)
            return policy_update(*args, **kwargs)

        patch(loop.Trainer, "_train_step", counted_step)
        patch(phases, "policy_update", update_with_signal)
    elif kind in ("sigterm_at", "sigint_at"):
        sig = signal.SIGTERM if kind == "sigterm_at" else signal.SIGINT
        scope, _, unit = arg.partition("@")
        boundary = step_journal.StepJournal.boundary

        def boundary_with_signal(self, name):
            if (self.scope, name) == (scope, unit):
                signal.raise_signal(sig)
            return boundary(self, name)

        patch(step_journal.StepJournal, "boundary", boundary_with_signal)
    elif kind == "sigterm_after_warmup":
        target = int(arg)
        write = metric_writers.JsonlWriter.write

        def write_then_signal(self, record):
            write(self, record)
            if record.get("warmup_step") == target:
                signal.raise_signal(signal.SIGTERM)

        patch(metric_writers.JsonlWriter, "write", write_then_signal)
    elif kind == "pool_graded":
        sample = phases.sample

        def boxed_sample(*args, **kwargs):
            rows = sample(*args, **kwargs)
            for i in np.flatnonzero(rows.is_labeled):
                answer = f"0+{rows.ground_truths[i][0]}"
                rows.texts[i], rows.answers[i] = f"so \\boxed{{{answer}}}", answer
            return rows

        patch(phases, "sample", boxed_sample)
    elif kind:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    fault = sys.argv.pop(1)
    install(fault)
    from tempo_jax import cli

    cli.run()
