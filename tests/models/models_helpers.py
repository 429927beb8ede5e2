"""Helpers shared by the model tests (running transformers, jitting ours, swapping configs)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx


def hf_outputs(model: torch.nn.Module, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """transformers' logits (or token-classification scores) with our position convention."""
    positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(positions),
        ).logits
    return out.float().numpy()


def run(model: nnx.Module, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """model(tokens, mask) as numpy. Eager calls reuse the trunk's jit cache across models that
    share a config, which keeps this suite's compile count (and CPU time) down."""
    return np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask)))


def rebuild(model: nnx.Module, **config_changes) -> nnx.Module:
    """The same parameters under a changed (shape-compatible) config."""
    config = dataclasses.replace(model.config, **config_changes)
    abstract = nnx.eval_shape(lambda: type(model)(config, rngs=nnx.Rngs(0)))
    return nnx.merge(nnx.split(abstract)[0], nnx.state(model))
