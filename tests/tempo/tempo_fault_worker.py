"""Runs the `tempo-jax` command line with one injected fault (a subprocess of the tempo tests).

    python tempo_fault_worker.py FAULT train --config=... --workdir=... [--config.x=...]

FAULT (counts are within this process; "" = none):
  kill_after_save:K      SIGKILL once the checkpoint of TTT step K is finalized on disk.
  kill_in_save:J         SIGKILL inside this process's J-th checkpoint save, after every file is
                         written and before Orbax's commit (the save is left unfinished).
  kill_after_s:SECONDS   SIGKILL from a timer started when this process begins its first TTT step.
  kill_in_step:J         SIGKILL in the middle of this process's J-th TTT step (after its
                         rollouts, before its policy update).
  sigterm_in_step:J      SIGTERM to itself in the middle of the J-th step (likewise sigint_in_step).
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def _kill(sig: int = signal.SIGKILL) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), sig)


def install(fault: str) -> None:
    from tempo_jax.tempo import loop, phases
    from tempo_jax.train import checkpointing

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

        loop.Trainer._save = save_then_kill
    elif kind == "kill_in_save":
        target, count = int(arg), [0]
        write_manifest = checkpointing.Checkpointer._write_manifest

        def manifest_then_kill(self):
            count[0] += 1
            if count[0] == target:
                _kill()
            write_manifest(self)

        checkpointing.Checkpointer._write_manifest = manifest_then_kill
    elif kind == "kill_after_s":
        seconds, started = float(arg), []
        train_step = loop.Trainer._train_step

        def timed_step(self, state):
            if not started:
                started.append(threading.Timer(seconds, _kill))
                started[0].daemon = True
                started[0].start()
            return train_step(self, state)

        loop.Trainer._train_step = timed_step
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

        loop.Trainer._train_step = counted_step
        phases.policy_update = update_with_signal
    elif kind:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    fault = sys.argv.pop(1)
    install(fault)
    from tempo_jax import cli

    cli.run()
