"""The compiled functions of a run, built in one place for the loop and for `tempo-jax compile`.

`RunFunctions` turns (graphdef, settings, mesh, rules, sequence shape) into the `CompiledStep`s
the loop calls: each is `jax.jit` with its in / out shardings and example arguments whose batch
is abstract, so the same object is what the loop runs (`step(state, batch)`) and what the
compile report lowers without any data (`step.lower().compile()`, with an abstract state). Every
one is traced inside the run's activation-sharding context, which also lays out the splash
attention kernel per shard.

Length buckets: the update, log-prob and value passes of a batch [N, P + L] run on the smallest
response bucket l that holds its longest response (`train.length_buckets` below L, then L):
`bucketed` cuts its sequences to [N, P + l] and [N, l] (everything past is padding: response
masks are prefixes) and `full_length` pads forward outputs back to [N, L] with zeros. Masked
padding slots contribute exactly nothing to any loss or output, so a bucketed call equals the
full-length one up to float summation order. Each function compiles once per (rows, bucket).

`planned_calls(config)` lists every (function, shape) a run of `config` executes: the rollout,
evaluation and greedy samplers (one call per chunk shape; with `rollout.engine = paged` the
engine's prefill and multi-step decode of that chunk instead), the log-prob and value forwards and
the policy and critic steps (one call per row count and length bucket), and the SFT step. The
loop's calls must stay inside this list; the loop tests check that every function a run
compiled is one the plan names, so the two cannot drift.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from tempo_jax import parallel, train
from tempo_jax.config.settings import ConfigError, RunSettings, run_settings
from tempo_jax.parallel import compile_cache
from tempo_jax.sampling.sampler import chunk_prompts
from tempo_jax.train.batch import RLBatch

# Function names (the keys of `RunFunctions` caches and the report's rows).
POLICY_STEP = "policy_step"
CRITIC_STEP = "critic_step"
TOKEN_STATS = "token_stats"
VALUES = "values"
SAMPLER = "sampler"
SFT_STEP = "sft_step"
# The paged engine's (rollout.engine = paged) per chunk shape: its prefill and multi-step decode.
ENGINE_PREFILL = "engine_prefill"
ENGINE_DECODE = "engine_decode"
ENGINE_REFILL = "engine_refill"  # recompute preemption's prefill of readmitted rows
SAMPLERS = (SAMPLER, ENGINE_PREFILL, ENGINE_REFILL, ENGINE_DECODE)


@dataclasses.dataclass(frozen=True)
class Call:
    """One compiled function at one shape.

    Attributes:
      function: one of the names above.
      rows: N rows of the call (sampler: prompts x samples of one chunk).
      length: response slots l of a training function's batch (its length bucket; 0 for the
        sampler, which always has L, and for SFT).
      prompts: sampler only, B prompts of one chunk.
      samples: sampler only, n samples per prompt.
      purpose: what the run uses it for ("rollout", "eval", "eval greedy", "update", ...).
    """

    function: str
    rows: int
    length: int = 0
    prompts: int = 0
    samples: int = 0
    purpose: str = ""

    @property
    def key(self) -> str:
        if self.function in SAMPLERS:
            return f"{self.function}/{self.prompts}x{self.samples}"
        if self.length:
            return f"{self.function}/{self.rows}x{self.length}"
        return f"{self.function}/{self.rows}"


def length_buckets(settings: train.TrainSettings, response_length: int) -> tuple[int, ...]:
    """Response lengths the train / forward functions compile for: `settings.length_buckets`
    below L, then L."""
    shorter = tuple(b for b in settings.length_buckets if b < response_length)
    return (*shorter, response_length)


def planned_calls(
    config: ml_collections.ConfigDict | RunSettings,
    row_shards: int = 1,
    eval_problems: Sequence[int] | None = None,
) -> list[Call]:
    """Every (function, shape) a run of `config` executes, each once, in the order they first
    run (see `tempo_jax.tempo.phases` and `evaluation` for where each is called).

    Args:
      config: the run's config or its settings.
      row_shards: how many ways the mesh splits rows (`Sampler.row_shards`): the sampler pads
        a chunk's prompts to a count whose rows divide over them.
      eval_problems: the problems each evaluation samples (one batch per split: the first
        `eval.num_problems` of the split, fewer when the split is smaller); default
        `eval.num_problems`, which is what `tempo-jax compile` assumes without reading data.
    """
    settings = run_settings(config)
    method, rollout = settings.method, settings.rollout
    prompts, n = settings.prompts_per_step, rollout.n
    step_rows = prompts * n
    # Phased tempo may append the E-step's graded D_L rows to the M-step batch.
    doubled = settings.tempo.policy_trains_on_labeled and method.uses_critic
    refine_rows = 2 * step_rows if doubled else step_rows
    update_rows = settings.update_rows * (2 if doubled else 1)
    # Evaluation's forwards go in batches of one update's rows (tempo.evaluation).
    eval_rows = settings.update_rows
    buckets = length_buckets(settings.train, rollout.max_new_tokens)

    paged = rollout.engine == "paged"
    kinds = (SAMPLER,)
    if paged:
        refill = (ENGINE_REFILL,) if rollout.paged.preemption == "recompute" else ()
        kinds = (ENGINE_PREFILL, *refill, ENGINE_DECODE)

    def sampler(num_prompts: int, samples: int, purpose: str) -> list[Call]:
        chunk = chunk_prompts(num_prompts, samples, row_shards, rollout.rows_per_chunk)
        rows = chunk * samples
        return [Call(k, rows, prompts=chunk, samples=samples, purpose=purpose) for k in kinds]

    def trained(function: str, rows: int, purpose: str) -> list[Call]:
        return [Call(function, rows, length, purpose=purpose) for length in buckets]

    calls = []
    if settings.sft.steps > 0:
        calls.append(Call(SFT_STEP, settings.sft.batch_size, purpose="supervised fine-tuning"))
    calls += sampler(prompts, n, "rollout")
    if method.uses_critic:
        # tempo.critic_negatives appends corrupted rows to warm-up / E-step critic batches.
        estep_rows = step_rows + settings.tempo.critic_negatives
        calls += trained(VALUES, estep_rows, "critic targets")
        calls += trained(CRITIC_STEP, estep_rows, "E-step")
        if estep_rows != step_rows and settings.tempo.whiten_scope == "with_labeled":
            calls += trained(VALUES, step_rows, "labeled whitening")
        calls += trained(VALUES, refine_rows, "M-step baseline")
    calls += trained(TOKEN_STATS, refine_rows, "old log-probs")
    calls += trained(POLICY_STEP, update_rows, "M-step")
    if settings.eval_every > 0:
        for problems in eval_problems or (settings.eval.num_problems,):
            calls += sampler(problems, settings.eval.n, "eval")
            if settings.eval.greedy:
                calls += sampler(problems, 1, "eval greedy")
        calls += trained(TOKEN_STATS, eval_rows, "eval entropy")
        if method.uses_critic:
            calls += trained(VALUES, eval_rows, "eval critic")
    unique: dict[str, Call] = {}
    for call in calls:
        unique.setdefault(call.key, call)
    return list(unique.values())


def check_critic_rows(settings: RunSettings, mesh: jax.sharding.Mesh, rules: Any) -> None:
    """The critic batches that `tempo.critic_negatives` = K lengthens (N + K rows, N =
    data.prompts_per_step x rollout.n) split into micro-batches over the mesh's row shards, as
    every batch must; checked before anything compiles.

    Raises:
      ConfigError: naming tempo.critic_negatives, the row counts and the shards.
    """
    negatives = settings.tempo.critic_negatives
    if not negatives:
        return
    step_rows = settings.prompts_per_step * settings.rollout.n
    rows = step_rows + negatives
    try:
        micro_batches = train.micro_batches_for(settings.train, rows)
        train.compiled.check_micro_batches(rows, micro_batches, mesh, rules)
    except ValueError as e:
        raise ConfigError(
            f"config.tempo.critic_negatives = {negatives} makes critic batches of {rows} rows "
            f"(N = data.prompts_per_step x rollout.n = {step_rows}, plus K), which do not "
            f"divide over the mesh: {e}"
        ) from e


def abstract_batch(rows: int, prompt_width: int, response_length: int) -> RLBatch:
    """An RLBatch of `jax.ShapeDtypeStruct`s in the canonical dtypes: [rows, P + L] sequences."""
    width = prompt_width + response_length

    def like(shape, name):
        return jax.ShapeDtypeStruct(shape, train.compiled.BATCH_DTYPES[name])

    token_fields = ("old_logprobs", "advantages", "returns", "old_values")
    return RLBatch(
        tokens=like((rows, width), "tokens"),
        attention_mask=like((rows, width), "attention_mask"),
        response_mask=like((rows, response_length), "response_mask"),
        **{name: like((rows, response_length), name) for name in token_fields},
        is_labeled=like((rows,), "is_labeled"),
        keep=like((rows,), "keep"),
    )


def _abstract(tree: Any) -> Any:
    """`tree` as ShapeDtypeStructs with each leaf's sharding (None where it has none)."""

    def leaf(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))

    return jax.tree.map(leaf, tree)


@dataclasses.dataclass
class RunFunctions:
    """The compiled step functions of one run (each built once per row count and length
    bucket, on first use).

    Attributes:
      mesh, rules: where they run.
      settings: validated train settings.
      policy_graphdef: from `train.split_for_training(policy, settings)`.
      critic_graphdef: likewise for the critic (None until the critic exists, or without one:
        `set_critic`).
      prompt_width, response_length: P and L of every batch.
    """

    mesh: jax.sharding.Mesh
    rules: Any
    settings: train.TrainSettings
    policy_graphdef: nnx.GraphDef
    critic_graphdef: nnx.GraphDef | None
    prompt_width: int
    response_length: int
    compiled: dict[str, train.CompiledStep] = dataclasses.field(default_factory=dict)

    @classmethod
    def for_run(
        cls,
        config: ml_collections.ConfigDict | RunSettings,
        mesh: jax.sharding.Mesh,
        rules: Any,
        settings: train.TrainSettings,
        policy_graphdef: nnx.GraphDef,
        critic_graphdef: nnx.GraphDef | None = None,
    ) -> RunFunctions:
        """The functions of a run of `config` (its config or settings: P and L from its data and
        rollout sections)."""
        shape = run_settings(config)
        check_critic_rows(shape, mesh, rules)
        return cls(
            mesh=mesh,
            rules=rules,
            settings=settings,
            policy_graphdef=policy_graphdef,
            critic_graphdef=critic_graphdef,
            prompt_width=shape.max_prompt_length,
            response_length=shape.rollout.max_new_tokens,
        )

    def set_critic(self, graphdef: nnx.GraphDef) -> None:
        """The critic's graphdef, once the critic exists (its functions compile after this)."""
        self.critic_graphdef = graphdef

    # --- length buckets (module docstring) ----------------------------------------------------

    @property
    def length_buckets(self) -> tuple[int, ...]:
        """Response lengths the functions compile for, ending with L."""
        return length_buckets(self.settings, self.response_length)

    def bucket_for(self, response_mask) -> int:
        """The smallest length bucket holding every response of a [N, L] mask."""
        columns = np.flatnonzero(np.asarray(response_mask).any(axis=0))
        longest = int(columns[-1]) + 1 if len(columns) else 1
        return next(b for b in self.length_buckets if b >= longest)

    def bucketed(self, batch):
        """(the RLBatch / Sequences cut to its length bucket, the bucket)."""
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

    def full_length(self, tree):
        """Forward outputs [N, l] padded with zeros to [N, L]."""

        def pad(x):
            return jnp.pad(x, ((0, 0), (0, self.response_length - x.shape[1])))

        return jax.tree.map(pad, tree)

    # --- the compiled functions ---------------------------------------------------------------

    def _get(self, name: str, compile_fn, make, graphdef, example, rows: int, length: int):
        """The `compile_fn` (compile_train_step / compile_forward) of `make(graphdef, settings)`
        for `rows` rows of `length` response slots, built on first use."""
        key = Call(name, rows, length).key
        if key not in self.compiled:
            batch = abstract_batch(rows, self.prompt_width, length)
            if compile_fn is train.compile_forward:
                batch = batch.sequences()
            # This row count's micro-batches (train.micro_batch_rows fixes their size).
            micro_batches = train.micro_batches_for(self.settings, rows)
            settings = dataclasses.replace(self.settings, micro_batches=micro_batches)
            # Shared with the other runs of the process (parallel.compile_cache); the example
            # is kept abstract, so the cache holds no arrays of a finished run.
            example = _abstract(example)
            rules = parallel.rules_key(self.rules)
            shapes = compile_cache.tree_key((example, batch))
            self.compiled[key] = compile_cache.shared(
                (name, graphdef, settings, self.mesh, rules, shapes),
                lambda: compile_fn(
                    make(graphdef, settings),
                    example,
                    batch,
                    self.mesh,
                    self.rules,
                    micro_batches=micro_batches,
                    name=name,
                ),
            )
        return self.compiled[key]

    def policy_step(self, state: train.TrainState, rows: int, length: int) -> train.CompiledStep:
        """`(policy TrainState, RLBatch [rows, l = length]) -> (state, metrics)`; `state` may
        be abstract."""
        make, graphdef = train.make_policy_step, self.policy_graphdef
        return self._get(POLICY_STEP, train.compile_train_step, make, graphdef, state, rows, length)

    def critic_step(self, state: train.TrainState, rows: int, length: int) -> train.CompiledStep:
        """`(critic TrainState, RLBatch [rows, l = length]) -> (state, metrics)`; `state` may
        be abstract."""
        make, graphdef = train.make_critic_step, self.critic_graphdef
        return self._get(CRITIC_STEP, train.compile_train_step, make, graphdef, state, rows, length)

    def token_stats(self, params: nnx.State, rows: int, length: int) -> train.CompiledStep:
        """`(policy params, Sequences [rows, l = length]) -> TokenStats [rows, l]`."""
        make, graphdef = train.make_policy_token_stats_fn, self.policy_graphdef
        return self._get(TOKEN_STATS, train.compile_forward, make, graphdef, params, rows, length)

    def values(self, params: nnx.State, rows: int, length: int) -> train.CompiledStep:
        """`(critic params, Sequences [rows, l = length]) -> values [rows, l]`."""
        make, graphdef = train.make_critic_values_fn, self.critic_graphdef
        return self._get(VALUES, train.compile_forward, make, graphdef, params, rows, length)

    def compile_counts(self) -> dict[str, int]:
        """Executables per compiled function (each should stay 1)."""
        return {k: v.cache_size() for k, v in self.compiled.items()}
