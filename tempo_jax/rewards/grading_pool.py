"""A persistent pool of grading worker processes with per-task wall-clock and memory limits.

Every expensive check (the parser, sympy, math-verify) runs in a worker process whose address space
is capped with RLIMIT_AS. Each task has a wall-clock deadline: a worker that misses it is killed
(SIGKILL) and replaced, a worker that dies is replaced, and the task's outcome says which happened,
so a pathological answer (`9^{9^{9^{9}}}`, a 100 kB string) costs at most one timeout and the pool
keeps serving. math-verify's own timeouts use signal.alarm and are switched off in the workers.

Workers are plain subprocesses (`python -m tempo_jax.rewards.grading_worker`) talking JSON lines
over pipes: multiprocessing's spawn / forkserver would re-run the caller's `__main__` in each child,
and forking a process that holds JAX threads is unsafe. A worker imports sympy and math-verify
once (about a second of one core), so the pool is meant to live for a whole run
(`with GradingPool() as pool:` or `close()`); a replacement starts in the background while the
other workers keep grading.
"""

import collections
import dataclasses
import json
import os
import pathlib
import selectors
import signal
import subprocess
import sys
import threading
import time
import weakref
from typing import Any, Self

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MEMORY_LIMIT_MB = 1024
# A worker that does not finish importing in this long is a broken environment, not an answer.
_STARTUP_TIMEOUT_S = 120.0
_MAX_STARTUP_FAILURES = 3
# The directory holding the `tempo_jax` package: the workers' cwd and first PYTHONPATH entry, so
# they import this very copy whatever the caller's working directory holds.
_PACKAGE_ROOT = str(pathlib.Path(__file__).resolve().parents[2])


@dataclasses.dataclass
class GradingCounters:
    """Counts of how graded items were decided (per batch, or cumulative on a pool).

    Attributes:
      items: items (responses or answer pairs) asked about.
      fast_path: items decided in-process by cheap checks, without a worker.
      no_box: responses without a (well-formed) final box: wrong without a worker.
      too_long: answers over the parser size limits, compared as strings only.
      pool_tasks: tasks sent to workers.
      timeouts: tasks whose worker missed the deadline and was killed (item counted wrong).
      crashes: tasks whose worker died (item counted wrong).
      errors: tasks that raised inside the worker (item counted wrong).
      memory_errors: tasks that hit the worker memory limit (item counted wrong).
    """

    items: int = 0
    fast_path: int = 0
    no_box: int = 0
    too_long: int = 0
    pool_tasks: int = 0
    timeouts: int = 0
    crashes: int = 0
    errors: int = 0
    memory_errors: int = 0

    def add(self, other: "GradingCounters") -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


# GradingCounters fields that count items decided without a worker (the rest count pool tasks).
DECIDED_FIELDS = ("items", "fast_path", "no_box", "too_long")


@dataclasses.dataclass(frozen=True)
class TaskOutcome:
    """What became of one task: status "ok" (then `result` holds the value), "timeout",
    "crash", "error" or "memory"."""

    status: str
    result: Any = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class _Worker:
    """One worker subprocess and the parent's view of it."""

    def __init__(self, memory_limit_mb: int | None, enable_test_hooks: bool):
        command = [sys.executable, "-m", "tempo_jax.rewards.grading_worker"]
        command += ["--memory-mb", str(memory_limit_mb or 0)]
        if enable_test_hooks:
            command.append("--enable-test-hooks")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p
        )
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=_PACKAGE_ROOT
        )
        self.pid = self.process.pid
        self.out_fd = self.process.stdout.fileno()
        self.buffer = b""
        self.eof = False
        self.ready = False
        self.started_at = time.monotonic()
        self.task: int | None = None
        self.message_id = -1
        self.deadline = 0.0

    def send(self, message: dict) -> bool:
        """Writes one task line; False if the worker is gone."""
        try:
            # Buffered write + flush: a raw pipe write may be partial for long lines.
            self.process.stdin.write(json.dumps(message).encode() + b"\n")
            self.process.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def read_messages(self) -> list[dict]:
        """Messages available now (call when the stdout fd is readable); sets `eof` at death."""
        try:
            chunk = os.read(self.out_fd, 1 << 16)
        except OSError:
            chunk = b""
        if not chunk:
            self.eof = True
            return []
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        messages = []
        for line in lines:
            try:
                messages.append(json.loads(line))
            except ValueError:
                continue  # not ours; the worker redirects stray prints, so this is rare
        return messages

    def kill(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass


def _shutdown(workers: list[_Worker]) -> None:
    for worker in workers:
        try:
            worker.process.stdin.close()  # EOF: the worker exits on its own
        except OSError:
            pass
    deadline = time.monotonic() + 1.0
    for worker in workers:
        try:
            worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        worker.kill()


class GradingPool:
    """Persistent worker processes that run grading tasks under time and memory limits.

    Args:
      num_workers: worker processes; default min(4, CPU count).
      timeout_s: wall-clock limit per task, in seconds (a task's clock starts when a ready worker
        receives it; start-up of a worker is not charged to any task).
      memory_limit_mb: address-space limit per worker (RLIMIT_AS), MiB; None for no limit.
      enable_test_hooks: accept the fault-injection task kinds of grading_worker (tests only).
    """

    def __init__(
        self,
        num_workers: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        memory_limit_mb: int | None = DEFAULT_MEMORY_LIMIT_MB,
        enable_test_hooks: bool = False,
    ):
        if num_workers is None:
            num_workers = min(4, os.cpu_count() or 1)
        if num_workers < 1:
            raise ValueError(f"GradingPool: num_workers must be >= 1, got {num_workers}")
        if timeout_s <= 0:
            raise ValueError(f"GradingPool: timeout_s must be > 0, got {timeout_s}")
        self.num_workers = num_workers
        self.timeout_s = float(timeout_s)
        self.memory_limit_mb = memory_limit_mb
        self.enable_test_hooks = enable_test_hooks
        self.counters = GradingCounters()
        self.restarts = 0
        self._startup_failures = 0
        self._lock = threading.Lock()
        self._next_id = 0
        self._workers = [self._new_worker() for _ in range(num_workers)]
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)

    def _new_worker(self) -> _Worker:
        return _Worker(self.memory_limit_mb, self.enable_test_hooks)

    def _replace(self, index: int) -> None:
        self._workers[index].kill()
        self._workers[index] = self._new_worker()
        self.restarts += 1

    def _replace_dead_idle_workers(self) -> None:
        """Replaces idle workers that died between tasks (OOM killer, a stray signal)."""
        for index, worker in enumerate(self._workers):
            if worker.task is None and worker.process.poll() is not None:
                self._replace(index)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (for monitoring and fault-injection tests)."""
        return [w.pid for w in self._workers]

    def close(self) -> None:
        """Stops the workers (idempotent)."""
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def wait_ready(self) -> None:
        """Blocks until every worker has finished its imports (tests use it to time tasks only)."""
        with self._lock:
            self._run_locked([], self.timeout_s, wait_for_ready=True)

    def count_decided(self, counters: GradingCounters) -> None:
        """Adds the items a caller decided around the pool (`items`, `fast_path`, `no_box`,
        `too_long` of `counters`; its task counts were added by `run_tasks`), so that `counters`
        is the pool's whole grading history."""
        with self._lock:
            for name in DECIDED_FIELDS:
                setattr(self.counters, name, getattr(self.counters, name) + getattr(counters, name))

    def run_tasks(
        self, tasks: list[tuple[str, Any]], timeout_s: float | None = None
    ) -> tuple[list[TaskOutcome], GradingCounters]:
        """Runs `(kind, payload)` tasks on the workers; kinds are grading_worker.TASK_KINDS.

        Returns:
          (outcomes in task order, counters of this call). A task that timed out, crashed its
          worker, raised or ran out of memory has a non-ok outcome; the pool stays usable.
        """
        if self.closed:
            raise RuntimeError("GradingPool is closed")
        limit = self.timeout_s if timeout_s is None else float(timeout_s)
        with self._lock:
            self._replace_dead_idle_workers()
            outcomes, counters = self._run_locked(tasks, limit)
            self._replace_dead_idle_workers()
        self.counters.add(counters)
        return outcomes, counters

    def _run_locked(
        self, tasks: list[tuple[str, Any]], limit: float, wait_for_ready: bool = False
    ) -> tuple[list[TaskOutcome], GradingCounters]:
        counters = GradingCounters(pool_tasks=len(tasks))
        outcomes: list[TaskOutcome | None] = [None] * len(tasks)
        pending = collections.deque(range(len(tasks)))
        remaining = len(tasks)
        status_counter = {
            "timeout": "timeouts",
            "crash": "crashes",
            "error": "errors",
            "memory": "memory_errors",
        }

        def finish(worker: _Worker, outcome: TaskOutcome) -> None:
            nonlocal remaining
            outcomes[worker.task] = outcome
            worker.task = None
            remaining -= 1
            if outcome.status in status_counter:
                name = status_counter[outcome.status]
                setattr(counters, name, getattr(counters, name) + 1)

        while remaining or (wait_for_ready and not all(w.ready for w in self._workers)):
            now = time.monotonic()
            for index, worker in enumerate(self._workers):
                if worker.ready and worker.task is None and pending:
                    task_index = pending.popleft()
                    kind, payload = tasks[task_index]
                    self._next_id += 1
                    if not worker.send({"id": self._next_id, "kind": kind, "payload": payload}):
                        # Died while idle: not this task's fault; retry it on a fresh worker.
                        pending.appendleft(task_index)
                        self._replace(index)
                        continue
                    worker.task = task_index
                    worker.message_id = self._next_id
                    worker.deadline = now + limit
            deadlines = [w.deadline for w in self._workers if w.task is not None]
            deadlines += [w.started_at + _STARTUP_TIMEOUT_S for w in self._workers if not w.ready]
            wait_s = max(0.0, min(deadlines) - now) if deadlines else None
            with selectors.DefaultSelector() as selector:
                for index, worker in enumerate(self._workers):
                    selector.register(worker.out_fd, selectors.EVENT_READ, index)
                readable = {key.data for key, _ in selector.select(timeout=wait_s)}
            now = time.monotonic()
            for index in range(len(self._workers)):
                worker = self._workers[index]
                if index in readable:
                    for message in worker.read_messages():
                        if "ready" in message:
                            worker.ready = True
                            self._startup_failures = 0
                        elif worker.task is not None and message.get("id") == worker.message_id:
                            finish(worker, TaskOutcome(message["status"], message["result"]))
                    if worker.eof:
                        if worker.task is not None:
                            finish(worker, TaskOutcome("crash"))
                        elif not worker.ready:
                            # One death in start-up may be a stray signal; a run of them is a
                            # broken environment, and restarting forever would hide it.
                            self._startup_failures += 1
                            if self._startup_failures > _MAX_STARTUP_FAILURES:
                                raise RuntimeError(
                                    "grading workers keep dying during start-up (last exit "
                                    f"code {worker.process.wait()}); check that `python -m "
                                    "tempo_jax.rewards.grading_worker` runs in this environment"
                                )
                        self._replace(index)
                elif worker.task is not None and now >= worker.deadline:
                    finish(worker, TaskOutcome("timeout"))
                    self._replace(index)
                elif not worker.ready and now >= worker.started_at + _STARTUP_TIMEOUT_S:
                    raise RuntimeError(f"grading worker not ready after {_STARTUP_TIMEOUT_S:.0f} s")
        return outcomes, counters  # type: ignore[return-value]


_shared: GradingPool | None = None
_shared_lock = threading.Lock()


def shared_pool(num_workers: int | None = None) -> GradingPool:
    """The process-wide pool used by callers that pass none; started on first use.

    Lives until interpreter exit. Asking for a different `num_workers` replaces it. Training code
    that wants explicit control builds its own `GradingPool` and passes it along instead.
    """
    global _shared
    with _shared_lock:
        if _shared is not None and (
            _shared.closed or (num_workers is not None and _shared.num_workers != num_workers)
        ):
            _shared.close()
            _shared = None
        if _shared is None:
            _shared = GradingPool(num_workers=num_workers)
        return _shared
