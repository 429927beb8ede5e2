"""Shared tiny policy and samplers (session-scoped: every new shape is a compile).

The policy is the `tiny` Qwen3 preset with a 256-token vocabulary and weights drawn with std 0.2
instead of 0.02, so that next-token distributions are peaked and varied (with the default init
every logit is nearly equal, and greedy ties would make token-for-token comparisons fragile).
"""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx
from sampling_helpers import PAD, SAMPLER_KWARGS, VOCAB

import tempo_jax.models as tm
from tempo_jax.sampling import Sampler


@pytest.fixture(scope="session")
def policy() -> tm.Policy:
    config = tm.get_preset("tiny", vocab_size=VOCAB, initializer_range=0.2)
    return tm.Policy(config, rngs=nnx.Rngs(0))


@pytest.fixture(scope="session")
def state(policy):
    return nnx.state(policy)


@pytest.fixture(scope="session")
def sampler(policy) -> Sampler:
    """L = 8, buckets 8 and 16, one EOS id and one 2-token stop sequence (overridable per call)."""
    return Sampler(policy, **SAMPLER_KWARGS)


@pytest.fixture(scope="session")
def prompts() -> tuple[np.ndarray, np.ndarray]:
    """tokens, mask [3, 12]: prompt lengths 12, 9 and 5 (left-padded); bucket 16."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, VOCAB - 1, size=(3, 12)).astype(np.int32)
    mask = np.ones((3, 12), np.int32)
    mask[1, :3] = 0
    mask[2, :7] = 0
    tokens[mask == 0] = PAD
    return tokens, mask
