"""tempo_jax.tempo."""
