"""tempo_jax.rl."""
