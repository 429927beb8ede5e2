"""The micro trainer config shared by the tempo tests (a ~20k-parameter model, 8 rows per batch:
one per fake device), also usable as a config file:
`tempo-jax train --config=tests/tempo/tempo_micro.py --config.data.dir=...`."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np

from tempo_jax.config.defaults import get_config as default_config
from tempo_jax.config.validation import validate
from tempo_jax.train import storage


def micro_config(data_dir: str = "", method: str = "tempo", **changes) -> ml_collections.ConfigDict:
    """The micro config; `changes` maps dotted field names to values ("rollout.n": 4)."""
    c = default_config()
    c.method = method
    c.total_steps = 2
    c.eval_every = 0
    c.save_every = 0
    c.progress_bar = False
    c.model.overrides.update(
        {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_layers": 1,
            "num_heads": 2,
            "num_kv_heads": 2,
            "head_dim": 16,
        }
    )
    c.data.dir = data_dir
    c.data.num_labeled = 64
    c.data.num_unlabeled = 32
    c.data.num_eval = 16
    c.data.max_prompt_length = 24
    c.data.prompts_per_step = 4  # 4 prompts x 2 samples = 8 rows: one per fake device
    c.rollout.n = 2
    c.rollout.max_new_tokens = 8
    c.tempo.critic_warmup_steps = 1
    c.tempo.critic_updates = 1
    c.tempo.recalibrate_every = 2
    c.train.policy_optimizer.learning_rate = 1e-2
    c.train.critic_optimizer.learning_rate = 1e-2
    c.eval.n = 2
    c.eval.ks = (1, 2)
    c.eval.num_problems = 4
    c.grader.num_workers = 1
    c.checkpoint.async_save = False
    for key, value in changes.items():
        section = c
        parts = key.split(".")
        for part in parts[:-1]:
            section = section[part]
        section[parts[-1]] = value
    validate(c)
    return c


def get_config() -> ml_collections.ConfigDict:
    """Config-file entry point (ml_collections config_flags); set data.dir on the command line."""
    return micro_config()


def run_trainer(config: ml_collections.ConfigDict, workdir):
    """Trains (or resumes) `config` in `workdir` in this process; the final LoopState."""
    from tempo_jax.tempo.loop import Trainer

    trainer = Trainer(config, str(workdir))
    try:
        return trainer.train()
    finally:
        trainer.close()


def checkpoint_steps(directory) -> list[int]:
    """The good checkpoints in `directory` ([] when it does not exist)."""
    from tempo_jax.train.checkpointing import Checkpointer

    if not os.path.isdir(directory):
        return []
    with Checkpointer(directory, read_only=True) as ckpt:
        return ckpt.all_steps()


def host(tree):
    """A pytree's arrays as numpy (None stays None)."""
    return None if tree is None else jax.tree.map(np.asarray, tree)


def trees_equal(a, b) -> bool:
    """Same structure and bitwise-equal leaves."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    return all(
        x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y, equal_nan=True)
        for x, y in zip(jax.tree.leaves(host(a)), jax.tree.leaves(host(b)), strict=True)
    )


def metric_lines(workdir, name: str = "metrics.jsonl") -> list[str]:
    """The records of a metrics file (local or in a bucket) as canonical JSON lines, timing/*
    keys removed (NaN written as NaN, so equal records give equal lines)."""
    out = []
    for line in storage.read_text(os.path.join(workdir, name)).splitlines():
        record = json.loads(line)
        kept = {k: v for k, v in record.items() if not k.startswith("timing/")}
        out.append(json.dumps(kept, sort_keys=True))
    return out
