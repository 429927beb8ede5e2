"""tempo_jax.sampling."""
