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
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from tempo_jax import models, parallel, train
from tempo_jax.data.pipeline import Data, build_data, data_config_from
from tempo_jax.rewards.grading_pool import GradingPool
from tempo_jax.sampling import Sampler
from tempo_jax.tempo.methods import Method, get_method
from tempo_jax.train import storage
from tempo_jax.train.batch import RLBatch, Sequences

log = logging.getLogger(__name__)


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> models.ModelConfig:
    """The policy's architecture: a preset with overrides (vocabulary from the tokenizer)."""
    overrides = dict(config.model.overrides.to_dict()) if "overrides" in config.model else {}
    if config.model.preset in ("tiny", "tiny_olmo3") or overrides.get("vocab_size") is None:
        overrides.setdefault("vocab_size", vocab_size)
    overrides["dtype"] = config.model.compute_dtype
    overrides["param_dtype"] = config.model.param_dtype
    return models.get_preset(config.model.preset, **overrides)


def init_policy(config: ml_collections.ConfigDict, vocab_size: int) -> models.Policy:
    """The initial policy: a local HF checkpoint, or a preset initialised from the seed."""
    if config.model.hf_path:
        return models.load_hf(
            config.model.hf_path,
            role="policy",
            dtype=config.model.compute_dtype,
            param_dtype=config.model.param_dtype,
        )
    return models.Policy(model_config(config, vocab_size), rngs=nnx.Rngs(config.seed))


def init_critic(config: ml_collections.ConfigDict, policy: models.Policy) -> models.Critic:
    """The initial critic: a local HF token-classification checkpoint, or the policy's decoder
    with a fresh value head (outputs ~0)."""
    if config.model.critic_hf_path:
        return models.load_hf(
            config.model.critic_hf_path,
            role="critic",
            dtype=config.model.compute_dtype,
            param_dtype=config.model.param_dtype,
        )
    return models.critic_from_policy(policy, rngs=nnx.Rngs(config.seed + 1))


@dataclasses.dataclass
class Run:
    """The built pieces of one run (static over its lifetime).

    Attributes:
      config: the validated config.
      method: the method row of the registry.
      data: dataset, tokenizer and prompt formatter.
      mesh, rules: where the steps run.
      settings: validated train settings.
      policy_graphdef, critic_graphdef: model structures (critic None for critic-free methods).
      sampler: the rollout engine.
      pool: the grader's worker pool.
      prompt_width, response_length: P and L of every RL batch.
      eos_ids, pad_id: from the tokenizer.
    """

    config: ml_collections.ConfigDict
    method: Method
    data: Data
    mesh: jax.sharding.Mesh
    rules: Any
    settings: train.TrainSettings
    policy_graphdef: nnx.GraphDef
    critic_graphdef: nnx.GraphDef | None
    sampler: Sampler
    pool: GradingPool
    prompt_width: int
    response_length: int
    eos_ids: tuple[int, ...]
    pad_id: int
    _compiled: dict[str, train.CompiledStep] = dataclasses.field(default_factory=dict)

    # --- compiled functions, each built on first use from an example and never again --------

    def _example_batch(self, rows: int) -> RLBatch:
        s, length = self.prompt_width + self.response_length, self.response_length
        zeros = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)  # noqa: E731
        return RLBatch(
            tokens=zeros((rows, s), jnp.int32),
            attention_mask=zeros((rows, s), jnp.bool_),
            response_mask=zeros((rows, length), jnp.bool_),
            old_logprobs=zeros((rows, length), jnp.float32),
            advantages=zeros((rows, length), jnp.float32),
            returns=zeros((rows, length), jnp.float32),
            old_values=zeros((rows, length), jnp.float32),
            is_labeled=zeros((rows,), jnp.bool_),
            keep=zeros((rows,), jnp.bool_),
        )

    def _get(self, key: str, build):
        if key not in self._compiled:
            self._compiled[key] = build()
        return self._compiled[key]

    def policy_step(self, state: train.TrainState, batch: RLBatch):
        rows = batch.tokens.shape[0]
        step = self._get(
            f"policy_step/{rows}",
            lambda: train.compile_train_step(
                train.make_policy_step(self.policy_graphdef, self.settings),
                state,
                self._example_batch(rows),
                self.mesh,
                self.rules,
                micro_batches=self.settings.micro_batches,
                name="policy_step",
            ),
        )
        return step(state, train.canonical_batch(batch))

    def critic_step(self, state: train.TrainState, batch: RLBatch):
        rows = batch.tokens.shape[0]
        step = self._get(
            f"critic_step/{rows}",
            lambda: train.compile_train_step(
                train.make_critic_step(self.critic_graphdef, self.settings),
                state,
                self._example_batch(rows),
                self.mesh,
                self.rules,
                micro_batches=self.settings.micro_batches,
                name="critic_step",
            ),
        )
        return step(state, train.canonical_batch(batch))

    def token_stats(self, params: nnx.State, seqs: Sequences) -> train.TokenStats:
        rows = seqs.tokens.shape[0]
        fn = self._get(
            f"token_stats/{rows}",
            lambda: train.compile_forward(
                train.make_policy_token_stats_fn(self.policy_graphdef, self.settings),
                params,
                self._example_batch(rows).sequences(),
                self.mesh,
                self.rules,
                micro_batches=self.settings.micro_batches,
                name="token_stats",
            ),
        )
        return fn(params, train.canonical_batch(seqs))

    def values(self, params: nnx.State, seqs: Sequences) -> jax.Array:
        rows = seqs.tokens.shape[0]
        fn = self._get(
            f"values/{rows}",
            lambda: train.compile_forward(
                train.make_critic_values_fn(self.critic_graphdef, self.settings),
                params,
                self._example_batch(rows).sequences(),
                self.mesh,
                self.rules,
                micro_batches=self.settings.micro_batches,
                name="critic_values",
            ),
        )
        return fn(params, train.canonical_batch(seqs))

    def compile_counts(self) -> dict[str, int]:
        """Executables per compiled function (each should stay 1) plus the sampler's."""
        out = {k: v.cache_size() for k, v in self._compiled.items()}
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


def build_run(config: ml_collections.ConfigDict, workdir: str) -> tuple[Run, models.Policy]:
    """Builds the data (under `data_dir_for(config, workdir)`), the initial policy, the mesh,
    the sampler and the grader pool. Returns the run and the initial policy module."""
    method = get_method(config.method)
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
    policy = init_policy(config, tokenizer.vocab_size)
    if policy.config.vocab_size < tokenizer.vocab_size:
        raise ValueError(
            f"model vocabulary ({policy.config.vocab_size}) is smaller than the tokenizer's "
            f"({tokenizer.vocab_size}); check config.model / config.tokenizer"
        )
    mesh = parallel.make_mesh(config.parallel.mesh)
    rules = parallel.make_rules(config.parallel.rules)
    settings = train.settings_from_config(config.train)
    policy_graphdef, _ = train.split_for_training(policy, settings)
    # The critic's graphdef is set when the critic is created (it needs a concrete module).
    eos_ids = tuple(int(e) for e in np.atleast_1d(tokenizer.eos_id))
    sampler = Sampler(
        policy,
        max_new_tokens=config.rollout.max_new_tokens,
        max_prompt_length=config.data.max_prompt_length,
        eos_ids=eos_ids,
        pad_id=tokenizer.pad_id,
        max_top_k=max(1, min(64, config.rollout.top_k or 64)),
        mesh=mesh,
        rules=rules,
    )
    pool = GradingPool(num_workers=config.grader.num_workers, timeout_s=config.grader.timeout_s)
    run = Run(
        config=config,
        method=method,
        data=data,
        mesh=mesh,
        rules=rules,
        settings=settings,
        policy_graphdef=policy_graphdef,
        critic_graphdef=None,
        sampler=sampler,
        pool=pool,
        prompt_width=config.data.max_prompt_length,
        response_length=config.rollout.max_new_tokens,
        eos_ids=eos_ids,
        pad_id=tokenizer.pad_id,
    )
    return run, policy
