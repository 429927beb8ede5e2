"""tempo_jax.train."""
