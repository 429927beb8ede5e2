"""`tempo-jax export`: a trainer checkpoint's policy (and critic) as Hugging Face checkpoints.

The trainer stores each network's `ModelConfig` in the checkpoint metadata (`models`), so export
rebuilds the model structure from the checkpoint alone: no config file, tokenizer or dataset is
needed. The networks are restored sharded over this host's devices (any mesh may have saved
them) and written one tensor at a time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from typing import Any

import jax
from flax import nnx

from tempo_jax import models, parallel, train
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


def _abstract_state(role: str, config: models.ModelConfig, optimizer, mesh) -> tuple:
    """(graphdef, abstract TrainState with shardings over `mesh`) of a stored network."""
    abstract = nnx.eval_shape(lambda: ROLES[role](config, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(abstract, nnx.Param)
    return graphdef, train.abstract_train_state(params, optimizer, mesh)


def export_hf(
    workdir: str, out: str, step: int | None = None, mesh: jax.sharding.Mesh | None = None
) -> dict[str, str]:
    """Writes the networks of checkpoint `step` (None: the newest good one) of a `tempo-jax
    train` workdir as HF checkpoints `out/policy` (and `out/critic` when the method has one).
    Either may be a bucket (`gs://...`).

    The networks' TrainStates are restored sharded over `mesh` (default: every device, FSDP),
    so no host holds a whole network or its optimizer state; `save_hf` then gathers one tensor
    at a time into the files.

    Returns:
      {role: directory written}.

    Raises:
      FileNotFoundError: no (such) checkpoint under `workdir/checkpoints`.
      ValueError: the checkpoint predates model configs in its metadata, or does not match them.
    """
    directory = os.path.join(workdir, "checkpoints")
    if not storage.path(directory).is_dir():
        raise FileNotFoundError(f"{workdir} has no checkpoints/ directory (not a trainer workdir?)")
    mesh = parallel.make_mesh((1, -1, 1)) if mesh is None else mesh
    with Checkpointer(directory, read_only=True) as ckpt:
        step = ckpt.latest_good_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no good checkpoint in {directory}")
        where = f"checkpoint {ckpt.step_path(step)}"
        metadata = ckpt.metadata(step)
        configs, saved_config = metadata.get("models"), metadata.get("config")
        if not isinstance(configs, dict) or not isinstance(saved_config, dict):
            raise ValueError(
                f"{where}: its metadata has no 'models' / 'config' entry (saved by an older "
                "trainer)"
            )
        settings = train.settings_from_config(saved_config.get("train", {}))
        optimizers = {"policy": settings.policy_optimizer, "critic": settings.critic_optimizer}
        graphdefs, abstract = {}, {}
        for role in ROLES:
            if role in configs:
                config = model_config_from_dict(configs[role], f"{where} models[{role!r}]")
                graphdefs[role], abstract[role] = _abstract_state(
                    role, config, optimizers[role], mesh
                )
        try:
            items, _ = ckpt.restore(step, abstract)
        except (ValueError, KeyError) as e:  # Orbax's shape / structure mismatches
            raise ValueError(f"{where} does not match its stored model configs: {e}") from e
    written = {}
    for role, graphdef in graphdefs.items():
        path = os.path.join(out, role)
        module = nnx.merge(graphdef, items[role].params)
        if storage.is_remote(path):  # safetensors writes local files: stage, then upload
            with tempfile.TemporaryDirectory() as staging:
                models.save_hf(module, staging)
                storage.copy_tree(staging, path)
        else:
            models.save_hf(module, path)
        if role == "critic":
            _write_critic_note(path, settings.critic_likelihood_weight)
        written[role] = path
        log.info("wrote %s of %s to %s", role, where, path)
    return written


CRITIC_NOTE = "tempo_critic.json"


def _write_critic_note(path: str, likelihood_weight: float) -> None:
    """Records next to an exported critic what its token-classification head leaves out: with
    `train.critic_likelihood_weight` w > 0 the trained critic's value is the head's output plus
    w x the lowest log-prob its own language model gave an earlier response token."""
    note = {
        "critic_likelihood_weight": likelihood_weight,
        "value": "logits[..., 0] + critic_likelihood_weight * min_{s<t} log p(y_s), the log-probs "
        "from the same decoder with its tied input embedding as output projection",
    }
    storage.write_atomic(os.path.join(path, CRITIC_NOTE), json.dumps(note, indent=1) + "\n")
    if likelihood_weight:
        log.warning(
            "%s: the critic was trained with train.critic_likelihood_weight = %g; the exported "
            "head alone is not its value (see %s)",
            path,
            likelihood_weight,
            CRITIC_NOTE,
        )
