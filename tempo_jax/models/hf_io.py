"""Import / export of transformers checkpoint directories (config.json + safetensors). No network.

    load_hf(path, role="policy" | "critic", dtype="float32", param_dtype=None, mesh=None,
            rules=None) -> Policy | Critic
    save_hf(model, path, max_shard_bytes=5 GiB) -> None

A directory holds config.json and either model.safetensors or shards listed in
model.safetensors.index.json; `tempo_jax.models.hf_layout` maps transformers' tensors to our
stacked [L, ...] parameters. Every tensor header is checked (present, expected, right shape,
floating dtype) before any weight is read; any problem raises one `CheckpointError` naming the
file and the tensor, so a load is never partial. Weights are read with safetensors only (no
pickle), slice by slice: with a mesh each process reads only the bytes of its own shards. A save
gathers one tensor at a time and streams it into the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors import safe_open

from tempo_jax.models.config import ModelConfig, dtype_name
from tempo_jax.models.errors import CheckpointError
from tempo_jax.models.hf_config import ROLES, config_from_hf, config_to_hf
from tempo_jax.models.hf_layout import (
    TensorSpec,
    bounds,
    read_layer_slice,
    slices,
    tensor_specs,
    to_hf,
)
from tempo_jax.models.roles import Critic, Policy
from tempo_jax.parallel.multihost import host_from_global
from tempo_jax.parallel.shardings import state_shardings

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# safetensors dtype tags that convert losslessly enough to float32 / bfloat16 weights.
_FLOAT_TAGS = {"F64", "F32", "F16", "BF16"}
_NUMPY_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


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


class _Reader:
    """Reads slices of checkpoint tensors from their safetensors files (memory-mapped: a slice
    costs its own bytes), after checking every tensor's header; counts the bytes read."""

    def __init__(self, files: dict[str, pathlib.Path], stack: contextlib.ExitStack):
        self.files = files
        self.bytes_read = 0
        self._stack = stack
        self._handles: dict[pathlib.Path, Any] = {}

    def _handle(self, file: pathlib.Path):
        if file not in self._handles:
            try:
                handle = safe_open(file, framework="numpy")
            except Exception as e:  # safetensors raises several types for a corrupt header
                raise CheckpointError(file, f"not a readable safetensors file: {e}") from e
            self._handles[file] = self._stack.enter_context(handle)
        return self._handles[file]

    def check(self, specs: dict[str, TensorSpec]) -> None:
        """Every listed tensor is in its file with the expected shape and a float dtype."""
        present: dict[pathlib.Path, set[str]] = {}
        for name, file in self.files.items():
            handle = self._handle(file)
            if file not in present:
                present[file] = set(handle.keys())
            if name not in present[file]:
                raise CheckpointError(file, "listed in the index but not in the file", tensor=name)
            view = handle.get_slice(name)
            tag, shape, spec = view.get_dtype(), tuple(view.get_shape()), specs[name]
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

    def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
        """tensor[index] (a tuple of slices over transformers' layout)."""
        x = self._handle(self.files[name]).get_slice(name)[index] if index else None
        if x is None:  # a 0-d index: the whole (tiny) tensor
            x = self._handle(self.files[name]).get_tensor(name)
        self.bytes_read += x.nbytes
        return x


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


def check_hf_checkpoint(
    path: str | os.PathLike, role: str = "policy"
) -> tuple[ModelConfig, dict[str, Any], int]:
    """What `load_hf` reads before the weights: (the config.json's ModelConfig, extras, the
    number of tensors its safetensors files list); no tensor data is read.

    Raises:
      CheckpointError: naming the file that is missing, unparsable or unsupported.
    """
    config, extras = read_hf_config(path, role)
    return config, extras, len(_tensor_files(pathlib.Path(path)))


def load_hf(
    path: str | os.PathLike,
    role: str = "policy",
    dtype: object = "float32",
    param_dtype: object = None,
    *,
    mesh: jax.sharding.Mesh | None = None,
    rules: Any = None,
    read_bytes: list[int] | None = None,
) -> Policy | Critic:
    """Loads a transformers checkpoint directory as a Policy or a Critic.

    With a `mesh`, every parameter is created directly in its sharding (from its logical axes
    under `rules`) by `jax.make_array_from_callback`: each process reads from the safetensors
    files only the slices its own devices hold (each distinct slice once), so no host ever holds
    the whole model and no device a whole unsharded weight. Without one, the parameters are
    read whole onto JAX's default device.

    Args:
      path: directory with config.json and model.safetensors or model.safetensors.index.json +
        shards.
      role: "policy" (`*ForCausalLM`) or "critic" (`*ForTokenClassification`, num_labels=1).
      dtype: compute dtype, "float32" or "bfloat16".
      param_dtype: parameter dtype; defaults to `dtype`.
      mesh: shard the parameters over this mesh (None: one device).
      rules: logical-axis rules for `tempo_jax.parallel` (default rules when None).
      read_bytes: if given, the number of tensor bytes this process read is appended.

    Returns:
      The model.

    Raises:
      CheckpointError: missing directory / file, unknown architecture, role mismatch, missing
        or unexpected tensor, shape mismatch or non-float dtype; the message names the file and
        the tensor. Every header is checked before any weight is read; nothing is returned on
        error.
      ValueError: a parameter dimension the mesh does not divide (from `tempo_jax.parallel`).
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    directory = pathlib.Path(path)
    if not directory.is_dir():
        raise CheckpointError(directory, "checkpoint directory not found")
    config, extras = read_hf_config(directory, role, dtype, param_dtype)
    cls = Policy if role == "policy" else Critic
    abstract = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))
    specs = tensor_specs(abstract)
    optional: set[str] = set()
    if role == "policy" and config.tie_word_embeddings:
        # Some tied checkpoints still store lm_head.weight; it must then equal the embedding.
        specs["lm_head.weight"] = TensorSpec(
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

    by_target: dict[tuple[str, ...], dict[int | None, tuple[str, TensorSpec]]] = {}
    for name, spec in specs.items():
        if name in files:
            by_target.setdefault(spec.target, {})[spec.layer] = (name, spec)
    np_dtype = _NUMPY_DTYPES[config.param_dtype]
    graphdef, state = nnx.split(abstract)
    shardings = None if mesh is None else state_shardings(state, mesh, rules)
    with contextlib.ExitStack() as stack:
        reader = _Reader(files, stack)
        reader.check(specs)

        def read(target: tuple[str, ...], shape: tuple[int, ...], index: tuple) -> np.ndarray:
            """Our parameter `target`'s slice `index`, in the parameter dtype."""
            if target == ("score_bias",) and target not in by_target:
                return np.zeros((), np_dtype)  # a checkpoint without score.bias
            sources = by_target[target]
            if None in sources:  # unstacked
                name, spec = sources[None]
                x = read_layer_slice(reader.read, name, spec.kind, shape, index)
                x = x.astype(np_dtype)
                if target == ("model", "embed_tokens") and ("tied",) in by_target:
                    head = by_target[("tied",)][None][0]
                    if not np.array_equal(reader.read(head, slices(index, shape)), x):
                        raise CheckpointError(
                            reader.files[head],
                            "tie_word_embeddings is true but lm_head.weight differs from the "
                            "embedding",
                            tensor=head,
                        )
                return x
            parts = []
            for layer in range(*bounds(index[:1], shape[:1])[0]):
                name, spec = sources[layer]
                parts.append(read_layer_slice(reader.read, name, spec.kind, shape[1:], index[1:]))
            return np.stack(parts).astype(np_dtype)

        flat = []
        sharding_of = dict(nnx.to_flat_state(shardings)) if shardings is not None else {}
        for path, variable in nnx.to_flat_state(state):
            target, shape = tuple(str(k) for k in path), tuple(variable.shape)
            if target not in by_target and target != ("score_bias",):
                raise AssertionError(f"parameter {target} has no checkpoint source")
            if mesh is None:
                full = tuple(slice(None) for _ in shape)
                value = jnp.asarray(read(target, shape, full))
            else:
                value = _sharded(read, target, shape, sharding_of[path].get_value(), np_dtype)
            flat.append((path, variable.replace(value)))
        if read_bytes is not None:
            read_bytes.append(reader.bytes_read)
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _sharded(read, target, shape, sharding, np_dtype) -> jax.Array:
    """`make_array_from_callback` reading each distinct shard once (a shard replicated on
    several local devices is read for the first and reused)."""
    cache: dict[tuple, np.ndarray] = {}

    def shard(index: tuple) -> np.ndarray:
        key = tuple(bounds(index, shape))
        if key not in cache:
            cache[key] = read(target, shape, index)
        return cache[key]

    return jax.make_array_from_callback(shape, sharding, shard, dtype=np_dtype)


# --- writing -----------------------------------------------------------------------------------


_SAFETENSORS_TAGS = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64"}


class _Tensor:
    """One transformers tensor to write: its shape and dtype now, its values on `gather()`."""

    def __init__(self, array: Any, spec: TensorSpec):
        self.array, self.spec = array, spec
        self.dtype = np.dtype(array.dtype)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.spec.shape)) * self.dtype.itemsize

    def gather(self) -> np.ndarray:
        """The values in transformers' layout on this host (a collective over processes for a
        sharded array: every process must call it in the same order)."""
        x = self.array if self.spec.layer is None else self.array[self.spec.layer]
        x = np.asarray(host_from_global(x))
        if self.spec.layer is not None:
            x = to_hf(self.spec.kind, x)
        return np.ascontiguousarray(x.reshape(self.spec.shape))


def _hf_tensors(model: Policy | Critic) -> dict[str, _Tensor]:
    """transformers-named tensors of a model (nothing gathered yet)."""
    out = {}
    for name, spec in tensor_specs(model).items():
        node: Any = model
        for key in spec.target:
            node = getattr(node, key)
        out[name] = _Tensor(node[...], spec)
    return out


def _write_safetensors(
    path: pathlib.Path, tensors: dict[str, _Tensor], metadata: dict[str, str], write: bool
) -> None:
    """The safetensors format written one tensor at a time: an 8-byte little-endian header
    length, a JSON header (dtype, shape, byte offsets per tensor, `__metadata__`), the raw
    little-endian bytes in header order. Only one tensor is on the host at a time; processes
    that do not `write` take part in the gathers only."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        tag = _SAFETENSORS_TAGS[t.dtype.name]
        header[name] = {"dtype": tag, "shape": list(t.spec.shape), "data_offsets": [offset, 0]}
        offset += t.nbytes
        header[name]["data_offsets"][1] = offset
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    sink = open(path, "wb") if write else contextlib.nullcontext()
    with sink as f:
        if write:
            f.write(len(text).to_bytes(8, "little") + text)
        for name in sorted(tensors):
            data = tensors[name].gather()
            if write:
                f.write(data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes())


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

    Sharded parameters are gathered one tensor at a time (one layer of a stacked weight), so
    the host never holds more than one tensor. Several processes: every process must call this
    (the gathers are collectives); process 0 writes.

    Raises:
      CheckpointError: naming the file when it cannot be written.
    """
    if not isinstance(model, (Policy, Critic)):
        raise TypeError(f"save_hf expects a Policy or Critic, got {type(model).__name__}")
    role = "policy" if isinstance(model, Policy) else "critic"
    directory = pathlib.Path(path)
    config_dict = config_to_hf(model.config, role, target=str(directory / CONFIG_FILE))
    tensors = _hf_tensors(model)
    write = jax.process_index() == 0

    shards: list[dict[str, _Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    try:
        if write:
            directory.mkdir(parents=True, exist_ok=True)
            # A stale index or single file from an earlier save would shadow the new weights.
            for stale in (SINGLE_FILE, INDEX_FILE):
                (directory / stale).unlink(missing_ok=True)
            with open(directory / CONFIG_FILE, "w") as f:
                json.dump(config_dict, f, indent=2, sort_keys=True)
                f.write("\n")
        metadata = {"format": "pt"}  # transformers refuses safetensors without it
        if len(shards) == 1:
            _write_safetensors(directory / SINGLE_FILE, shards[0], metadata, write)
            return
        weight_map = {}
        for i, shard in enumerate(shards):
            file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _write_safetensors(directory / file, shard, metadata, write)
            weight_map.update({name: file for name in shard})
        if write:
            index = {
                "metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
                "weight_map": weight_map,
            }
            with open(directory / INDEX_FILE, "w") as f:
                json.dump(index, f, indent=2, sort_keys=True)
                f.write("\n")
    except OSError as e:
        raise CheckpointError(
            getattr(e, "filename", None) or directory, f"cannot write: {e}"
        ) from e
