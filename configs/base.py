"""Base config: all defaults (defined in `tempo_jax.config.defaults`, so that every config
file can import them wherever the package is installed)."""

from tempo_jax.config.defaults import get_config  # noqa: F401  (config_flags reads it)
