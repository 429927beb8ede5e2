"""Typed run settings: the config sections the loop reads, as frozen dataclasses built once.

`RunSettings.from_config(config)` reads `rollout`, `tempo`, `grader`, `eval`, `checkpoint`,
`sft`, the step shape of `data` and the top-level fields into one hashable value (fields missing
from `config` take `defaults.get_config()`'s values, so defaults.py stays the one place they are
written). Each section checks its own fields in `__post_init__` and `RunSettings` checks what
ties sections together; every error is a `ConfigError` naming the field (`config.rollout.top_p
must be in (0, 1], got 0.0`). `validation.validate` runs these checks before anything is built.

Conventions turned into values once, here: `rollout.max_rows_per_chunk = 0` (whole batch) is
`RolloutSettings.rows_per_chunk = None`, `rollout.top_k = 0` (off) gives `max_top_k = 64`, and
`data.prompts_per_update = 0` (whole step) is `RunSettings.update_prompts = prompts_per_step`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from tempo_jax import train
from tempo_jax.config.defaults import get_config as default_config
from tempo_jax.config.methods import HIDDEN_TERMINAL, METHODS, MIXED, Method, get_method

ADVANTAGES = ("em_token", "em_outcome")
WHITEN_SCOPES = ("batch", "with_labeled", "question")
ROLLOUT_ENGINES = ("static", "paged")
DECODE_LAYOUTS = ("auto", "replicated", "tensor")  # aot.rollout_estimates.LAYOUTS
PREEMPTIONS = ("recompute", "restart")  # sampling.engine.PREEMPTIONS
KEEP_BEST_MODES = ("max", "min")
MAX_TOP_K = 64  # the samplers' top-k bound; rollout.top_k = 0 (off) samples from it


class ConfigError(ValueError):
    """An invalid config; the message names the field."""


def require(ok: bool, field: str, why: str) -> None:
    """Raises ConfigError "config.<field> <why>" unless `ok`."""
    if not ok:
        raise ConfigError(f"config.{field} {why}")


def require_int(value: Any, field: str, minimum: int = 1) -> None:
    """`value` is an int (not a bool) >= `minimum`, else ConfigError naming `field`."""
    require(
        isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
        field,
        f"must be an int >= {minimum}, got {value!r}",
    )


def require_choice(value: Any, field: str, choices: tuple[str, ...]) -> None:
    require(value in choices, field, f"must be one of {choices}, got {value!r}")


def _section(config: Any, name: str, cls: type, defaults: Any) -> dict[str, Any]:
    """Section `name` of `config` over its defaults, as keyword arguments of `cls` (nested
    sections stay mappings); unknown fields fail, naming them."""
    merged = defaults.to_dict() if hasattr(defaults, "to_dict") else dict(defaults)
    given = config.get(name) if config is not None else None
    if given is not None:
        given = given.to_dict() if hasattr(given, "to_dict") else dict(given)
        merged.update(given)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(merged) - fields)
    require(not unknown, name, f"has unknown fields {unknown}; known: {sorted(fields)}")
    return merged


@dataclasses.dataclass(frozen=True)
class PagedSettings:
    """`rollout.paged`: the paged engine's KV pages and decode layout (defaults.py comments)."""

    page_size: int
    num_slots: int  # 0 = every row of a chunk (the engine resolves it)
    num_pages: int  # pool pages a row shard (0 = from free HBM; CPU: full rows)
    steps_per_call: int
    decode_layout: str
    decode_tensor: int
    preemption: str

    def __post_init__(self):
        require_int(self.page_size, "rollout.paged.page_size")
        require_int(self.num_slots, "rollout.paged.num_slots", 0)
        require_int(self.num_pages, "rollout.paged.num_pages", 0)
        require_int(self.steps_per_call, "rollout.paged.steps_per_call")
        require_choice(self.decode_layout, "rollout.paged.decode_layout", DECODE_LAYOUTS)
        require_int(self.decode_tensor, "rollout.paged.decode_tensor", 0)
        require_choice(self.preemption, "rollout.paged.preemption", PREEMPTIONS)


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
    """`rollout`: how the policy samples its training rollouts."""

    n: int
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    max_rows_per_chunk: int
    engine: str
    paged: PagedSettings
    max_generation_batches: int

    def __post_init__(self):
        require_int(self.n, "rollout.n")
        require(
            self.temperature >= 0, "rollout.temperature", f"must be >= 0, got {self.temperature}"
        )
        require(0 < self.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {self.top_p}")
        require(
            0 <= self.top_k <= MAX_TOP_K,
            "rollout.top_k",
            f"must be in [0, {MAX_TOP_K}] (0 = off), got {self.top_k}",
        )
        require_int(self.max_new_tokens, "rollout.max_new_tokens")
        require_int(self.max_rows_per_chunk, "rollout.max_rows_per_chunk", 0)
        require_choice(self.engine, "rollout.engine", ROLLOUT_ENGINES)
        require_int(self.max_generation_batches, "rollout.max_generation_batches")

    @property
    def rows_per_chunk(self) -> int | None:
        """Rows per compiled sampler call; None = the whole batch (`max_rows_per_chunk = 0`)."""
        return self.max_rows_per_chunk or None

    @property
    def max_top_k(self) -> int:
        """The samplers' top-k bound: `top_k`, or all of `MAX_TOP_K` when top-k is off."""
        return max(1, min(MAX_TOP_K, self.top_k or MAX_TOP_K))


@dataclasses.dataclass(frozen=True)
class TempoSettings:
    """`tempo`: the TEMPO schedule (E-steps, critic updates, whitening, the oracle's flips)."""

    advantage: str
    recalibrate_every: int
    mixed_recalibrate_every: int
    critic_updates: int
    critic_warmup_steps: int
    policy_trains_on_labeled: bool
    whiten_scope: str
    estep_group_filter: bool
    critic_negatives: int
    critic_sft_steps: int
    oracle_flip_prob: float

    def __post_init__(self):
        require_choice(self.advantage, "tempo.advantage", ADVANTAGES)
        require_int(self.recalibrate_every, "tempo.recalibrate_every")
        require_int(self.mixed_recalibrate_every, "tempo.mixed_recalibrate_every")
        require_int(self.critic_updates, "tempo.critic_updates")
        require_int(self.critic_warmup_steps, "tempo.critic_warmup_steps", 0)
        require_choice(self.whiten_scope, "tempo.whiten_scope", WHITEN_SCOPES)
        require(
            isinstance(self.estep_group_filter, bool),
            "tempo.estep_group_filter",
            f"must be a bool, got {self.estep_group_filter!r}",
        )
        require_int(self.critic_negatives, "tempo.critic_negatives", 0)
        require_int(self.critic_sft_steps, "tempo.critic_sft_steps", 0)
        flip = self.oracle_flip_prob
        require(
            isinstance(flip, int | float) and 0.0 <= flip <= 1.0,
            "tempo.oracle_flip_prob",
            f"must be in [0, 1], got {flip!r}",
        )


@dataclasses.dataclass(frozen=True)
class GraderSettings:
    """`grader`: the grading pool."""

    num_workers: int
    timeout_s: float

    def __post_init__(self):
        require(self.timeout_s > 0, "grader.timeout_s", "must be > 0")
        require_int(self.num_workers, "grader.num_workers")


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """`eval`: what each evaluation samples and reports; `splits` is ((label, split), ...)."""

    n: int
    ks: tuple[int, ...]
    temperature: float
    num_problems: int
    greedy: bool
    splits: tuple[tuple[str, str], ...]

    def __post_init__(self):
        require_int(self.n, "eval.n")
        require_int(self.num_problems, "eval.num_problems")
        bad_ks = [k for k in self.ks if not 1 <= k <= self.n]
        require(not bad_ks, "eval.ks", f"values must be in [1, eval.n={self.n}], got {bad_ks}")


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
    """`checkpoint`: retention, async saves and the fault limits."""

    keep: int
    async_save: bool
    min_free_mb: int
    max_consecutive_skips: int
    async_timeout_s: int
    keep_best: str
    keep_best_mode: str

    def __post_init__(self):
        require_int(self.keep, "checkpoint.keep")
        require_int(self.min_free_mb, "checkpoint.min_free_mb", 0)
        require_int(self.max_consecutive_skips, "checkpoint.max_consecutive_skips")
        require_int(self.async_timeout_s, "checkpoint.async_timeout_s")
        if self.keep_best:
            require(
                isinstance(self.keep_best, str) and self.keep_best.startswith("eval/"),
                "checkpoint.keep_best",
                f"must name an eval metric (eval/<split>/<metric>), got {self.keep_best!r}",
            )
        require(
            self.keep_best_mode in KEEP_BEST_MODES,
            "checkpoint.keep_best_mode",
            f"must be 'max' or 'min', got {self.keep_best_mode!r}",
        )


@dataclasses.dataclass(frozen=True)
class SftSettings:
    """`sft`: supervised fine-tuning on D_L before TTT (0 steps = skipped)."""

    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int

    def __post_init__(self):
        require_int(self.steps, "sft.steps", 0)
        require_int(self.batch_size, "sft.batch_size")


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Everything the loop reads from its config, checked (see the module docstring).

    Attributes:
      method: the method's row of `config.methods`.
      seed, total_steps, eval_every, save_every, progress_bar: the top-level fields.
      prompts_per_step, prompts_per_update, max_prompt_length: the step shape (`data`).
      rollout, tempo, grader, eval, checkpoint, sft: the sections.
      train: the `train` section (`train.settings_from_config`).
    """

    method: Method
    seed: int
    total_steps: int
    eval_every: int
    save_every: int
    progress_bar: bool
    prompts_per_step: int
    prompts_per_update: int
    max_prompt_length: int
    rollout: RolloutSettings
    tempo: TempoSettings
    grader: GraderSettings
    eval: EvalSettings
    checkpoint: CheckpointSettings
    sft: SftSettings
    train: train.TrainSettings

    def __post_init__(self):
        require_int(self.total_steps, "total_steps")
        require_int(self.eval_every, "eval_every", 0)
        require_int(self.save_every, "save_every", 0)
        require_int(self.prompts_per_step, "data.prompts_per_step")
        require_int(self.max_prompt_length, "data.max_prompt_length")
        grpo = self.method.advantage in ("grpo", "drgrpo")
        require_int(self.rollout.n, "rollout.n", 2 if grpo else 1)
        chunk = self.rollout.max_rows_per_chunk
        require(
            chunk == 0 or chunk >= max(self.rollout.n, self.eval.n),
            "rollout.max_rows_per_chunk",
            f"must be 0 (off) or hold one prompt's samples (rollout.n={self.rollout.n}, "
            f"eval.n={self.eval.n}), got {chunk}",
        )
        longer = [b for b in self.train.length_buckets if b > self.rollout.max_new_tokens]
        require(
            not longer,
            "train.length_buckets",
            f"{longer} exceed rollout.max_new_tokens={self.rollout.max_new_tokens}",
        )
        flip = self.tempo.oracle_flip_prob
        require(
            flip == 0 or self.method.reward == HIDDEN_TERMINAL,
            "tempo.oracle_flip_prob",
            f"flips the hidden-answer reward of tempo_oracle / tempo_mixed_oracle only; "
            f"method {self.method.name!r} has none (got {flip})",
        )
        mixed_every = self.tempo.mixed_recalibrate_every
        require(
            mixed_every == 1 or self.method.stream == MIXED,
            "tempo.mixed_recalibrate_every",
            f"sets the critic cadence of the mixed loop (tempo_mixed, tempo_mixed_oracle) only; "
            f"method {self.method.name!r} is phased: use tempo.recalibrate_every "
            f"(got {mixed_every})",
        )
        if self.checkpoint.keep_best:
            require(self.eval_every > 0, "checkpoint.keep_best", "needs eval_every > 0")
        self._check_updates()
        self._check_critic_negatives()

    def _check_critic_negatives(self) -> None:
        """Corrupted rows join critic batches only, which micro-batches must still divide."""
        negatives = self.tempo.critic_negatives
        if not negatives:
            return
        require(
            self.method.uses_critic,
            "tempo.critic_negatives",
            f"adds rows to critic updates; method {self.method.name!r} has no critic "
            f"(got {negatives})",
        )
        critic_rows = self.prompts_per_step * self.rollout.n + negatives
        micro_rows = self.train.micro_batch_rows
        require(
            not micro_rows or critic_rows % micro_rows == 0,
            "tempo.critic_negatives",
            f"= {negatives} makes a critic batch of {critic_rows} rows, which "
            f"train.micro_batch_rows = {micro_rows} does not divide",
        )

    def _check_updates(self) -> None:
        """Mini-batches of whole prompt groups, and micro-batches that divide them."""
        require_int(self.prompts_per_update, "data.prompts_per_update", 0)
        per_update, per_step = self.update_prompts, self.prompts_per_step
        require(
            per_update <= per_step and per_step % per_update == 0,
            "data.prompts_per_update",
            f"must divide data.prompts_per_step={per_step} (0 = all of them), "
            f"got {self.prompts_per_update}",
        )
        rows, step_rows = self.update_rows, per_step * self.rollout.n
        micro_rows = self.train.micro_batch_rows
        if micro_rows:
            require(
                rows % micro_rows == 0 and step_rows % micro_rows == 0,
                "train.micro_batch_rows",
                f"must divide the rows per policy update ({rows}) and per step ({step_rows})",
            )
        else:
            require(
                rows % self.train.micro_batches == 0,
                "train.micro_batches",
                f"must divide the rows per policy update (prompts per update * rollout.n = {rows})",
            )

    @property
    def update_prompts(self) -> int:
        """Prompts per policy optimizer update (`data.prompts_per_update`, 0 = the whole step)."""
        return self.prompts_per_update or self.prompts_per_step

    @property
    def updates_per_step(self) -> int:
        """Policy optimizer updates (mini-batches) per M-step."""
        return self.prompts_per_step // self.update_prompts

    @property
    def update_rows(self) -> int:
        """Rollout rows of one policy update: `update_prompts` x `rollout.n`."""
        return self.update_prompts * self.rollout.n

    @classmethod
    def from_config(cls, config: Any) -> RunSettings:
        """The settings of a trainer config (ConfigDict or nested mapping).

        Raises:
          ConfigError: naming the first invalid field.
        """
        defaults = default_config()
        method = config.get("method", defaults.method)
        require(method in METHODS, "method", f"must be one of {sorted(METHODS)}, got {method!r}")
        rollout = _section(config, "rollout", RolloutSettings, defaults.rollout)
        rollout["paged"] = PagedSettings(
            **_section(rollout, "paged", PagedSettings, defaults.rollout.paged)
        )
        evaluation = _section(config, "eval", EvalSettings, defaults.eval)
        evaluation["ks"] = tuple(evaluation["ks"])
        evaluation["splits"] = tuple(dict(evaluation["splits"]).items())
        data = config.get("data") or {}
        try:
            train_settings = train.settings_from_config(config.get("train"))
        except ValueError as e:
            raise ConfigError(str(e)) from None

        def top(name: str) -> Any:
            return config.get(name, defaults[name])

        return cls(
            method=get_method(method),
            seed=top("seed"),
            total_steps=top("total_steps"),
            eval_every=top("eval_every"),
            save_every=top("save_every"),
            progress_bar=top("progress_bar"),
            prompts_per_step=data.get("prompts_per_step", defaults.data.prompts_per_step),
            prompts_per_update=data.get("prompts_per_update", defaults.data.prompts_per_update),
            max_prompt_length=data.get("max_prompt_length", defaults.data.max_prompt_length),
            rollout=RolloutSettings(**rollout),
            tempo=TempoSettings(**_section(config, "tempo", TempoSettings, defaults.tempo)),
            grader=GraderSettings(**_section(config, "grader", GraderSettings, defaults.grader)),
            eval=EvalSettings(**evaluation),
            checkpoint=CheckpointSettings(
                **_section(config, "checkpoint", CheckpointSettings, defaults.checkpoint)
            ),
            sft=SftSettings(**_section(config, "sft", SftSettings, defaults.sft)),
            train=train_settings,
        )


def run_settings(config: Any) -> RunSettings:
    """`config`'s RunSettings (a RunSettings is returned as is), for callers that hold a config
    (`tempo-jax compile`) and those that hold the run's settings alike."""
    if isinstance(config, RunSettings):
        return config
    if not isinstance(config, Mapping) and not hasattr(config, "get"):
        raise TypeError(f"expected a trainer config or RunSettings, got {type(config).__name__}")
    return RunSettings.from_config(config)
