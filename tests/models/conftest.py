"""Shared tiny transformers models (random, saved once per session) and left-padded batches.

transformers' default init (std 0.02, unit norms) makes every logit nearly equal, which would let
a wrong layer pass a parity check; the weights are re-drawn with std 0.15 and norm scales
1 +- 0.2 so that attention patterns, norms and padding all change the numbers.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import transformers

import tempo_jax.models as tm

VOCAB = 128


def _randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.dim() == 1 and p.shape[0] > 1:  # norm scales
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=gen))


def _hf_config(name: str) -> transformers.PretrainedConfig:
    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation="eager",
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if name.startswith("qwen3"):
        return transformers.Qwen3Config(
            num_hidden_layers=2,
            head_dim=16,  # != hidden / heads, so head_dim must be honoured
            rope_theta=10_000.0,
            tie_word_embeddings=name == "qwen3_tied",
            num_labels=1,
            **common,
        )
    # OLMo3: 3 sliding + 1 full layer, window 4 < the test sequences; YaRN on the full layer
    # with a short original context so that the ramp touches these head dims.
    return transformers.Olmo3Config(
        num_hidden_layers=4,
        rope_theta=500_000.0,
        sliding_window=4,
        max_position_embeddings=64,
        rope_scaling={
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 16,
            "attention_factor": 1.1386,
            "beta_fast": 32,
            "beta_slow": 1,
        },
        **common,
    )


_CLASSES = {
    "qwen3": transformers.Qwen3ForCausalLM,
    "qwen3_tied": transformers.Qwen3ForCausalLM,
    "olmo3": transformers.Olmo3ForCausalLM,
    "qwen3_critic": transformers.Qwen3ForTokenClassification,
}


@dataclasses.dataclass
class HFCase:
    name: str
    hf: torch.nn.Module  # eval mode
    path: str  # directory written by transformers' save_pretrained
    ours: tm.Policy | tm.Critic  # load_hf(path), float32
    role: str


@pytest.fixture(scope="session")
def hf_cases(tmp_path_factory) -> dict[str, HFCase]:
    cases = {}
    for seed, (name, cls) in enumerate(_CLASSES.items()):
        torch.manual_seed(seed)
        model = cls(_hf_config(name))
        _randomize(model, seed)
        model.eval()
        path = tmp_path_factory.mktemp(f"hf_{name}")
        model.save_pretrained(path)
        role = "critic" if name.endswith("critic") else "policy"
        cases[name] = HFCase(name, model, str(path), tm.load_hf(path, role=role), role)
    return cases


@pytest.fixture(scope="session")
def batch() -> tuple[np.ndarray, np.ndarray]:
    """tokens, mask [3, 12]: rows with 0, 3 and 7 left pads (random ids under the pads too)."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, VOCAB, size=(3, 12))
    mask = np.ones((3, 12), np.int32)
    mask[1, :3] = 0
    mask[2, :7] = 0
    return tokens, mask
