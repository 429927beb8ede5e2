"""The compiled functions of a run, built in one place for the loop and for `tempo-jax compile`.

`RunFunctions` turns (graphdef, settings, mesh, rules, sequence shape) into the `CompiledStep`s
the loop calls: each is `jax.jit` with its in / out shardings and example arguments whose batch
is abstract, so the same object is what the loop runs (`step(state, batch)`) and what the
compile report lowers without any data (`step.lower().compile()`, with an abstract state).

`planned_calls(config)` lists every (function, shape) a run of `config` executes: the rollout,
evaluation and greedy samplers, the log-prob and value forwards, the policy and critic steps
(one row count each) and the SFT step. The loop's calls must stay inside this list; the loop
tests check that every function a run compiled is one the plan names, so the two cannot drift.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
from flax import nnx

from tempo_jax import train
from tempo_jax.sampling.sampler import divisible_prompts
from tempo_jax.tempo.methods import get_method
from tempo_jax.train.batch import RLBatch

# Function names (the keys of `RunFunctions` caches and the report's rows).
POLICY_STEP = "policy_step"
CRITIC_STEP = "critic_step"
TOKEN_STATS = "token_stats"
VALUES = "values"
SAMPLER = "sampler"
SFT_STEP = "sft_step"


@dataclasses.dataclass(frozen=True)
class Call:
    """One compiled function at one shape.

    Attributes:
      function: one of the names above.
      rows: N rows of the call (sampler: prompts x samples).
      prompts: sampler only, B prompts.
      samples: sampler only, n samples per prompt.
      purpose: what the run uses it for ("rollout", "eval", "eval greedy", "update", ...).
    """

    function: str
    rows: int
    prompts: int = 0
    samples: int = 0
    purpose: str = ""

    @property
    def key(self) -> str:
        if self.function == SAMPLER:
            return f"{SAMPLER}/{self.prompts}x{self.samples}"
        return f"{self.function}/{self.rows}"


def planned_calls(config: ml_collections.ConfigDict, row_shards: int = 1) -> list[Call]:
    """Every (function, shape) a run of `config` executes, each once, in the order they first
    run (see `tempo_jax.tempo.phases` and `evaluation` for where each is called).

    Args:
      config: the run's config.
      row_shards: how many ways the mesh splits rows (`Sampler.row_shards`): evaluation pads
        its prompts to a count whose rows divide over them.
    """
    method = get_method(config.method)
    prompts, n = config.data.prompts_per_step, config.rollout.n
    step_rows = prompts * n
    # Phased tempo may append the E-step's graded D_L rows to the M-step batch.
    doubled = config.tempo.policy_trains_on_labeled and method.uses_critic
    refine_rows = 2 * step_rows if doubled else step_rows
    per_update = config.data.prompts_per_update or prompts
    update_rows = per_update * n * (2 if doubled else 1)
    calls = []
    if config.sft.steps > 0:
        calls.append(Call(SFT_STEP, config.sft.batch_size, purpose="supervised fine-tuning"))
    calls.append(Call(SAMPLER, step_rows, prompts, n, "rollout"))
    if method.uses_critic:
        calls.append(Call(VALUES, step_rows, purpose="critic targets"))
        calls.append(Call(CRITIC_STEP, step_rows, purpose="E-step"))
        calls.append(Call(VALUES, refine_rows, purpose="M-step baseline"))
    calls.append(Call(TOKEN_STATS, refine_rows, purpose="old log-probs"))
    calls.append(Call(POLICY_STEP, update_rows, purpose="M-step"))
    if config.eval_every > 0:
        for samples, purpose in ((config.eval.n, "eval"), (1, "eval greedy")):
            if samples == 1 and not config.eval.greedy:
                continue
            padded = divisible_prompts(prompts, samples, row_shards)
            calls.append(Call(SAMPLER, padded * samples, padded, samples, purpose))
        calls.append(Call(TOKEN_STATS, step_rows, purpose="eval entropy"))
        if method.uses_critic:
            calls.append(Call(VALUES, step_rows, purpose="eval critic"))
    unique: dict[str, Call] = {}
    for call in calls:
        unique.setdefault(call.key, call)
    return list(unique.values())


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


@dataclasses.dataclass
class RunFunctions:
    """The compiled step functions of one run (each built once per row count, on first use).

    Attributes:
      mesh, rules: where they run.
      settings: validated train settings.
      policy_graphdef: from `train.split_for_training(policy, settings)`.
      critic_graphdef: likewise for the critic (None until the critic exists, or without one).
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
        config: ml_collections.ConfigDict,
        mesh: jax.sharding.Mesh,
        rules: Any,
        settings: train.TrainSettings,
        policy_graphdef: nnx.GraphDef,
        critic_graphdef: nnx.GraphDef | None = None,
    ) -> RunFunctions:
        """The functions of a run of `config` (P and L from its data and rollout sections)."""
        return cls(
            mesh=mesh,
            rules=rules,
            settings=settings,
            policy_graphdef=policy_graphdef,
            critic_graphdef=critic_graphdef,
            prompt_width=config.data.max_prompt_length,
            response_length=config.rollout.max_new_tokens,
        )

    def _get(self, name: str, compile_fn, make, graphdef, example, rows: int):
        """The `compile_fn` (compile_train_step / compile_forward) of `make(graphdef, settings)`
        for `rows` rows, built on first use."""
        key = Call(name, rows).key
        if key not in self.compiled:
            batch = abstract_batch(rows, self.prompt_width, self.response_length)
            if compile_fn is train.compile_forward:
                batch = batch.sequences()
            # This row count's micro-batches (train.micro_batch_rows fixes their size).
            micro_batches = train.micro_batches_for(self.settings, rows)
            settings = dataclasses.replace(self.settings, micro_batches=micro_batches)
            self.compiled[key] = compile_fn(
                make(graphdef, settings),
                example,
                batch,
                self.mesh,
                self.rules,
                micro_batches=micro_batches,
                name=name,
            )
        return self.compiled[key]

    def _step(self, name: str, make, graphdef, state: train.TrainState, rows: int):
        return self._get(name, train.compile_train_step, make, graphdef, state, rows)

    def _forward(self, name: str, make, graphdef, params: nnx.State, rows: int):
        return self._get(name, train.compile_forward, make, graphdef, params, rows)

    def policy_step(self, state: train.TrainState, rows: int) -> train.CompiledStep:
        """`(policy TrainState, RLBatch [rows]) -> (state, metrics)`; `state` may be abstract."""
        return self._step(POLICY_STEP, train.make_policy_step, self.policy_graphdef, state, rows)

    def critic_step(self, state: train.TrainState, rows: int) -> train.CompiledStep:
        """`(critic TrainState, RLBatch [rows]) -> (state, metrics)`; `state` may be abstract."""
        return self._step(CRITIC_STEP, train.make_critic_step, self.critic_graphdef, state, rows)

    def token_stats(self, params: nnx.State, rows: int) -> train.CompiledStep:
        """`(policy params, Sequences [rows]) -> TokenStats [rows, L]`."""
        return self._forward(
            TOKEN_STATS, train.make_policy_token_stats_fn, self.policy_graphdef, params, rows
        )

    def values(self, params: nnx.State, rows: int) -> train.CompiledStep:
        """`(critic params, Sequences [rows]) -> values [rows, L]`."""
        return self._forward(
            VALUES, train.make_critic_values_fn, self.critic_graphdef, params, rows
        )

    def compile_counts(self) -> dict[str, int]:
        """Executables per compiled function (each should stay 1)."""
        return {k: v.cache_size() for k, v in self.compiled.items()}
