"""Everything a run needs, built once from the config: data, models, mesh, sampler, grader, and
the compiled step functions (compiled lazily on first use, each exactly once)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from tempo_jax import models, parallel, train
from tempo_jax.config.methods import Method
from tempo_jax.config.settings import RunSettings, run_settings
from tempo_jax.data.pipeline import Data, build_data, data_config_from
from tempo_jax.models import attention
from tempo_jax.rewards.grading_pool import GradingPool
from tempo_jax.sampling import Engine, Sampler
from tempo_jax.sampling.engine_layout import decode_tensor
from tempo_jax.tempo.functions import RunFunctions
from tempo_jax.train import storage
from tempo_jax.train.batch import RLBatch, Sequences

log = logging.getLogger(__name__)


def model_config(config: ml_collections.ConfigDict, vocab_size: int | None) -> models.ModelConfig:
    """The policy's architecture: a preset with overrides (vocabulary from the tokenizer; None
    keeps the preset's)."""
    overrides = dict(config.model.overrides.to_dict()) if "overrides" in config.model else {}
    tiny = config.model.preset in ("tiny", "tiny_olmo3")
    if vocab_size is not None and (tiny or overrides.get("vocab_size") is None):
        overrides.setdefault("vocab_size", vocab_size)
    overrides["dtype"] = config.model.compute_dtype
    overrides["param_dtype"] = config.model.param_dtype
    return models.get_preset(config.model.preset, **overrides)


def attention_implementation(config: ml_collections.ConfigDict, platform: str | None = None):
    """`model.attention` with `auto` resolved for `platform` (default: JAX's default backend)."""
    return attention.resolve(config.model.attention, platform, config.model.compute_dtype)


def _attention_fields(config: ml_collections.ConfigDict, platform: str | None) -> dict:
    return {
        "attention": attention_implementation(config, platform),
        "attention_block_size": config.model.attention_block_size,
    }


def _with_configured_attention(config, model, platform: str | None):
    fields = _attention_fields(config, platform)
    return models.with_attention(model, fields["attention"], fields["attention_block_size"])


def planned_model_config(
    config: ml_collections.ConfigDict, role: str, platform: str | None = None
) -> tuple[models.ModelConfig, str]:
    """The architecture a run of `config` builds for `role` on `platform` (its attention
    resolved for it), read without weights or tokenizer: the checkpoint's config.json when one
    exists, else the preset (the built-in task's trained SentencePiece vocabulary size for the
    tiny presets). Returns (config, where it came from)."""
    path = _hf_path(config, role)
    dtypes = _dtypes(config)
    if path and os.path.isfile(os.path.join(path, "config.json")):
        model = models.read_hf_config(path, role, **dtypes)[0]
        source = f"{path}/config.json"
    elif role == "critic":  # critic_from_policy: the policy's decoder and config
        return planned_model_config(config, "policy", platform)
    else:
        trained_vocab = config.tokenizer.kind == "sentencepiece" and not config.tokenizer.path
        vocab = config.tokenizer.vocab_size if trained_vocab else None
        model = model_config(config, vocab)
        source = f"preset {config.model.preset}" + (f" (no config.json in {path})" if path else "")
    return dataclasses.replace(model, **_attention_fields(config, platform)), source


def make_sampler(
    config: ml_collections.ConfigDict | RunSettings,
    policy: models.Policy,
    mesh: jax.sharding.Mesh,
    rules: Any,
    eos_ids: tuple[int, ...],
    pad_id: int,
) -> Sampler:
    """The run's sampler (`policy` may be abstract): `rollout.engine` picks the static
    `Sampler` or the paged `Engine` (same interface); it serves rollouts, evaluation and the
    greedy pass. `config`: the run's config or its settings."""
    settings = run_settings(config)
    rollout = settings.rollout
    kwargs = dict(
        max_new_tokens=rollout.max_new_tokens,
        max_prompt_length=settings.max_prompt_length,
        eos_ids=eos_ids,
        pad_id=pad_id,
        max_top_k=rollout.max_top_k,
        mesh=mesh,
        max_rows_per_chunk=rollout.rows_per_chunk,
    )
    if rollout.engine == "paged":
        paged = rollout.paged
        tensor = decode_tensor(paged.decode_layout, paged.decode_tensor, mesh, policy.config)
        return Engine(
            policy,
            page_size=paged.page_size,
            num_slots=paged.num_slots,
            num_pages=paged.num_pages,
            steps_per_call=paged.steps_per_call,
            preemption=paged.preemption,
            rules=rules,
            decode_tensor=tensor,
            **kwargs,
        )
    return Sampler(policy, rules=rules, **kwargs)


def _hf_path(config: ml_collections.ConfigDict, role: str) -> str:
    return config.model.hf_path if role == "policy" else config.model.critic_hf_path


def _dtypes(config: ml_collections.ConfigDict) -> dict[str, str]:
    return {"dtype": config.model.compute_dtype, "param_dtype": config.model.param_dtype}


def _load_hf(config: ml_collections.ConfigDict, role: str, mesh, rules):
    """The `role` network's local HF checkpoint (model.hf_path / model.critic_hf_path), read
    shard by shard onto `mesh` in the configured dtypes."""
    path = _hf_path(config, role)
    return models.load_hf(path, role=role, mesh=mesh, rules=rules, **_dtypes(config))


def init_policy(
    config: ml_collections.ConfigDict,
    vocab_size: int,
    mesh: jax.sharding.Mesh | None = None,
    rules: Any = None,
) -> models.Policy:
    """The initial policy: a local HF checkpoint (read shard by shard onto `mesh`: each process
    reads only its slices), or a preset initialised from the seed, with the configured
    attention implementation for the platform of the mesh's devices."""
    if config.model.hf_path:
        policy = _load_hf(config, "policy", mesh, rules)
    else:
        policy = models.Policy(model_config(config, vocab_size), rngs=nnx.Rngs(config.seed))
    platform = None if mesh is None else mesh.devices.flat[0].platform
    return _with_configured_attention(config, policy, platform)


def init_critic(
    config: ml_collections.ConfigDict,
    policy: models.Policy,
    mesh: jax.sharding.Mesh | None = None,
    rules: Any = None,
) -> models.Critic:
    """The initial critic: a local HF token-classification checkpoint (sharded like the
    policy's), or the policy's decoder with a fresh value head (outputs ~0), copied on the
    devices where the policy's parameters live (no host copy)."""
    if config.model.critic_hf_path:
        critic = _load_hf(config, "critic", mesh, rules)
        return models.with_attention(
            critic, policy.config.attention, policy.config.attention_block_size
        )
    return models.critic_from_policy(policy, rngs=nnx.Rngs(config.seed + 1))


@dataclasses.dataclass(frozen=True)
class Run:
    """The built pieces of one run, fixed for its lifetime. What grows as the run goes is
    `functions` (each compiled function on first use; the critic's graphdef once the critic
    exists, `RunFunctions.set_critic`).

    Attributes:
      config: the validated config (passed through: config.json, SFT, checkpoint metadata).
      settings: the typed settings the loop reads (`config.settings.RunSettings`).
      data: dataset, tokenizer and prompt formatter.
      mesh, rules: where the steps run.
      sampler: the rollout engine.
      pool: the grader's worker pool.
      eos_ids, pad_id: from the tokenizer.
      functions: the compiled steps and forwards, with the networks' graphdefs.
    """

    config: ml_collections.ConfigDict
    settings: RunSettings
    data: Data
    mesh: jax.sharding.Mesh
    rules: Any
    sampler: Sampler
    pool: GradingPool
    eos_ids: tuple[int, ...]
    pad_id: int
    functions: RunFunctions

    @property
    def method(self) -> Method:
        return self.settings.method

    @property
    def prompt_width(self) -> int:
        """P of every RL batch."""
        return self.settings.max_prompt_length

    @property
    def response_length(self) -> int:
        """L of every RL batch."""
        return self.settings.rollout.max_new_tokens

    @property
    def policy_graphdef(self) -> nnx.GraphDef:
        return self.functions.policy_graphdef

    @property
    def critic_graphdef(self) -> nnx.GraphDef | None:
        return self.functions.critic_graphdef

    # --- compiled functions, each built on first use (see tempo_jax.tempo.functions) --------

    def policy_step(self, state: train.TrainState, batch: RLBatch):
        batch, length = self.functions.bucketed(batch)
        step = self.functions.policy_step(state, batch.tokens.shape[0], length)
        return step(state, train.canonical_batch(batch))

    def critic_step(self, state: train.TrainState, batch: RLBatch):
        batch, length = self.functions.bucketed(batch)
        step = self.functions.critic_step(state, batch.tokens.shape[0], length)
        return step(state, train.canonical_batch(batch))

    def token_stats(self, params: nnx.State, seqs: Sequences) -> train.TokenStats:
        seqs, length = self.functions.bucketed(seqs)
        fn = self.functions.token_stats(params, seqs.tokens.shape[0], length)
        return self.functions.full_length(fn(params, train.canonical_batch(seqs)))

    def values(self, params: nnx.State, seqs: Sequences) -> jax.Array:
        seqs, length = self.functions.bucketed(seqs)
        fn = self.functions.values(params, seqs.tokens.shape[0], length)
        return self.functions.full_length(fn(params, train.canonical_batch(seqs)))

    def compile_counts(self) -> dict[str, int]:
        """Executables per compiled function (each should stay 1) plus the sampler's."""
        out = self.functions.compile_counts()
        out["sampler"] = self.sampler.num_compilations
        return out


def data_dir_for(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Where tfds builds the datasets: `config.data.dir`, else WORKDIR/data, else (a bucket
    workdir: tfds' array_record files need a local disk) a host-local cache named after the
    workdir. Datasets are rebuilt from the config, so a cache lost with its host costs time only.
    """
    if config.data.dir:
        return config.data.dir
    if storage.is_remote(workdir):
        digest = hashlib.sha256(workdir.encode("utf-8")).hexdigest()[:16]
        return os.path.join(tempfile.gettempdir(), "tempo_jax_data", digest)
    return os.path.join(workdir, "data")


def build_run(
    config: ml_collections.ConfigDict, workdir: str, settings: RunSettings | None = None
) -> tuple[Run, models.Policy]:
    """Builds the data (under `data_dir_for(config, workdir)`), the initial policy, the mesh,
    the sampler and the grader pool. `settings`: the config's (built here when not given).
    Returns the run and the initial policy module."""
    settings = settings or RunSettings.from_config(config)
    data_dir = data_dir_for(config, workdir)
    data_config = data_config_from(config)
    # Process 0 builds the dataset; the others then reuse it (a shared data_dir) or build their
    # own (a host-local one), never racing on the same files.
    if parallel.is_main_process():
        data = build_data(data_config, data_dir)
    parallel.sync_processes("tempo_jax.build_run: dataset built")
    if not parallel.is_main_process():
        data = build_data(data_config, data_dir)
    tokenizer = data.tokenizer
    mesh = parallel.make_mesh(config.parallel.mesh)
    rules = parallel.make_rules(config.parallel.rules)
    policy = init_policy(config, tokenizer.vocab_size, mesh, rules)
    log.info("attention: %s", policy.config.attention)
    if policy.config.vocab_size < tokenizer.vocab_size:
        raise ValueError(
            f"model vocabulary ({policy.config.vocab_size}) is smaller than the tokenizer's "
            f"({tokenizer.vocab_size}); check config.model / config.tokenizer"
        )
    policy_graphdef, _ = train.split_for_training(policy, settings.train)
    # The critic's graphdef is set when the critic is created (it needs a concrete module).
    eos_ids = tuple(int(e) for e in np.atleast_1d(tokenizer.eos_id))
    grader = settings.grader
    run = Run(
        config=config,
        settings=settings,
        data=data,
        mesh=mesh,
        rules=rules,
        sampler=make_sampler(settings, policy, mesh, rules, eos_ids, tokenizer.pad_id),
        pool=GradingPool(num_workers=grader.num_workers, timeout_s=grader.timeout_s),
        eos_ids=eos_ids,
        pad_id=tokenizer.pad_id,
        functions=RunFunctions.for_run(settings, mesh, rules, settings.train, policy_graphdef),
    )
    return run, policy
