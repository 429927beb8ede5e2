"""How our parameters map to transformers' tensors: names, kinds of reshape, per-slice reads.

Tensor names and layouts are transformers' (`model.layers.{i}.self_attn.q_proj.weight` [H*Dh, D],
...); our block parameters are stacked [L, ...] (`tempo_jax.models.decoder.DecoderLayers`). A
`TensorSpec` says where a transformers tensor lands: our parameter path, the layer index on the
stacked axis, the kind of reshape and transformers' shape. `read_layer_slice` reads any slice of
one of our per-layer parameters from the transformers tensor without reading the rest (what a
sharded load needs), and `to_hf` turns one of our per-layer arrays back into transformers'
layout (what a save needs).
"""

from __future__ import annotations

import numpy as np

from tempo_jax.models.config import ModelConfig
from tempo_jax.models.roles import Critic, Policy


# --- layouts: (our stacked name, transformers suffix under model.layers.{i}., kind) -------------
# kinds: "same" (same shape), "heads_in" (ours [D, N, Dh] <-> hf [N*Dh, D]),
# "heads_out" (ours [H, Dh, D] <-> hf [D, H*Dh]), "transpose" (ours [A, B] <-> hf [B, A]),
# "flat" (ours [N, Dh] <-> hf [N*Dh]), "reshape" (unstacked, same values, e.g. score [1, D]).
def layer_layout(config: ModelConfig) -> list[tuple[str, str, str]]:
    qwen3 = config.arch == "qwen3"  # pre-norm blocks; OLMo3 norms the attention and MLP outputs
    layout = _weights("", ("input_layernorm",), "same") if qwen3 else []
    layout += _weights("self_attn.", ("q_proj", "k_proj", "v_proj"), "heads_in")
    layout += _weights("self_attn.", ("o_proj",), "heads_out")
    layout += _weights("self_attn.", ("q_norm", "k_norm"), "same" if qwen3 else "flat")
    layout += _weights("", ("post_attention_layernorm",), "same")
    if not qwen3:
        layout += _weights("", ("post_feedforward_layernorm",), "same")
    layout += _weights("mlp.", ("gate_proj", "up_proj", "down_proj"), "transpose")
    return layout


def _weights(module: str, names: tuple[str, ...], kind: str) -> list[tuple[str, str, str]]:
    """Layout rows of parameters `names` of one transformers module (`{module}{name}.weight`)."""
    return [(name, f"{module}{name}.weight", kind) for name in names]


def hf_shape(kind: str, ours: tuple[int, ...]) -> tuple[int, ...]:
    if kind == "same":
        return ours
    if kind == "heads_in":
        return (ours[1] * ours[2], ours[0])
    if kind == "heads_out":
        return (ours[2], ours[0] * ours[1])
    if kind == "transpose":
        return (ours[1], ours[0])
    if kind == "flat":
        return (ours[0] * ours[1],)
    raise AssertionError(kind)


def to_hf(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "same":
        return x
    if kind == "flat":
        return x.reshape(-1)
    if kind == "transpose":
        return x.T
    if kind == "heads_in":
        return x.reshape(x.shape[0], -1).T
    return x.reshape(-1, x.shape[-1]).T  # heads_out


class TensorSpec:
    """One transformers tensor: its expected shape and where it lands in our parameters."""

    def __init__(self, target: tuple[str, ...], layer: int | None, kind: str, shape: tuple):
        self.target = target  # path of our Param, e.g. ("model", "layers", "q_proj")
        self.layer = layer  # index on the stacked axis, None for unstacked params
        self.kind = kind
        self.shape = shape  # transformers' shape


def tensor_specs(model: Policy | Critic) -> dict[str, TensorSpec]:
    """transformers tensor name -> TensorSpec, from an (abstract) model's parameter shapes."""
    c = model.config
    specs: dict[str, TensorSpec] = {}
    stacked = model.model.layers
    for ours, suffix, kind in layer_layout(c):
        layer_shape = tuple(getattr(stacked, ours).shape[1:])
        for i in range(c.num_layers):
            specs[f"model.layers.{i}.{suffix}"] = TensorSpec(
                ("model", "layers", ours), i, kind, hf_shape(kind, layer_shape)
            )
    specs["model.embed_tokens.weight"] = TensorSpec(
        ("model", "embed_tokens"), None, "same", (c.vocab_size, c.hidden_size)
    )
    specs["model.norm.weight"] = TensorSpec(("model", "norm"), None, "same", (c.hidden_size,))
    if isinstance(model, Policy):
        if not c.tie_word_embeddings:
            specs["lm_head.weight"] = TensorSpec(
                ("lm_head",), None, "same", (c.vocab_size, c.hidden_size)
            )
    else:
        specs["score.weight"] = TensorSpec(("score_kernel",), None, "reshape", (1, c.hidden_size))
        specs["score.bias"] = TensorSpec(("score_bias",), None, "reshape", (1,))
    return specs


def bounds(index: tuple[slice, ...], shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """(start, stop) per dimension of a shard index (jax's slices, step 1)."""
    out = []
    for s, size in zip(index, shape, strict=True):
        start, stop, step = s.indices(size)
        if step != 1:
            raise AssertionError(f"strided shard index {s}")
        out.append((start, stop))
    return out


def slices(index: tuple, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(*r) for r in bounds(index, shape))


def read_layer_slice(read, name: str, kind: str, ours: tuple, index: tuple) -> np.ndarray:
    """One layer's parameter slice `index` (over our per-layer shape `ours`), read from the
    transformers tensor `name` in its own layout by `read(name, slices)`: only the rows /
    columns the slice needs (`read(name, ())` means the whole, tiny, tensor)."""
    b = bounds(index, ours)
    if kind == "same":
        return read(name, slices(index, ours))
    if kind == "reshape":  # a [1, D] / [1] head read whole (tiny), viewed as ours
        return read(name, ()).reshape(ours)[index]
    if kind == "transpose":  # ours [A, B] <- hf [B, A]
        (a0, a1), (b0, b1) = b
        return read(name, (slice(b0, b1), slice(a0, a1))).T
    if kind == "flat":  # ours [N, Dh] <- hf [N * Dh]
        (n0, n1), (h0, h1) = b
        dh = ours[1]
        return read(name, (slice(n0 * dh, n1 * dh),)).reshape(n1 - n0, dh)[:, h0:h1]
    if kind == "heads_in":  # ours [D, N, Dh] <- hf [N * Dh, D]
        (d0, d1), (n0, n1), (h0, h1) = b
        dh = ours[2]
        x = read(name, (slice(n0 * dh, n1 * dh), slice(d0, d1)))
        return x.T.reshape(d1 - d0, n1 - n0, dh)[:, :, h0:h1]
    # heads_out: ours [H, Dh, D] <- hf [D, H * Dh]
    (n0, n1), (h0, h1), (d0, d1) = b
    dh = ours[1]
    x = read(name, (slice(d0, d1), slice(n0 * dh, n1 * dh)))
    return x.T.reshape(n1 - n0, dh, d1 - d0)[:, h0:h1, :]
