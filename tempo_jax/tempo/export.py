"""`tempo-jax export`: a trainer checkpoint's policy (and critic) as Hugging Face checkpoints.

The trainer stores each network's `ModelConfig` in the checkpoint metadata (`models`), so export
rebuilds the model structure from the checkpoint alone: no config file, tokenizer or dataset is
needed. Parameters are restored to host memory (numpy), whatever mesh saved them; the whole
checkpoint item is read, optimizer moments included (about 3x the parameters' bytes of host
memory for AdamW).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from typing import Any

import numpy as np
from flax import nnx

from tempo_jax import models
from tempo_jax.train import storage
from tempo_jax.train.checkpointing import Checkpointer

log = logging.getLogger(__name__)

ROLES = {"policy": models.Policy, "critic": models.Critic}


def model_config_to_dict(config: models.ModelConfig) -> dict[str, Any]:
    """A JSON-exact dict of `config` (tuples stay tuples in checkpoint metadata)."""
    return dataclasses.asdict(config)


def model_config_from_dict(d: dict[str, Any], where: str = "model config") -> models.ModelConfig:
    """Inverse of `model_config_to_dict`.

    Raises:
      ValueError: naming `where` and the unknown or missing fields.
    """
    known = {f.name for f in dataclasses.fields(models.ModelConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown ModelConfig fields {unknown}")
    fields = dict(d)
    for key in ("rope", "sliding_rope"):
        if isinstance(fields.get(key), dict):
            fields[key] = models.RopeConfig(**fields[key])
    try:
        return models.ModelConfig(**fields)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None


def _leaf(tree: Any, path: tuple, where: str) -> np.ndarray:
    node = tree
    for key in path:
        key = str(key)
        if not isinstance(node, dict) or key not in node:
            raise ValueError(
                f"{where}: parameter {'/'.join(map(str, path))} is not in the checkpoint"
            )
        node = node[key]
    # Orbax stores an nnx Variable as a dict holding its "value".
    if isinstance(node, dict) and set(node) == {"value"}:
        node = node["value"]
    if not isinstance(node, np.ndarray):
        raise ValueError(f"{where}: parameter {'/'.join(map(str, path))} is not an array")
    return node


def module_from_host_params(
    role: str, config: models.ModelConfig, params: dict[str, Any], where: str
) -> models.Policy | models.Critic:
    """The `role` model of `config` with parameters from a host-restored nested dict.

    Raises:
      ValueError: naming `where` and the parameter whose path, shape or dtype does not match.
    """
    abstract = nnx.eval_shape(lambda: ROLES[role](config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    flat = []
    for path, variable in nnx.to_flat_state(state):
        value = _leaf(params, path, where)
        if value.shape != variable.shape or value.dtype != variable.dtype:
            raise ValueError(
                f"{where}: parameter {'/'.join(map(str, path))} is {value.shape} {value.dtype}, "
                f"the stored model config expects {variable.shape} {variable.dtype}"
            )
        flat.append((path, variable.replace(value)))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def export_hf(workdir: str, out: str, step: int | None = None) -> dict[str, str]:
    """Writes the networks of checkpoint `step` (None: the newest good one) of a `tempo-jax
    train` workdir as HF checkpoints `out/policy` (and `out/critic` when the method has one).
    Either may be a bucket (`gs://...`).

    Returns:
      {role: directory written}.

    Raises:
      FileNotFoundError: no (such) checkpoint under `workdir/checkpoints`.
      ValueError: the checkpoint predates model configs in its metadata, or does not match them.
    """
    directory = os.path.join(workdir, "checkpoints")
    if not storage.path(directory).is_dir():
        raise FileNotFoundError(f"{workdir} has no checkpoints/ directory (not a trainer workdir?)")
    with Checkpointer(directory, read_only=True) as ckpt:
        items, metadata = ckpt.restore(step, None)
        where = f"checkpoint {ckpt.step_path(ckpt.restored_step)}"
    configs = metadata.get("models")
    if not isinstance(configs, dict):
        raise ValueError(f"{where}: its metadata has no 'models' entry (saved by an older trainer)")
    written = {}
    for role in ROLES:
        if role not in items:
            continue
        if role not in configs:
            raise ValueError(f"{where}: metadata 'models' has no {role!r} config")
        config = model_config_from_dict(configs[role], f"{where} models[{role!r}]")
        module = module_from_host_params(role, config, items[role]["params"], f"{where} {role}")
        path = os.path.join(out, role)
        if storage.is_remote(path):  # safetensors writes local files: stage, then upload
            with tempfile.TemporaryDirectory() as staging:
                models.save_hf(module, staging)
                storage.copy_tree(staging, path)
        else:
            models.save_hf(module, path)
        written[role] = path
        log.info("wrote %s of %s to %s", role, where, path)
    return written
