"""A tiny nnx model whose parameters carry `logical_axes` metadata like the real decoder's."""

import jax
import jax.numpy as jnp
from flax import nnx

# Sizes chosen so that every sharded dim is divisible by 8 (any 8-device mesh) except `heads`,
# which tests vary to provoke divisibility errors.
VOCAB, EMBED, MLP, HEAD_DIM, LAYERS = 32, 16, 16, 2, 2


class Dense(nnx.Module):
    def __init__(self, shape, logical_axes, rngs: nnx.Rngs):
        self.kernel = nnx.Param(
            jax.random.normal(rngs.params(), shape) * 0.1, logical_axes=logical_axes
        )


class Attention(nnx.Module):
    def __init__(self, heads: int, rngs: nnx.Rngs):
        self.q_proj = Dense(
            (LAYERS, EMBED, heads, HEAD_DIM), ("layers", "embed", "heads", "head_dim"), rngs
        )


class Toy(nnx.Module):
    def __init__(self, heads: int = 8, *, rngs: nnx.Rngs):
        self.embedding = nnx.Param(
            jax.random.normal(rngs.params(), (VOCAB, EMBED)), logical_axes=("vocab", "embed")
        )
        self.attn = Attention(heads, rngs)
        self.up = Dense((LAYERS, EMBED, MLP), ("layers", "embed", "mlp"), rngs)
        self.norm = nnx.Param(jnp.ones((EMBED,)), logical_axes=("embed",))
        self.bias = nnx.Param(jnp.zeros((MLP,)))  # no metadata: replicated


def toy_params(heads: int = 8) -> nnx.State:
    """Parameter state of a fresh Toy model."""
    return nnx.state(Toy(heads, rngs=nnx.Rngs(0)), nnx.Param)
