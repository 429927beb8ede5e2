"""Everything a run needs, built once from the config: data, models, mesh, sampler, grader, and
the compiled step functions (compiled lazily on first use, each exactly once)."""

from __future__ import annotations

import contextlib
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
from tempo_jax.models import attention
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


def attention_implementation(config: ml_collections.ConfigDict, platform: str | None = None):
    """`model.attention` with `auto` resolved for `platform` (default: JAX's default backend)."""
    return attention.resolve(config.model.attention, platform, config.model.compute_dtype)


def _with_configured_attention(config, model, platform: str | None):
    return models.with_attention(
        model, attention_implementation(config, platform), config.model.attention_block_size
    )


def init_policy(
    config: ml_collections.ConfigDict, vocab_size: int, platform: str | None = None
) -> models.Policy:
    """The initial policy: a local HF checkpoint, or a preset initialised from the seed, with
    the configured attention implementation for `platform` (the mesh's devices)."""
    if config.model.hf_path:
        policy = models.load_hf(
            config.model.hf_path,
            role="policy",
            dtype=config.model.compute_dtype,
            param_dtype=config.model.param_dtype,
        )
    else:
        policy = models.Policy(model_config(config, vocab_size), rngs=nnx.Rngs(config.seed))
    return _with_configured_attention(config, policy, platform)


def init_critic(config: ml_collections.ConfigDict, policy: models.Policy) -> models.Critic:
    """The initial critic: a local HF token-classification checkpoint, or the policy's decoder
    with a fresh value head (outputs ~0)."""
    if config.model.critic_hf_path:
        critic = models.load_hf(
            config.model.critic_hf_path,
            role="critic",
            dtype=config.model.compute_dtype,
            param_dtype=config.model.param_dtype,
        )
        return models.with_attention(
            critic, policy.config.attention, policy.config.attention_block_size
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
    #
    # Length buckets: a batch [N, P + L] runs on the smallest response bucket l that holds its
    # longest response (`train.length_buckets` below L, then L): its sequences are cut to
    # [N, P + l] and [N, l] (everything past is padding: response masks are prefixes), and
    # forward outputs are padded back to [N, L] with zeros. Masked padding slots contribute
    # exactly nothing to any loss or output, so a bucketed call equals the full-length one up
    # to float summation order. Each function compiles once per (rows, bucket).

    @property
    def length_buckets(self) -> tuple[int, ...]:
        """Response lengths the train / forward functions compile for, ending with L."""
        shorter = tuple(b for b in self.settings.length_buckets if b < self.response_length)
        return (*shorter, self.response_length)

    def bucket_for(self, response_mask) -> int:
        """The smallest length bucket holding every response of a [N, L] mask."""
        columns = np.flatnonzero(np.asarray(response_mask).any(axis=0))
        longest = int(columns[-1]) + 1 if len(columns) else 1
        return next(b for b in self.length_buckets if b >= longest)

    def _bucketed(self, batch):
        """(the batch cut to its length bucket, the bucket)."""
        length = self.bucket_for(batch.response_mask)
        if length == batch.response_length:
            return batch, length
        width = batch.prompt_length + length
        changes = {
            "tokens": batch.tokens[:, :width],
            "attention_mask": batch.attention_mask[:, :width],
        }
        for name in ("response_mask", "old_logprobs", "advantages", "returns", "old_values"):
            if hasattr(batch, name):
                changes[name] = getattr(batch, name)[:, :length]
        return batch.replace(**changes), length

    def _full_length(self, tree):
        """Forward outputs [N, l] padded with zeros to [N, L]."""

        def pad(x):
            return jnp.pad(x, ((0, 0), (0, self.response_length - x.shape[1])))

        return jax.tree.map(pad, tree)

    def _example_batch(self, rows: int, length: int) -> RLBatch:
        s = self.prompt_width + length
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

    def _train_step(self, name: str, make, graphdef, state: train.TrainState, batch: RLBatch):
        batch, length = self._bucketed(batch)
        rows = batch.tokens.shape[0]
        step = self._get(
            f"{name}/{rows}x{length}",
            lambda: train.compile_train_step(
                make(graphdef, self.settings),
                state,
                self._example_batch(rows, length),
                self.mesh,
                self.rules,
                micro_batches=self.settings.micro_batches,
                name=name,
            ),
        )
        with self._kernel_mesh():
            return step(state, train.canonical_batch(batch))

    def _kernel_mesh(self):
        """The mesh as tracing context when attention is a Pallas kernel, which then runs per
        shard (`tempo_jax.models.attention.splash_attention`); a no-op otherwise."""
        if self.sampler.config.attention == "splash":
            return jax.set_mesh(self.mesh)
        return contextlib.nullcontext()

    def _forward(self, name: str, make, graphdef, params: nnx.State, seqs: Sequences):
        seqs, length = self._bucketed(seqs)
        rows = seqs.tokens.shape[0]
        fn = self._get(
            f"{name}/{rows}x{length}",
            lambda: train.compile_forward(
                make(graphdef, self.settings),
                params,
                self._example_batch(rows, length).sequences(),
                self.mesh,
                self.rules,
                micro_batches=self.settings.micro_batches,
                name=name,
            ),
        )
        with self._kernel_mesh():
            out = fn(params, train.canonical_batch(seqs))
        return self._full_length(out)

    def policy_step(self, state: train.TrainState, batch: RLBatch):
        return self._train_step(
            "policy_step", train.make_policy_step, self.policy_graphdef, state, batch
        )

    def critic_step(self, state: train.TrainState, batch: RLBatch):
        return self._train_step(
            "critic_step", train.make_critic_step, self.critic_graphdef, state, batch
        )

    def token_stats(self, params: nnx.State, seqs: Sequences) -> train.TokenStats:
        make = train.make_policy_token_stats_fn
        return self._forward("token_stats", make, self.policy_graphdef, params, seqs)

    def values(self, params: nnx.State, seqs: Sequences) -> jax.Array:
        make = train.make_critic_values_fn
        return self._forward("critic_values", make, self.critic_graphdef, params, seqs)

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
    mesh = parallel.make_mesh(config.parallel.mesh)
    policy = init_policy(config, tokenizer.vocab_size, mesh.devices.flat[0].platform)
    log.info("attention: %s", policy.config.attention)
    if policy.config.vocab_size < tokenizer.vocab_size:
        raise ValueError(
            f"model vocabulary ({policy.config.vocab_size}) is smaller than the tokenizer's "
            f"({tokenizer.vocab_size}); check config.model / config.tokenizer"
        )
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
        max_rows_per_chunk=config.rollout.max_rows_per_chunk or None,
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
