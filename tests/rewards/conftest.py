"""Fixtures for the grader tests: one worker pool shared by every test that needs one."""

import pytest

from tempo_jax.rewards.grading_pool import GradingPool

# Generous for ordinary items (they take milliseconds to ~1 s) on a loaded 2-core machine;
# the timeout tests pass their own, shorter limit per call.
POOL_TIMEOUT_S = 8.0


@pytest.fixture(scope="session")
def grading_pool():
    """Two workers with the fault-injection hooks on; started once for the whole session."""
    with GradingPool(num_workers=2, timeout_s=POOL_TIMEOUT_S, enable_test_hooks=True) as pool:
        pool.wait_ready()
        yield pool
