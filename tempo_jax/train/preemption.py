"""Stop cleanly on preemption: SIGTERM / SIGINT become a flag the training loop polls at every
stop point (between steps, and inside a step at each phase boundary: see
`tempo_jax.tempo.step_journal`).

Single process: signal handlers set the flag. Multi-process: JAX's preemption service (enabled by
default in `jax.distributed`) owns SIGTERM and agrees on one stop point for all hosts through
`jax.experimental.multihost_utils.reached_preemption_sync_point`, so all of them save at the
same point and none is left waiting in a collective.

The sync point protocol: when a notice arrives, every host reports the id of its last call, and
the sync point is max + 1; a host stops when it calls with exactly that id. So the ids must be
consecutive, in the same sequence on every host, and have a single caller: the guard numbers
its own checks 1, 2, 3, ... (every host makes the same checks in the same order), and Orbax,
which would also call it with checkpoint steps as ids, is answered by `agreed` instead (see
`tempo_jax.train.checkpointing.Checkpointer(preempted=...)`).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable
from typing import Any, Self

import jax
from jax.experimental import multihost_utils

logger = logging.getLogger(__name__)


class PreemptionGuard:
    """Turns SIGTERM / SIGINT into a flag so the loop can finish its step, save and exit 0.

    Single process: installs handlers for `signals` on `__enter__` and restores the previous ones
    on `__exit__`. A second SIGINT raises KeyboardInterrupt (an impatient Ctrl-C still works).

    Multi-process (jax.process_count() > 1): JAX's preemption service owns SIGTERM and agrees on a
    common stop point across hosts, so no handlers are installed and every `should_stop()` call
    asks `jax.experimental.multihost_utils.reached_preemption_sync_point` with the number of
    this call (see the module docstring), so every process must make the same calls. A local flag
    would let one host leave a collective the others enter.

    Usage::

        with PreemptionGuard() as guard:
            for step in range(start, num_steps):
                state = train_step(state)
                if guard.should_stop():
                    path = ckpt.save(step, items, metadata)
                    ckpt.wait()
                    print(guard.exit_message(f"after step {step}", path))
                    break
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)):
        self._signals = tuple(signals)
        self._previous: dict[int, Any] = {}
        self._received: int | None = None
        self._multiprocess = jax.process_count() > 1
        self._checks = 0
        self._agreed = False

    def __enter__(self) -> Self:
        if self._multiprocess:
            if not jax.config.jax_enable_preemption_service:
                raise RuntimeError(
                    "multi-process runs rely on JAX's preemption service for a common stop step, "
                    "but jax_enable_preemption_service is False"
                )
            return self
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionGuard must be entered on the main thread")
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if self._received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._received = signum
        logger.warning(
            "received %s: finishing the current step, then saving a checkpoint and exiting",
            signal.Signals(signum).name,
        )

    @property
    def signal_name(self) -> str | None:
        """Name of the signal received ("SIGTERM"), or None."""
        return None if self._received is None else signal.Signals(self._received).name

    def should_stop(self) -> bool:
        """A stop point: True once a stop was requested (single process) or all processes reached
        the agreed point (multi-process); stays True after."""
        if not self._agreed:
            self._checks += 1
            if self._received is not None:
                self._agreed = True
            elif self._multiprocess:
                self._agreed = bool(multihost_utils.reached_preemption_sync_point(self._checks))
        return self._agreed

    def agreed(self) -> bool:
        """Whether a `should_stop()` call returned True: the run is saving to stop (asks no one)."""
        return self._agreed

    def exit_message(self, where: str, path: str) -> str:
        """The line to print before exiting 0; `where` says where the run stopped ("after step
        3", "in step 4 after policy/update0")."""
        cause = self.signal_name or "preemption notice"
        return f"Stopped on {cause} {where}; checkpoint saved to {path}"
