"""tempo_jax.data."""
