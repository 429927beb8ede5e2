"""Suite-wide setup: 8 fake CPU devices, XLA flags for cheap compiles, a persistent compilation
cache.

All must be in the environment before JAX is imported anywhere, and environment variables (not
`jax.config`) so that subprocesses started by tests (multi-host, kill -9 resume) inherit them.
"""

import os
import pathlib

_ROOT = pathlib.Path(__file__).resolve().parent.parent

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite's XLA flags; a flag the caller's XLA_FLAGS already names keeps the caller's value.
# XLA aborts at start-up on a flag it does not know ("Unknown flag in XLA_FLAGS"): if a later
# jaxlib drops one of these, delete it here.
_SUITE_FLAGS = (
    "--xla_force_host_platform_device_count=8",
    # The suite's models are tiny, so its time is mostly XLA:CPU compiles, and LLVM's
    # optimisation passes are a large part of each. At backend level 0 (no LLVM optimisation) a
    # micro TEMPO run took 28% less CPU. Its numbers differ from the default level's by float
    # rounding only (up to 7.6e-6 on the tiny policy's logits); every bitwise comparison here is
    # between runs under the same flags (subprocesses inherit them). Its machine code is slower,
    # which tiny shapes do not notice.
    "--xla_backend_optimization_level=0",
    # XLA:CPU compiles each fusion to its own kernel (a tiny TEMPO train step has ~440), and the
    # suite's time was half compiles. The MLIR fusion emitters and XNNPACK fusions cost more per
    # kernel to compile than the classic emitters and Eigen dots, and splitting a module for
    # parallel codegen only adds work on 2 cores. With the three below, one cold train-step case
    # (test_train_steps_mesh.py, mesh_shape0-policy, persistent cache off) took 10.2 CPU s
    # instead of 19.1, and pytest in a fresh clone 445 s instead of 582 (per-file sums 837 vs
    # 1116 s; one run each, idle machine). Like level 0 they change float rounding only.
    "--xla_cpu_use_fusion_emitters=false",
    "--xla_cpu_use_xnnpack=false",
    "--xla_cpu_parallel_codegen_split_count=1",
)
_flags = os.environ.get("XLA_FLAGS", "").split()
_named = {f.split("=")[0] for f in _flags}
_flags += [f for f in _SUITE_FLAGS if f.split("=")[0] not in _named]
os.environ["XLA_FLAGS"] = " ".join(_flags)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_ROOT / ".jax_cache"))
# Cache every compile: most of ours are sub-second on tiny configs but repeat across tests.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Tests must never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TFDS_DATA_DIR", str(_ROOT / ".tfds_never_used"))

import jax  # noqa: E402  (after the environment is set)
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def devices():
    """The 8 fake CPU devices."""
    devs = jax.devices()
    assert len(devs) == 8, f"expected 8 fake CPU devices, got {len(devs)}"
    return devs


# Under pytest-xdist (README's command: `-n 2 --dist loadfile`) each worker takes whole files, the
# next one whenever it is almost out of tests, so a file that starts last runs alone at the end.
# The slowest files (the suite's profile, `--durations=0`) are therefore collected first, and
# pytest.ini passes `--no-loadscope-reorder`: without it xdist sends files in the order of their
# test counts, not this one. The order within a file is unchanged; a serial run keeps the plain
# order.
SLOWEST_FILES_FIRST = (  # the 24 slowest files of a fresh-clone run (2026-12-07 evening)
    "tests/tempo/test_learning.py",
    "tests/tempo/test_tempo_resume.py",
    "tests/tempo/test_eval_command.py",
    "tests/launch/test_sweep.py",
    "tests/tempo/test_tempo_multihost.py",
    "tests/sampling/test_paged_engine.py",
    "tests/tempo/test_tempo_loop.py",
    "tests/benchmarks/test_benchmarks.py",
    "tests/train/test_checkpointing.py",
    "tests/tempo/test_compile_report.py",
    "tests/tempo/test_tempo_paged_engine.py",
    "tests/tempo/test_tempo_preempt_in_step.py",
    "tests/tempo/test_study_smoke.py",
    "tests/train/test_train_steps_mesh.py",
    "tests/sampling/test_paged_preemption.py",
    "tests/tempo/test_tempo_controls.py",
    "tests/tempo/test_tempo_gcs.py",
    "tests/tempo/test_tempo_faults.py",
    "tests/sampling/test_sampling_n_samples_and_sharding.py",
    "tests/train/test_train_multihost.py",
    "tests/tempo/test_tempo_export.py",
    "tests/models/test_models_attention.py",
    "tests/data/test_hub_datasets.py",
    "tests/train/test_train_config_state.py",
)


def pytest_collection_modifyitems(config, items):
    """Slowest files first when the run is spread over xdist workers (a stable sort)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    rank = {path: i for i, path in enumerate(SLOWEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
