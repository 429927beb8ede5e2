"""tempo_jax.parallel."""
