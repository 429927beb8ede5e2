"""Typed run settings: built once from a config, each section checking its own fields with
field-named errors, the "0 means off" conventions turned into values in one place."""

import dataclasses

import pytest

from tempo_jax.config.defaults import get_config
from tempo_jax.config.settings import ConfigError, RunSettings, run_settings


def _config(**changes):
    c = get_config()
    for key, value in changes.items():
        section, _, field = key.rpartition(".")
        (c[section] if section else c)[field] = value
    return c


def test_defaults_build_hashable_settings_with_the_conventions_resolved():
    settings = RunSettings.from_config(get_config())
    assert hash(settings) == hash(RunSettings.from_config(get_config()))
    assert run_settings(settings) is settings
    assert settings.rollout.rows_per_chunk is None  # max_rows_per_chunk = 0: whole batch
    assert settings.rollout.max_top_k == 64  # top_k = 0: off
    assert settings.update_prompts == 8 and settings.updates_per_step == 1  # 0: whole step
    assert settings.update_rows == 8 * 4
    assert settings.eval.splits == (("holdout", "eval"), ("unlabeled", "unlabeled"))
    assert settings.method.name == "tempo" and settings.train.micro_batches == 1

    chunked = RunSettings.from_config(
        _config(**{"rollout.max_rows_per_chunk": 16, "rollout.top_k": 5})
    )
    assert chunked.rollout.rows_per_chunk == 16 and chunked.rollout.max_top_k == 5
    halves = RunSettings.from_config(_config(**{"data.prompts_per_update": 4}))
    assert (halves.update_prompts, halves.updates_per_step, halves.update_rows) == (4, 2, 16)


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"rollout.paged.page_size": 0}, "config.rollout.paged.page_size must be an int >= 1"),
        ({"rollout.engine": "vllm"}, "config.rollout.engine must be one of"),
        ({"rollout.paged.preemption": "swap"}, "config.rollout.paged.preemption must be one of"),
        ({"rollout.max_rows_per_chunk": -1}, "config.rollout.max_rows_per_chunk must be an int"),
        ({"rollout.max_rows_per_chunk": 4, "eval.n": 8}, r"hold one prompt's samples"),
        ({"tempo.oracle_flip_prob": 1.5}, "config.tempo.oracle_flip_prob must be in [0, 1]"),
        ({"grader.timeout_s": 0}, "config.grader.timeout_s must be > 0"),
        ({"checkpoint.min_free_mb": -1}, "config.checkpoint.min_free_mb must be an int >= 0"),
        ({"sft.batch_size": 0}, "config.sft.batch_size must be an int >= 1"),
        ({"method": "ttrl", "rollout.n": 1}, "config.rollout.n must be an int >= 2"),
        ({"train.micro_batches": 3}, "config.train.micro_batches must divide"),
        ({"train.value_clip": 0.0}, "train.value_clip must be > 0"),
    ],
)
def test_each_check_names_its_field(changes, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        RunSettings.from_config(_config(**changes))


def test_unknown_fields_and_direct_construction_fail_naming_the_field():
    c = get_config()
    c.rollout.temprature = 0.5  # a typo is an error, not a silently ignored field
    with pytest.raises(ConfigError, match=r"config\.rollout has unknown fields \['temprature'\]"):
        RunSettings.from_config(c)
    rollout = RunSettings.from_config(get_config()).rollout
    with pytest.raises(ConfigError, match=r"config\.rollout\.top_p must be in \(0, 1\]"):
        dataclasses.replace(rollout, top_p=1.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rollout.n = 3
