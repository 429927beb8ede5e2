"""tempo_jax: TEMPO test-time training for reasoning LLMs in JAX / Flax NNX.

Layers, lowest first (lower layers never import higher ones):
data -> sampling -> rewards -> rl -> train -> tempo. models and parallel sit underneath all.
"""

__version__ = "0.1.0"
