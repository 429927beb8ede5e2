"""One grading worker process: `python -m tempo_jax.rewards.grading_worker [--memory-mb N]`.

Started by grading_pool.GradingPool as a plain subprocess (not multiprocessing: spawn/forkserver
re-import the user's `__main__` in every child, and forking a JAX process is unsafe).

Protocol: one JSON object per line (never pickle: the payload is model text).
  worker -> parent  {"ready": pid}                              once, after the heavy imports
  parent -> worker  {"id": int, "kind": str, "payload": ...}    one task at a time
  worker -> parent  {"id": int, "status": "ok"|"error"|"memory", "result": ...}
The worker exits when its stdin closes.
"""

import argparse
import json
import os
import resource
import signal
import sys
import time

TASK_KINDS = ("grade", "equiv")
# Fault injection for tests; refused unless the worker was started with --enable-test-hooks.
TEST_HOOK_KINDS = ("_exit", "_sleep", "_alloc")


def _limit_memory(memory_limit_mb: int) -> None:
    if memory_limit_mb <= 0:
        return
    limit = memory_limit_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def run_task(kind: str, payload, enable_test_hooks: bool = False):
    """Runs one task in this process (no limits here: the pool enforces them from outside)."""
    from tempo_jax.rewards import equivalence

    if kind == "grade":
        answer = payload["answer"]
        return [equivalence.answer_matches(answer, truth) for truth in payload["truths"]]
    if kind == "equiv":
        a, b = payload
        return equivalence.answers_equivalent(a, b)
    if kind in TEST_HOOK_KINDS and enable_test_hooks:
        if kind == "_exit":
            os._exit(3)
        if kind == "_sleep":
            time.sleep(float(payload))
            return True
        if kind == "_alloc":
            block = bytearray(int(payload) * 1024 * 1024)
            return len(block)
    raise ValueError(f"unknown grading task kind {kind!r}")


def serve(memory_limit_mb: int, enable_test_hooks: bool) -> None:
    """Reads tasks from stdin and answers on the original stdout until stdin closes."""
    # Ctrl-C belongs to the parent, which stops workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The protocol owns the real stdout; a stray print from a library goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    import math_verify  # noqa: F401 (import before "ready": tasks then run warm)

    from tempo_jax.rewards import equivalence  # noqa: F401

    _limit_memory(memory_limit_mb)

    def send(message: dict) -> None:
        out.write(json.dumps(message).encode() + b"\n")

    send({"ready": os.getpid()})
    for line in sys.stdin.buffer:
        message = json.loads(line)
        task_id = message["id"]
        try:
            result = run_task(message["kind"], message["payload"], enable_test_hooks)
            reply = {"id": task_id, "status": "ok", "result": result}
        except MemoryError:
            reply = {"id": task_id, "status": "memory", "result": None}
        except Exception as err:  # noqa: BLE001 (any failure grades the item wrong, counted)
            text = f"{type(err).__name__}: {err}"[:300]
            reply = {"id": task_id, "status": "error", "result": text}
        try:
            send(reply)
        except (OSError, MemoryError):
            return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-mb", type=int, default=0, help="RLIMIT_AS in MiB; 0: none")
    parser.add_argument("--enable-test-hooks", action="store_true", help="tests only")
    args = parser.parse_args(argv)
    serve(args.memory_mb, args.enable_test_hooks)


if __name__ == "__main__":
    main()
