"""Import / export of transformers checkpoint directories (config.json + safetensors). No network.

    load_hf(path, role="policy" | "critic", dtype="float32", param_dtype=None) -> Policy | Critic
    save_hf(model, path, max_shard_bytes=5 GiB) -> None

A directory holds config.json and either model.safetensors or shards listed in
model.safetensors.index.json. Tensor names and layouts are transformers' (`model.layers.{i}.
self_attn.q_proj.weight` [H*Dh, D], ...); this module renames, transposes and stacks them into the
[L, ...] parameters of `DecoderLayers`. Every tensor is checked (present, expected, right shape,
floating dtype) before the model is built; any problem raises one `CheckpointError` naming the
file and the tensor, so a load is never partial. Weights are read with safetensors only (no
pickle).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from tempo_jax.models.config import ModelConfig, dtype_name
from tempo_jax.models.errors import CheckpointError
from tempo_jax.models.hf_config import ROLES, config_from_hf, config_to_hf
from tempo_jax.models.roles import Critic, Policy

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# safetensors dtype tags that convert losslessly enough to float32 / bfloat16 weights.
_FLOAT_TAGS = {"F64", "F32", "F16", "BF16"}
_NUMPY_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


# --- layouts: (our stacked name, transformers suffix under model.layers.{i}., kind) -------------
# kinds: "same" (same shape), "heads_in" (ours [D, N, Dh] <-> hf [N*Dh, D]),
# "heads_out" (ours [H, Dh, D] <-> hf [D, H*Dh]), "transpose" (ours [A, B] <-> hf [B, A]),
# "flat" (ours [N, Dh] <-> hf [N*Dh]), "reshape" (unstacked, same values, e.g. score [1, D]).
def _layer_layout(config: ModelConfig) -> list[tuple[str, str, str]]:
    layout = []
    if config.arch == "qwen3":
        layout.append(("input_layernorm", "input_layernorm.weight", "same"))
    layout += [
        ("q_proj", "self_attn.q_proj.weight", "heads_in"),
        ("k_proj", "self_attn.k_proj.weight", "heads_in"),
        ("v_proj", "self_attn.v_proj.weight", "heads_in"),
        ("o_proj", "self_attn.o_proj.weight", "heads_out"),
    ]
    norm_kind = "same" if config.arch == "qwen3" else "flat"
    layout += [
        ("q_norm", "self_attn.q_norm.weight", norm_kind),
        ("k_norm", "self_attn.k_norm.weight", norm_kind),
        ("post_attention_layernorm", "post_attention_layernorm.weight", "same"),
    ]
    if config.arch == "olmo3":
        layout.append(("post_feedforward_layernorm", "post_feedforward_layernorm.weight", "same"))
    layout += [
        ("gate_proj", "mlp.gate_proj.weight", "transpose"),
        ("up_proj", "mlp.up_proj.weight", "transpose"),
        ("down_proj", "mlp.down_proj.weight", "transpose"),
    ]
    return layout


def _hf_shape(kind: str, ours: tuple[int, ...]) -> tuple[int, ...]:
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


def _from_hf(kind: str, x: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
    if kind in ("same", "flat"):
        return x.reshape(ours)
    if kind == "transpose":
        return x.T
    return x.T.reshape(ours)  # heads_in, heads_out


def _to_hf(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "same":
        return x
    if kind == "flat":
        return x.reshape(-1)
    if kind == "transpose":
        return x.T
    if kind == "heads_in":
        return x.reshape(x.shape[0], -1).T
    return x.reshape(-1, x.shape[-1]).T  # heads_out


class _Spec:
    """One transformers tensor: its expected shape and where it lands in our parameters."""

    def __init__(self, target: tuple[str, ...], layer: int | None, kind: str, shape: tuple):
        self.target = target  # path of our Param, e.g. ("model", "layers", "q_proj")
        self.layer = layer  # index on the stacked axis, None for unstacked params
        self.kind = kind
        self.shape = shape  # transformers' shape


def _specs(model: Policy | Critic) -> dict[str, _Spec]:
    """transformers tensor name -> _Spec, from an (abstract) model's parameter shapes."""
    c = model.config
    specs: dict[str, _Spec] = {}
    stacked = model.model.layers
    for ours, suffix, kind in _layer_layout(c):
        layer_shape = tuple(getattr(stacked, ours).shape[1:])
        for i in range(c.num_layers):
            specs[f"model.layers.{i}.{suffix}"] = _Spec(
                ("model", "layers", ours), i, kind, _hf_shape(kind, layer_shape)
            )
    specs["model.embed_tokens.weight"] = _Spec(
        ("model", "embed_tokens"), None, "same", (c.vocab_size, c.hidden_size)
    )
    specs["model.norm.weight"] = _Spec(("model", "norm"), None, "same", (c.hidden_size,))
    if isinstance(model, Policy):
        if not c.tie_word_embeddings:
            specs["lm_head.weight"] = _Spec(
                ("lm_head",), None, "same", (c.vocab_size, c.hidden_size)
            )
    else:
        specs["score.weight"] = _Spec(("score_kernel",), None, "reshape", (1, c.hidden_size))
        specs["score.bias"] = _Spec(("score_bias",), None, "reshape", (1,))
    return specs


# --- reading -----------------------------------------------------------------------------------


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path, f"cannot parse JSON: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(path, "expected a JSON object")
    return data


def _tensor_files(directory: pathlib.Path) -> dict[str, pathlib.Path]:
    """Tensor name -> the safetensors file holding it (single file or index)."""
    index_path = directory / INDEX_FILE
    single_path = directory / SINGLE_FILE
    if index_path.exists():
        index = _read_json(index_path)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(index_path, "missing or empty 'weight_map'")
        files = {}
        for name, file in weight_map.items():
            shard = directory / str(file)
            if not shard.is_file():
                raise CheckpointError(
                    shard, f"shard file not found (listed in {INDEX_FILE})", tensor=name
                )
            files[name] = shard
        return files
    if single_path.exists():
        try:
            with safe_open(single_path, framework="numpy") as f:
                return {name: single_path for name in f.keys()}
        except Exception as e:  # safetensors raises several types for a corrupt header
            raise CheckpointError(single_path, f"not a readable safetensors file: {e}") from e
    others = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    extra = f" (found {others}: pickled weights are not read, convert them to safetensors)"
    raise CheckpointError(
        directory, f"no {SINGLE_FILE} or {INDEX_FILE} found" + (extra if others else "")
    )


def _read_tensors(
    files: dict[str, pathlib.Path],
    specs: dict[str, _Spec],
    on_tensor: Callable[[str, _Spec, np.ndarray], None],
) -> None:
    """Checks every tensor's shape and dtype, then hands it to `on_tensor` (file by file)."""
    by_file: dict[pathlib.Path, list[str]] = {}
    for name, file in files.items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        try:
            handle = safe_open(file, framework="numpy")
        except Exception as e:
            raise CheckpointError(file, f"not a readable safetensors file: {e}") from e
        with handle as f:
            present = set(f.keys())
            for name in names:
                if name not in present:
                    raise CheckpointError(
                        file, "listed in the index but not in the file", tensor=name
                    )
                spec = specs[name]
                view = f.get_slice(name)
                tag = view.get_dtype()
                shape = tuple(view.get_shape())
                if shape != spec.shape:
                    raise CheckpointError(
                        file, f"shape mismatch: expected {spec.shape}, found {shape}", tensor=name
                    )
                if tag not in _FLOAT_TAGS:
                    raise CheckpointError(
                        file,
                        f"dtype {tag} cannot be converted to a floating-point weight "
                        f"(accepted: {sorted(_FLOAT_TAGS)})",
                        tensor=name,
                    )
                on_tensor(name, spec, f.get_tensor(name))


def read_hf_config(
    path: str | os.PathLike, role: str = "policy", dtype: object = "float32", param_dtype=None
) -> tuple[ModelConfig, dict[str, Any]]:
    """The ModelConfig of a checkpoint directory's config.json (no weights are read).

    Returns:
      (config, extras), extras["score_bias"] saying whether a critic has a `score.bias`.

    Raises:
      CheckpointError: naming config.json when it is missing, unparsable or unsupported.
    """
    dtype = dtype_name(dtype)
    param_dtype = dtype if param_dtype is None else dtype_name(param_dtype)
    config_path = pathlib.Path(path) / CONFIG_FILE
    return config_from_hf(
        _read_json(config_path),
        role=role,
        source=str(config_path),
        param_dtype=param_dtype,
        dtype=dtype,
    )


def load_hf(
    path: str | os.PathLike,
    role: str = "policy",
    dtype: object = "float32",
    param_dtype: object = None,
) -> Policy | Critic:
    """Loads a transformers checkpoint directory as a Policy or a Critic.

    Args:
      path: directory with config.json and model.safetensors or model.safetensors.index.json +
        shards.
      role: "policy" (`*ForCausalLM`) or "critic" (`*ForTokenClassification`, num_labels=1).
      dtype: compute dtype, "float32" or "bfloat16".
      param_dtype: parameter dtype; defaults to `dtype`.

    Returns:
      The model, parameters on JAX's default device.

    Raises:
      CheckpointError: missing directory / file, unknown architecture, role mismatch, missing
        or unexpected tensor, shape mismatch or non-float dtype; the message names the file and
        the tensor. Nothing is returned on error.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    directory = pathlib.Path(path)
    if not directory.is_dir():
        raise CheckpointError(directory, "checkpoint directory not found")
    config, extras = read_hf_config(directory, role, dtype, param_dtype)
    param_dtype = config.param_dtype
    cls = Policy if role == "policy" else Critic
    abstract = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))
    specs = _specs(abstract)
    optional: set[str] = set()
    if role == "policy" and config.tie_word_embeddings:
        # Some tied checkpoints still store lm_head.weight; it must then equal the embedding.
        specs["lm_head.weight"] = _Spec(
            ("tied",), None, "same", (config.vocab_size, config.hidden_size)
        )
        optional.add("lm_head.weight")
    if role == "critic" and not extras["score_bias"]:
        del specs["score.bias"]

    files = _tensor_files(directory)
    missing = sorted(set(specs) - set(files) - optional)
    if missing:
        where = directory / (INDEX_FILE if (directory / INDEX_FILE).exists() else SINGLE_FILE)
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise CheckpointError(where, f"missing tensor(s): {shown}", tensor=missing[0])
    unexpected = sorted(set(files) - set(specs))
    if unexpected:
        raise CheckpointError(
            files[unexpected[0]],
            f"unexpected tensor(s) for a {config.arch} {role}: {', '.join(unexpected[:5])}",
            tensor=unexpected[0],
        )

    np_dtype = _NUMPY_DTYPES[param_dtype]
    buffers: dict[tuple[str, ...], np.ndarray] = {}
    state = nnx.state(abstract)
    for spec in specs.values():
        if spec.target != ("tied",) and spec.target not in buffers:
            leaf = _get_path(state, spec.target)
            buffers[spec.target] = np.empty(leaf.shape, np_dtype)
    tied_head: list[tuple[str, np.ndarray]] = []

    def on_tensor(name: str, spec: _Spec, x: np.ndarray) -> None:
        if spec.target == ("tied",):
            tied_head.append((name, x))
            return
        buf = buffers[spec.target]
        if spec.layer is None:
            buf[...] = x.reshape(buf.shape).astype(np_dtype)
        else:
            buf[spec.layer] = _from_hf(spec.kind, x, buf.shape[1:]).astype(np_dtype)

    _read_tensors(files, specs, on_tensor)
    for name, x in tied_head:
        embed = buffers[("model", "embed_tokens")]
        if not np.array_equal(x.astype(np_dtype), embed):
            raise CheckpointError(
                files[name],
                "tie_word_embeddings is true but lm_head.weight differs from the embedding",
                tensor=name,
            )

    if role == "critic" and not extras["score_bias"]:
        buffers[("score_bias",)] = np.zeros((), np_dtype)
    model = nnx.merge(*nnx.split(abstract))
    for target, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Param):
            if tuple(target) not in buffers:  # a layout bug, not a checkpoint problem
                raise AssertionError(f"parameter {target} has no checkpoint source")
            node.set_value(jnp.asarray(buffers.pop(tuple(target))))
    return model


def _get_path(state: Any, path: tuple[str, ...]) -> Any:
    node = state
    for key in path:
        node = node[key]
    return node


# --- writing -----------------------------------------------------------------------------------


def _hf_tensors(model: Policy | Critic) -> dict[str, np.ndarray]:
    """transformers-named numpy arrays (in the parameter dtype) of a model."""
    specs = _specs(model)
    out: dict[str, np.ndarray] = {}
    for name, spec in specs.items():
        node: Any = model
        for key in spec.target:
            node = getattr(node, key)
        x = np.asarray(node[...])
        if spec.layer is not None:
            x = _to_hf(spec.kind, x[spec.layer])
        out[name] = np.ascontiguousarray(x.reshape(spec.shape))
    return out


def save_hf(
    model: Policy | Critic, path: str | os.PathLike, *, max_shard_bytes: int = 5 * 2**30
) -> None:
    """Writes config.json + safetensors that transformers loads.

    A Policy is written as `<Arch>ForCausalLM` (AutoModelForCausalLM), a Critic as
    `<Arch>ForTokenClassification` with num_labels=1 (AutoModelForTokenClassification; OLMo3
    has no such class in transformers, see hf_config). Weights keep the parameter dtype. Shards
    of at most `max_shard_bytes` (a single tensor may exceed it) plus
    model.safetensors.index.json when more than one file is needed. Existing files of the same
    names are overwritten (and a stale model.safetensors / index removed); other files in the
    directory are left alone.

    Raises:
      CheckpointError: naming the file when it cannot be written.
    """
    if not isinstance(model, (Policy, Critic)):
        raise TypeError(f"save_hf expects a Policy or Critic, got {type(model).__name__}")
    role = "policy" if isinstance(model, Policy) else "critic"
    directory = pathlib.Path(path)
    config_dict = config_to_hf(model.config, role, target=str(directory / CONFIG_FILE))
    tensors = _hf_tensors(model)

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # A stale index or single file from an earlier save would shadow the new weights.
        for stale in (SINGLE_FILE, INDEX_FILE):
            (directory / stale).unlink(missing_ok=True)
        with open(directory / CONFIG_FILE, "w") as f:
            json.dump(config_dict, f, indent=2, sort_keys=True)
            f.write("\n")
        metadata = {"format": "pt"}  # transformers refuses safetensors without it
        if len(shards) == 1:
            save_file(shards[0], str(directory / SINGLE_FILE), metadata=metadata)
            return
        weight_map = {}
        for i, shard in enumerate(shards):
            file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(directory / file), metadata=metadata)
            weight_map.update({name: file for name in shard})
        index = {
            "metadata": {"total_size": sum(x.nbytes for x in tensors.values())},
            "weight_map": weight_map,
        }
        with open(directory / INDEX_FILE, "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
            f.write("\n")
    except OSError as e:
        raise CheckpointError(
            getattr(e, "filename", None) or directory, f"cannot write: {e}"
        ) from e
