"""The study's task (configs/tiny_repro.py): its `shifted` variant moves D_U off D_L and nothing
else, and every D_U row of both variants fits the configured prompt and response lengths."""

import importlib.util
import pathlib

import pytest

from tempo_jax.data import arithmetic
from tempo_jax.data.pipeline import data_config_from
from tempo_jax.data.sentencepiece_tokenizer import SentencePieceTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _config(variant: str = ""):
    spec = importlib.util.spec_from_file_location("tiny_repro", ROOT / "configs" / "tiny_repro.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def test_shifted_changes_only_the_unlabeled_distribution():
    base, shifted = _config().to_dict(), _config("shifted").to_dict()
    changed = {
        (section, key)
        for section in base
        for key in (base[section] if isinstance(base[section], dict) else [None])
        if (base[section] if key is None else base[section][key])
        != (shifted[section] if key is None else shifted[section][key])
    }
    assert changed == {("data", "unlabeled_difficulty")}
    task, shifted_task = (data_config_from(_config(v)).task for v in ("", "shifted"))
    assert task.labeled == shifted_task.labeled == arithmetic.Difficulty(min_steps=2, max_steps=3)
    assert (task.unlabeled.min_steps, task.unlabeled.max_steps) == (3, 3)
    assert (shifted_task.unlabeled.min_steps, shifted_task.unlabeled.max_steps) == (3, 4)
    steps = [p.num_steps for _, p in arithmetic.iter_split(shifted_task, "unlabeled")]
    # Longer chains than any D_L question make up a real part of the shifted D_U (seed 0: 32 rows).
    assert len(steps) == 32 and steps.count(4) == 15
    with pytest.raises(ValueError, match="unknown variant"):
        _config("longer")


@pytest.mark.parametrize("variant", ["", "shifted"])
def test_every_unlabeled_row_fits_the_configured_lengths(variant, task_tokenizer_path):
    config = _config(variant)
    task = data_config_from(config).task
    tokenizer = SentencePieceTokenizer.from_file(task_tokenizer_path)
    for _, problem in arithmetic.iter_split(task, "unlabeled"):
        prompt = 1 + len(
            tokenizer.encode(config.tokenizer.prompt_template.format(question=problem.question))
        )
        response = len(tokenizer.encode(problem.solution)) + 1  # EOS
        assert prompt <= config.data.max_prompt_length, (problem.question, prompt)
        assert response <= config.rollout.max_new_tokens, (problem.solution, response)
