"""Checks of a whole trainer config that run before anything is built or compiled; each error
names the field. The sections the loop reads check themselves as they become typed settings
(`config.settings.RunSettings`); the train, data and parallel sections likewise
(`train.settings_from_config`, `data.data_config_from`, `parallel`). What is left here is the
model section and the paths on disk."""

from __future__ import annotations

import os

import ml_collections

from tempo_jax.config.methods import MIXED
from tempo_jax.config.settings import (  # noqa: F401  (re-exported: the names callers know)
    ADVANTAGES,
    DECODE_LAYOUTS,
    ROLLOUT_ENGINES,
    WHITEN_SCOPES,
    ConfigError,
    RunSettings,
    require,
    require_choice,
    require_int,
)
from tempo_jax.data.pipeline import data_config_from
from tempo_jax.models.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS

DTYPES = ("float32", "bfloat16")
# AdamW moves each weight by about the learning rate per update (|m / sqrt(v)| <= ~1). A
# bfloat16 weight keeps 8 significant bits, so round-to-nearest drops any change below half its
# spacing, |w| * 2**-9 or more; for a typical LLM matrix entry (|w| ~ 0.02, the init scale)
# that is 3.9e-5. Smaller learning rates on bfloat16 parameters leave the weights unchanged.
TYPICAL_WEIGHT = 0.02
BF16_SMALLEST_LEARNING_RATE = TYPICAL_WEIGHT * 2.0**-9


def validate(config: ml_collections.ConfigDict) -> RunSettings:
    """Raises ConfigError (naming the field) for an invalid or inconsistent config; returns the
    config's RunSettings."""
    settings = RunSettings.from_config(config)
    require_choice(config.model.param_dtype, "model.param_dtype", DTYPES)
    require_choice(config.model.compute_dtype, "model.compute_dtype", DTYPES)
    require_choice(config.model.attention, "model.attention", ATTENTION_IMPLEMENTATIONS)
    require_int(config.model.attention_block_size, "model.attention_block_size")
    _check_bfloat16_updates(config)
    require(
        0.0 <= config.data.labeled_fraction <= 1.0,
        "data.labeled_fraction",
        f"must be in [0, 1], got {config.data.labeled_fraction}",
    )
    if settings.method.stream == MIXED:
        require(
            0.0 < config.data.labeled_fraction < 1.0,
            "data.labeled_fraction",
            f"must be strictly between 0 and 1 for {settings.method.name} (both D_L and D_U rows)",
        )
    try:
        data_config_from(config)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return settings


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
        require(
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
            require(os.path.isdir(path), field, f"is not a directory: {path}")
    if config.tokenizer.kind == "sentencepiece" and config.tokenizer.path:
        path = config.tokenizer.path
        require(os.path.isfile(path), "tokenizer.path", f"is not a file: {path}")
    if config.data.source == "files":
        for key in ("labeled_files", "unlabeled_files", "eval_files", "mixed_files"):
            for path in _file_list(config.data.get(key, "")):
                require(os.path.isfile(path), f"data.{key}", f"names a missing file: {path}")
