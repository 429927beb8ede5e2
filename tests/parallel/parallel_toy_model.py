"""A tiny nnx model whose parameters carry `logical_axes` metadata like the real decoder's.

Initialised from numpy so that building it compiles nothing.
"""

import jax.numpy as jnp
import numpy as np
from flax import nnx

# Sizes chosen so that every sharded dim is divisible by 8 (any 8-device mesh) except `heads`,
# which tests vary to provoke divisibility errors.
VOCAB, EMBED, MLP, HEAD_DIM, LAYERS = 32, 16, 16, 2, 2


def _normal(rng: np.random.Generator, shape) -> jnp.ndarray:
    return jnp.asarray(rng.normal(size=shape).astype(np.float32) * 0.1)


class Dense(nnx.Module):
    def __init__(self, shape, logical_axes, rng: np.random.Generator):
        self.kernel = nnx.Param(_normal(rng, shape), logical_axes=logical_axes)


class Attention(nnx.Module):
    def __init__(self, heads: int, rng: np.random.Generator):
        self.q_proj = Dense(
            (LAYERS, EMBED, heads, HEAD_DIM), ("layers", "embed", "heads", "head_dim"), rng
        )


class Toy(nnx.Module):
    def __init__(self, heads: int = 8, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.embedding = nnx.Param(_normal(rng, (VOCAB, EMBED)), logical_axes=("vocab", "embed"))
        self.attn = Attention(heads, rng)
        self.up = Dense((LAYERS, EMBED, MLP), ("layers", "embed", "mlp"), rng)
        self.norm = nnx.Param(jnp.ones((EMBED,)), logical_axes=("embed",))
        self.bias = nnx.Param(jnp.zeros((MLP,)))  # no metadata: replicated


def toy_params(heads: int = 8) -> nnx.State:
    """Parameter state of a fresh Toy model."""
    return nnx.state(Toy(heads), nnx.Param)
