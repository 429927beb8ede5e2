"""Presets: validation, and parameter counts against the published checkpoint sizes."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import tempo_jax.models as tm
from tempo_jax.models.hf_config import config_from_hf, config_to_hf

# (total, non-embedding) in billions, at the precision the model cards state them:
# Qwen/Qwen3-* cards "Number of Parameters: 0.6B / Non-Embedding: 0.44B", 1.7B / 1.4B,
# 4.0B / 3.6B, 8.2B / 6.95B, 14.8B / 13.2B; the hub's safetensors size for
# allenai/Olmo-3-1025-7B is 7.3B. (Non-embedding = total minus embedding and untied lm_head.)
PUBLISHED = {
    "qwen3_0p6b": ((0.6, 1), (0.44, 2)),
    "qwen3_1p7b": ((1.7, 1), (1.4, 1)),
    "qwen3_4b": ((4.0, 1), (3.6, 1)),
    "qwen3_8b": ((8.2, 1), (6.95, 2)),
    "qwen3_14b": ((14.8, 1), (13.2, 1)),
    "olmo3_7b": ((7.3, 1), None),
}
# Exact totals, cross-checked below against transformers models built on the meta device.
EXACT = {
    "qwen3_0p6b": 596_049_920,
    "qwen3_1p7b": 1_720_574_976,
    "qwen3_4b": 4_022_468_096,
    "qwen3_8b": 8_190_735_360,
    "qwen3_14b": 14_768_307_200,
    "olmo3_7b": 7_298_011_136,
}


def _count(config: tm.ModelConfig) -> int:
    abstract = nnx.eval_shape(lambda: tm.Policy(config, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract)))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_count_matches_published_size(name):
    config = tm.get_preset(name)
    total = _count(config)
    assert total == EXACT[name]
    (published, digits), non_embedding = PUBLISHED[name]
    assert round(total / 1e9, digits) == published
    if non_embedding is not None:
        embeddings = config.vocab_size * config.hidden_size
        embeddings *= 1 if config.tie_word_embeddings else 2
        value, digits = non_embedding
        assert round((total - embeddings) / 1e9, digits) == value


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_matches_transformers_on_meta_device(name):
    """transformers builds the same parameter count from our exported config.json."""
    config = tm.get_preset(name)
    hf_config = transformers.AutoConfig.for_model(**config_to_hf(config, "policy"))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    assert sum(p.numel() for p in model.parameters()) == EXACT[name]
    assert hf_config.tie_word_embeddings == config.tie_word_embeddings
    if config.arch == "olmo3":
        assert hf_config.layer_types == list(config.layer_types)
        assert hf_config.rope_parameters["full_attention"]["rope_type"] == "yarn"
        assert hf_config.rope_parameters["sliding_attention"]["rope_type"] == "default"


def test_presets_are_consistent():
    olmo = tm.get_preset("olmo3_7b")
    assert olmo.layer_types.count("full_attention") == 8
    assert olmo.layer_types[3::4] == ("full_attention",) * 8
    assert {tm.get_preset(n).head_dim for n in PUBLISHED} == {128}
    assert tm.get_preset("qwen3_8b", dtype="bfloat16").dtype == "bfloat16"
    with pytest.raises(KeyError, match="unknown model preset 'qwen3_9b'"):
        tm.get_preset("qwen3_9b")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_kv_heads": 3}, "ModelConfig.num_kv_heads"),
        ({"head_dim": 15}, "ModelConfig.head_dim"),
        ({"arch": "llama"}, "ModelConfig.arch"),
        ({"layer_types": ("full_attention",)}, "ModelConfig.layer_types"),
        ({"layer_types": ("sliding_attention", "full_attention")}, "ModelConfig.sliding_window"),
        ({"dtype": "float16"}, "ModelConfig.dtype"),
        ({"param_dtype": "int8"}, "ModelConfig.param_dtype"),
        ({"vocab_size": 0}, "ModelConfig.vocab_size"),
    ],
)
def test_invalid_config_names_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(tm.get_preset("tiny"), **changes)


def test_olmo3_head_dim_must_match_width():
    with pytest.raises(ValueError, match="olmo3 requires head_dim"):
        tm.get_preset("tiny_olmo3", head_dim=32)


# The published config.json files as they ship (transformers 4.x spelling: rope_theta and
# rope_scaling at top level), reproduced from the Hugging Face repos named in config.py.
QWEN3_8B_CONFIG_JSON = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 12288,
    "max_position_embeddings": 40960,
    "max_window_layers": 36,
    "model_type": "qwen3",
    "num_attention_heads": 32,
    "num_hidden_layers": 36,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
OLMO3_7B_CONFIG_JSON = {
    "architectures": ["Olmo3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "eos_token_id": 100257,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "layer_types": [
        "full_attention" if (i + 1) % 4 == 0 else "sliding_attention" for i in range(32)
    ],
    "max_position_embeddings": 65536,
    "model_type": "olmo3",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "pad_token_id": 100277,
    "rms_norm_eps": 1e-06,
    "rope_scaling": {
        "attention_factor": 1.2079441541679836,
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 8.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "yarn",
    },
    "rope_theta": 500000,
    "sliding_window": 4096,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 100278,
}


@pytest.mark.parametrize(
    "name, config_json", [("qwen3_8b", QWEN3_8B_CONFIG_JSON), ("olmo3_7b", OLMO3_7B_CONFIG_JSON)]
)
def test_published_config_json_parses_to_the_preset(name, config_json):
    config, _ = config_from_hf(
        config_json, role="policy", source="config.json", param_dtype="float32", dtype="float32"
    )
    assert config == tm.get_preset(name)
