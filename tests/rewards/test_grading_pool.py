"""The worker pool under faults: timeouts, killed and exiting workers, memory limit, close."""

import os
import signal
import threading
import time

import pytest

from tempo_jax.rewards.grading_pool import GradingPool

GRADE_HALF = ("grade", {"answer": "0.5", "truths": [r"\frac{1}{2}", "2"]})


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_timeout_kills_and_replaces_the_worker(grading_pool):
    grading_pool.wait_ready()
    before = grading_pool.counters.timeouts
    start = time.perf_counter()
    outcomes, counters = grading_pool.run_tasks([("_sleep", 30), GRADE_HALF], timeout_s=0.5)
    elapsed = time.perf_counter() - start
    assert [o.status for o in outcomes] == ["timeout", "ok"]
    assert outcomes[1].result == [True, False]
    assert counters.timeouts == 1 and counters.crashes == 0
    assert grading_pool.counters.timeouts == before + 1
    assert elapsed < 2.0, elapsed
    # The replacement serves the next batch.
    outcomes, _ = grading_pool.run_tasks([GRADE_HALF] * 4)
    assert all(o.ok and o.result == [True, False] for o in outcomes)


def test_worker_exiting_mid_item_is_a_crash(grading_pool):
    grading_pool.wait_ready()
    outcomes, counters = grading_pool.run_tasks([GRADE_HALF, ("_exit", None), GRADE_HALF])
    assert [o.status for o in outcomes] == ["ok", "crash", "ok"]
    assert counters.crashes == 1 and counters.timeouts == 0
    outcomes, _ = grading_pool.run_tasks([GRADE_HALF])
    assert outcomes[0].result == [True, False]


def test_worker_killed_from_outside_mid_item(grading_pool):
    grading_pool.wait_ready()
    pids = grading_pool.worker_pids()
    # SIGKILL every worker while one of them sleeps in a task: the busy one's item is a crash,
    # the idle one is replaced silently.
    killer = threading.Timer(0.3, lambda: [os.kill(pid, signal.SIGKILL) for pid in pids])
    killer.start()
    start = time.perf_counter()
    outcomes, counters = grading_pool.run_tasks([("_sleep", 30)], timeout_s=20.0)
    killer.join()
    assert outcomes[0].status == "crash"
    assert counters.crashes == 1
    assert time.perf_counter() - start < 5.0
    for _ in range(100):  # SIGKILL is asynchronous: wait until both are gone
        if not any(_alive(pid) for pid in pids):
            break
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)
    outcomes, _ = grading_pool.run_tasks([GRADE_HALF] * 2)
    assert all(o.result == [True, False] for o in outcomes)
    assert set(grading_pool.worker_pids()).isdisjoint(pids)  # both replaced


def test_memory_limit_fails_the_item_not_the_worker(grading_pool):
    grading_pool.wait_ready()
    pids = grading_pool.worker_pids()
    outcomes, counters = grading_pool.run_tasks([("_alloc", 8192)])
    assert outcomes[0].status == "memory"
    assert counters.memory_errors == 1
    assert grading_pool.worker_pids() == pids  # MemoryError is caught; the worker lives on
    outcomes, _ = grading_pool.run_tasks([GRADE_HALF])
    assert outcomes[0].ok


def test_unknown_task_kind_is_an_error(grading_pool):
    outcomes, counters = grading_pool.run_tasks([("nonsense", 1)])
    assert outcomes[0].status == "error" and "unknown grading task kind" in outcomes[0].result
    assert counters.errors == 1


def test_hooks_are_refused_by_default_and_close_stops_workers():
    pool = GradingPool(num_workers=1, timeout_s=10.0)
    outcomes, counters = pool.run_tasks([("_exit", None), GRADE_HALF])
    assert outcomes[0].status == "error" and counters.crashes == 0
    assert outcomes[1].result == [True, False]
    pids = pool.worker_pids()
    pool.close()
    pool.close()  # idempotent
    assert pool.closed
    assert not any(_alive(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="closed"):
        pool.run_tasks([GRADE_HALF])


@pytest.mark.parametrize(
    "kwargs, match", [({"num_workers": 0}, "num_workers"), ({"timeout_s": 0}, "timeout_s")]
)
def test_invalid_pool_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GradingPool(**kwargs)
