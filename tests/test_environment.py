"""The suite's environment is what every other test assumes."""

import os

import jax


def test_eight_fake_cpu_devices(devices):
    assert jax.default_backend() == "cpu"
    assert len(devices) == 8


def test_persistent_compilation_cache_configured():
    cache_dir = jax.config.jax_compilation_cache_dir
    assert cache_dir and cache_dir == os.environ["JAX_COMPILATION_CACHE_DIR"]
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0


def test_package_imports():
    import tempo_jax

    assert tempo_jax.__version__ == "0.1.0"
