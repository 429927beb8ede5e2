"""Stop cleanly on preemption: SIGTERM / SIGINT become a flag the training loop polls.

Single process: signal handlers set the flag. Multi-process: JAX's preemption service (enabled by
default in `jax.distributed`) owns SIGTERM and agrees on one step for all hosts through
`jax.experimental.multihost_utils.reached_preemption_sync_point`, so all of them save the same
step and none is left waiting in a collective.
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
    common step across hosts, so no handlers are installed and `should_stop(step)` asks
    `jax.experimental.multihost_utils.reached_preemption_sync_point(step)`, which every process
    must call at every step. A local flag would let one host leave a collective the others enter.

    Usage::

        with PreemptionGuard() as guard:
            for step in range(start, num_steps):
                state = train_step(state)
                if guard.should_stop(step):
                    path = ckpt.save(step, items, metadata)
                    ckpt.wait()
                    print(guard.exit_message(step, path))
                    break
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)):
        self._signals = tuple(signals)
        self._previous: dict[int, Any] = {}
        self._received: int | None = None
        self._multiprocess = jax.process_count() > 1

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

    def should_stop(self, step: int | None = None) -> bool:
        """True once a stop was requested; multi-process runs must pass the current `step`."""
        if self._received is not None:
            return True
        if self._multiprocess:
            if step is None:
                raise ValueError("should_stop(step) needs the step in multi-process runs")
            return bool(multihost_utils.reached_preemption_sync_point(step))
        return False

    def exit_message(self, step: int, path: str) -> str:
        """The line to print before exiting 0."""
        cause = self.signal_name or "preemption notice"
        return f"Stopped on {cause} after step {step}; checkpoint saved to {path}"
