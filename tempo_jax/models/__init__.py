"""tempo_jax.models."""
