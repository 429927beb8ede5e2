"""tempo_jax.rewards."""
