"""Checks of a whole trainer config that run before anything is built or compiled; each error
names the field. Section-level checks live with their sections (`train.settings_from_config`,
`data.data_config_from`, `parallel`)."""

from __future__ import annotations

import os

import ml_collections

from tempo_jax import train
from tempo_jax.data.pipeline import data_config_from
from tempo_jax.models.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS
from tempo_jax.tempo.methods import HIDDEN_TERMINAL, METHODS, MIXED, get_method

ADVANTAGES = ("em_token", "em_outcome")
WHITEN_SCOPES = ("batch", "with_labeled", "question")
DTYPES = ("float32", "bfloat16")
ROLLOUT_ENGINES = ("static", "paged")
DECODE_LAYOUTS = ("auto", "replicated", "tensor")  # tempo.rollout_estimates.LAYOUTS
# AdamW moves each weight by about the learning rate per update (|m / sqrt(v)| <= ~1). A
# bfloat16 weight keeps 8 significant bits, so round-to-nearest drops any change below half its
# spacing, |w| * 2**-9 or more; for a typical LLM matrix entry (|w| ~ 0.02, the init scale)
# that is 3.9e-5. Smaller learning rates on bfloat16 parameters leave the weights unchanged.
TYPICAL_WEIGHT = 0.02
BF16_SMALLEST_LEARNING_RATE = TYPICAL_WEIGHT * 2.0**-9


class ConfigError(ValueError):
    """An invalid config; the message names the field."""


def _require(ok: bool, field: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"config.{field} {why}")


def _positive_int(config, field: str, minimum: int = 1) -> None:
    value = config
    for part in field.split("."):
        value = value[part]
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
        field,
        f"must be an int >= {minimum}, got {value!r}",
    )


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError (naming the field) for an invalid or inconsistent config."""
    _require(
        config.method in METHODS,
        "method",
        f"must be one of {sorted(METHODS)}, got {config.method!r}",
    )
    method = get_method(config.method)
    _positive_int(config, "total_steps")
    _positive_int(config, "eval_every", 0)
    _positive_int(config, "save_every", 0)
    _require(
        config.model.param_dtype in DTYPES,
        "model.param_dtype",
        f"must be one of {DTYPES}, got {config.model.param_dtype!r}",
    )
    _require(
        config.model.compute_dtype in DTYPES,
        "model.compute_dtype",
        f"must be one of {DTYPES}, got {config.model.compute_dtype!r}",
    )
    _require(
        config.model.attention in ATTENTION_IMPLEMENTATIONS,
        "model.attention",
        f"must be one of {ATTENTION_IMPLEMENTATIONS}, got {config.model.attention!r}",
    )
    _positive_int(config, "model.attention_block_size")
    _check_bfloat16_updates(config)
    _positive_int(config, "data.prompts_per_step")
    _positive_int(config, "data.max_prompt_length")
    _positive_int(config, "rollout.max_new_tokens")
    _positive_int(config, "rollout.max_rows_per_chunk", 0)
    longer = [b for b in config.train.length_buckets if b > config.rollout.max_new_tokens]
    _require(
        not longer,
        "train.length_buckets",
        f"{longer} exceed rollout.max_new_tokens={config.rollout.max_new_tokens}",
    )
    chunk = config.rollout.max_rows_per_chunk
    _require(
        chunk == 0 or chunk >= max(config.rollout.n, config.eval.n),
        "rollout.max_rows_per_chunk",
        f"must be 0 (off) or hold one prompt's samples (rollout.n={config.rollout.n}, "
        f"eval.n={config.eval.n}), got {chunk}",
    )
    _positive_int(config, "rollout.max_generation_batches")
    _require(
        config.rollout.engine in ROLLOUT_ENGINES,
        "rollout.engine",
        f"must be one of {ROLLOUT_ENGINES}, got {config.rollout.engine!r}",
    )
    _positive_int(config, "rollout.paged.page_size")
    _positive_int(config, "rollout.paged.num_slots", 0)
    _positive_int(config, "rollout.paged.num_pages", 0)
    _positive_int(config, "rollout.paged.steps_per_call")
    _require(
        config.rollout.paged.decode_layout in DECODE_LAYOUTS,
        "rollout.paged.decode_layout",
        f"must be one of {DECODE_LAYOUTS}, got {config.rollout.paged.decode_layout!r}",
    )
    _positive_int(config, "rollout.paged.decode_tensor", 0)
    _positive_int(config, "rollout.n", 2 if method.advantage in ("grpo", "drgrpo") else 1)
    _require(
        config.rollout.temperature >= 0,
        "rollout.temperature",
        f"must be >= 0, got {config.rollout.temperature}",
    )
    _require(
        0 < config.rollout.top_p <= 1,
        "rollout.top_p",
        f"must be in (0, 1], got {config.rollout.top_p}",
    )
    _require(
        0 <= config.rollout.top_k <= 64,
        "rollout.top_k",
        f"must be in [0, 64] (0 = off), got {config.rollout.top_k}",
    )
    _require(
        config.tempo.advantage in ADVANTAGES,
        "tempo.advantage",
        f"must be one of {ADVANTAGES}, got {config.tempo.advantage!r}",
    )
    _positive_int(config, "tempo.recalibrate_every")
    _positive_int(config, "tempo.critic_updates")
    _positive_int(config, "tempo.critic_warmup_steps", 0)
    _require(
        0.0 <= config.data.labeled_fraction <= 1.0,
        "data.labeled_fraction",
        f"must be in [0, 1], got {config.data.labeled_fraction}",
    )
    if method.stream == MIXED:
        _require(
            0.0 < config.data.labeled_fraction < 1.0,
            "data.labeled_fraction",
            f"must be strictly between 0 and 1 for {method.name} (both D_L and D_U rows)",
        )
    _require(
        config.tempo.whiten_scope in WHITEN_SCOPES,
        "tempo.whiten_scope",
        f"must be one of {WHITEN_SCOPES}, got {config.tempo.whiten_scope!r}",
    )
    _require(
        isinstance(config.tempo.estep_group_filter, bool),
        "tempo.estep_group_filter",
        f"must be a bool, got {config.tempo.estep_group_filter!r}",
    )
    _positive_int(config, "tempo.critic_negatives", 0)
    negatives = config.tempo.critic_negatives
    _require(
        negatives == 0 or method.uses_critic,
        "tempo.critic_negatives",
        f"adds rows to critic updates; method {method.name!r} has no critic (got {negatives})",
    )
    critic_rows = config.data.prompts_per_step * config.rollout.n + negatives
    micro_rows = config.train.get("micro_batch_rows", 0)
    _require(
        negatives == 0 or not micro_rows or critic_rows % micro_rows == 0,
        "tempo.critic_negatives",
        f"= {negatives} makes a critic batch of {critic_rows} rows, which "
        f"train.micro_batch_rows = {micro_rows} does not divide",
    )
    flip = config.tempo.oracle_flip_prob
    _require(
        isinstance(flip, (int, float)) and 0.0 <= flip <= 1.0,
        "tempo.oracle_flip_prob",
        f"must be in [0, 1], got {flip!r}",
    )
    _require(
        flip == 0 or method.reward == HIDDEN_TERMINAL,
        "tempo.oracle_flip_prob",
        f"flips the hidden-answer reward of tempo_oracle / tempo_mixed_oracle only; "
        f"method {method.name!r} has none (got {flip})",
    )
    _positive_int(config, "sft.steps", 0)
    _positive_int(config, "sft.batch_size")
    _positive_int(config, "eval.n")
    _positive_int(config, "eval.num_problems")
    bad_ks = [k for k in config.eval.ks if not 1 <= k <= config.eval.n]
    _require(not bad_ks, "eval.ks", f"values must be in [1, eval.n={config.eval.n}], got {bad_ks}")
    _require(config.grader.timeout_s > 0, "grader.timeout_s", "must be > 0")
    _positive_int(config, "grader.num_workers")
    _positive_int(config, "checkpoint.keep")
    _positive_int(config, "checkpoint.max_consecutive_skips")
    _positive_int(config, "checkpoint.async_timeout_s")
    keep_best = config.checkpoint.keep_best
    if keep_best:
        _require(
            isinstance(keep_best, str) and keep_best.startswith("eval/"),
            "checkpoint.keep_best",
            f"must name an eval metric (eval/<split>/<metric>), got {keep_best!r}",
        )
        _require(config.eval_every > 0, "checkpoint.keep_best", "needs eval_every > 0")
    _require(
        config.checkpoint.keep_best_mode in ("max", "min"),
        "checkpoint.keep_best_mode",
        f"must be 'max' or 'min', got {config.checkpoint.keep_best_mode!r}",
    )
    try:
        train.settings_from_config(config.train)
        data_config_from(config)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _positive_int(config, "data.prompts_per_update", 0)
    per_update = config.data.prompts_per_update or config.data.prompts_per_step
    _require(
        per_update <= config.data.prompts_per_step
        and config.data.prompts_per_step % per_update == 0,
        "data.prompts_per_update",
        f"must divide data.prompts_per_step={config.data.prompts_per_step} (0 = all of them), "
        f"got {config.data.prompts_per_update}",
    )
    rows = per_update * config.rollout.n
    if config.train.micro_batch_rows:
        step_rows = config.data.prompts_per_step * config.rollout.n
        _require(
            rows % config.train.micro_batch_rows == 0
            and step_rows % config.train.micro_batch_rows == 0,
            "train.micro_batch_rows",
            f"must divide the rows per policy update ({rows}) and per step ({step_rows})",
        )
    else:
        _require(
            rows % config.train.micro_batches == 0,
            "train.micro_batches",
            f"must divide the rows per policy update (prompts per update * rollout.n = {rows})",
        )


def _check_bfloat16_updates(config: ml_collections.ConfigDict) -> None:
    """bfloat16 parameters (no float32 master weights) need learning rates whose AdamW updates
    survive bfloat16 rounding; see BF16_SMALLEST_LEARNING_RATE."""
    if config.model.param_dtype != "bfloat16":
        return
    rates = [
        (f"train.{name}.learning_rate", config.train[name].learning_rate)
        for name in ("policy_optimizer", "critic_optimizer")
    ]
    if config.sft.steps > 0:
        rates.append(("sft.learning_rate", config.sft.learning_rate))
    for field, rate in rates:
        _require(
            not 0 < rate < BF16_SMALLEST_LEARNING_RATE,
            "model.param_dtype",
            f"= 'bfloat16' with config.{field}={rate:g}: AdamW moves a weight by about the "
            f"learning rate per update, below half the bfloat16 spacing of a typical weight "
            f"(|w| ~ {TYPICAL_WEIGHT}: {BF16_SMALLEST_LEARNING_RATE:.1e}), so the updates round "
            "away. Keep float32 master weights (model.param_dtype='float32'; compute stays "
            "bfloat16 with model.compute_dtype) or raise the learning rate.",
        )


def _file_list(value) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [p.strip() for p in items if p.strip()]


def check_paths(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError (naming the field) for a configured local path that does not exist.

    Runs before anything is built, so a typo in a checkpoint or data path fails in a second
    instead of after the tokenizer or the SFT stage.
    """
    dirs = [
        ("model.hf_path", config.model.hf_path),
        ("model.critic_hf_path", config.model.critic_hf_path),
    ]
    if config.tokenizer.kind == "hf":
        dirs.append(("tokenizer.path", config.tokenizer.path))
    for field, path in dirs:
        if path:
            _require(os.path.isdir(path), field, f"is not a directory: {path}")
    if config.tokenizer.kind == "sentencepiece" and config.tokenizer.path:
        path = config.tokenizer.path
        _require(os.path.isfile(path), "tokenizer.path", f"is not a file: {path}")
    if config.data.source == "files":
        for key in ("labeled_files", "unlabeled_files", "eval_files", "mixed_files"):
            for path in _file_list(config.data.get(key, "")):
                _require(os.path.isfile(path), f"data.{key}", f"names a missing file: {path}")
