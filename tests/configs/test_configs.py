"""Every config file under configs/ loads, validates and names what it needs; the real-run
configs follow the authors' recipe and fail fast, naming the field, when a path is missing."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

from tempo_jax import models
from tempo_jax.config.methods import METHODS
from tempo_jax.config.validation import ConfigError, check_paths, validate

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.py"))
AIME = {"qwen3_14b_aime": (128, 32), "qwen3_8b_aime": (256, 64), "olmo3_7b_aime": (256, 64)}


def load(path: pathlib.Path, *args):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*args)


def test_every_config_file_validates():
    assert {p.stem for p in CONFIGS} >= {"base", "tiny_arith", *AIME}
    for path in CONFIGS:
        validate(load(path))


@pytest.mark.parametrize("name", sorted(AIME))
def test_aime_configs_follow_the_authors_recipe(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TEMPO_ROOT", str(tmp_path))
    c = load(ROOT / "configs" / f"{name}.py")
    per_step, per_update = AIME[name]
    assert (c.data.prompts_per_step, c.data.prompts_per_update) == (per_step, per_update)
    assert (c.rollout.n, c.rollout.temperature, c.rollout.top_p) == (8, 1.0, 1.0)
    assert (c.rollout.max_new_tokens, c.data.max_prompt_length) == (16384, 2048)
    assert c.train.policy_optimizer.learning_rate == c.train.critic_optimizer.learning_rate == 1e-6
    assert (c.train.policy_optimizer.weight_decay, c.train.critic_optimizer.weight_decay) == (
        0.0,
        0.01,
    )
    assert (c.eval.n, c.eval_every, c.eval.temperature) == (16, 4, 1.0)
    assert c.model.hf_path.startswith(str(tmp_path / "checkpoints"))
    models.get_preset(c.model.preset)  # the documented architecture exists
    # A baseline is the config argument; every registered method gives a valid config.
    for method in METHODS:
        validate(load(ROOT / "configs" / f"{name}.py", method))
        assert load(ROOT / "configs" / f"{name}.py", method).method == method
    with pytest.raises(ValueError, match="method must be one of"):
        load(ROOT / "configs" / f"{name}.py", "grpo")


def test_missing_paths_name_the_field(tmp_path, monkeypatch):
    monkeypatch.setenv("TEMPO_ROOT", str(tmp_path))
    c = load(ROOT / "configs" / "qwen3_14b_aime.py")
    with pytest.raises(
        ConfigError, match=r"config\.model\.hf_path is not a directory: .*Qwen3-14B"
    ):
        check_paths(c)
    (tmp_path / "checkpoints" / "Qwen3-14B").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    with pytest.raises(ConfigError, match=r"config\.data\.labeled_files names a missing file"):
        check_paths(c)
    for f in ("dapo-math-17k.parquet", "aime-2024.jsonl", "aime-2025.jsonl"):
        (tmp_path / "data" / f).write_text("")
    check_paths(c)  # everything in place
    c.tokenizer.path = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"config\.tokenizer\.path is not a directory"):
        check_paths(c)


def test_cli_reports_a_missing_checkpoint_without_a_traceback(tmp_path):
    env = {"TEMPO_ROOT": str(tmp_path), "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tempo_jax.cli",
            "train",
            f"--config={ROOT / 'configs' / 'olmo3_7b_aime.py'}:empo",
            f"--workdir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, **env},
        check=False,
    )
    assert proc.returncode == 1
    assert "tempo-jax: error: config.model.hf_path is not a directory" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing written before the config is known good


def test_tiny_arith_rlvr_variant_is_the_documented_recipe():
    c = load(ROOT / "configs" / "tiny_arith.py", "rlvr")
    validate(c)
    assert (c.method, c.train.policy_optimizer.learning_rate) == ("rlvr", 1e-4)
    assert (c.data.prompts_per_step, c.rollout.n, c.total_steps) == (16, 8, 48)
    assert load(ROOT / "configs" / "tiny_arith.py").method == "tempo"  # the main job unchanged
    with pytest.raises(ValueError, match="unknown variant"):
        load(ROOT / "configs" / "tiny_arith.py", "ppo")


@pytest.mark.parametrize("name", sorted(AIME))
def test_bfloat16_parameters_at_the_recipe_learning_rate_are_rejected(name):
    c = load(ROOT / "configs" / f"{name}.py")
    c.model.param_dtype = "bfloat16"
    # 1e-6 updates are ~40x below half the bfloat16 spacing of a 0.02 weight (3.9e-5).
    with pytest.raises(ConfigError) as info:
        validate(c)
    message = str(info.value)
    assert "config.model.param_dtype" in message
    assert "config.train.policy_optimizer.learning_rate=1e-06" in message
    c.train.policy_optimizer.learning_rate = 1e-4
    with pytest.raises(ConfigError, match=r"critic_optimizer\.learning_rate=1e-06"):
        validate(c)
    c.train.critic_optimizer.learning_rate = 1e-4
    validate(c)  # updates above the spacing: bfloat16 storage is a choice, not a bug


def test_qwen3_8b_v6e_layout_changes_memory_settings_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TEMPO_ROOT", str(tmp_path))
    path = ROOT / "configs" / "qwen3_8b_aime.py"
    v5p, v6e, ttrl = load(path), load(path, "v6e"), load(path, "ttrl,v6e")
    assert (v6e.parallel.mesh.tensor, v6e.train.micro_batch_rows) == (4, 8)
    assert (v5p.parallel.mesh.tensor, v5p.train.micro_batch_rows) == (1, 32)
    assert ttrl.method == "ttrl" and ttrl.parallel.mesh.tensor == 4
    for c in (v6e, ttrl):
        validate(c)

    def flat(tree, prefix=""):
        if not isinstance(tree, dict):
            return {prefix: tree}
        return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}{key}.").items()}

    a, b = flat(v5p.to_dict()), flat(v6e.to_dict())
    assert {k for k in a if a[k] != b[k]} == {"parallel.mesh.tensor.", "train.micro_batch_rows."}
