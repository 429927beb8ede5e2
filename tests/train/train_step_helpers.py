"""Shared tiny models, batches and cached compiled runs for the train-step tests.

Compiles are the expensive part on 2 CPU cores, so each (role, mesh) step is built and run once
per session (`run_steps`, lru-cached) and every test that needs it reads the cached result.
Nothing here compiles at import time.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from compile_counter import CompileCounter
from flax import nnx

from tempo_jax import models, parallel, train

# The tiny preset: 4 heads / 2 kv heads (both divisible by tensor = 2), V = 512, D = 64.
N, P, L = 16, 4, 6  # rows, prompt slots, response slots
MICRO_BATCHES = 2
STEPS = 3  # params are compared after 2 steps; the 3rd call proves compile-once
MESHES = ((2, 2, 2), (1, 8, 1), (8, 1, 1))
# Learning rates large enough that two AdamW steps move most parameters by ~2e-3. Adam's eps is
# raised from 1e-8 so that the step of an output row whose gradient is ~1e-10 (a token absent from
# the batch) stays ~lr * 1e-4 instead of amplifying rounding noise to a full lr-sized step.
SETTINGS = train.settings_from_config(
    {
        "micro_batches": MICRO_BATCHES,
        "vocab_chunk_size": 128,  # 4 chunks of the 512-token vocabulary
        "policy_optimizer": {"learning_rate": 1e-3, "eps": 1e-6},
        "critic_optimizer": {"learning_rate": 1e-3, "eps": 1e-6},
    }
)


# XLA's CPU backend at optimisation level 0 compiles these steps in about half the time; every
# comparison is between executables built with the same options.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def model_config():
    return models.get_preset("tiny")


def policy_model() -> models.Policy:
    return models.Policy(model_config(), rngs=nnx.Rngs(0))


def critic_model() -> models.Critic:
    critic = models.Critic(model_config(), rngs=nnx.Rngs(1))
    # A value head as large as the trunk's weights, so values (and their gradients) are O(1).
    critic.score_kernel.set_value(
        0.3 * jax.random.normal(jax.random.key(2), critic.score_kernel.shape)
    )
    return critic


def host_batch(seed: int, n: int = N, p: int = P, length: int = L) -> train.RLBatch:
    """A numpy RLBatch: prompts left-padded to uneven lengths, responses of uneven lengths
    (1 .. L), one filtered row, half the rows labeled. Token ids cover the whole vocabulary."""
    rng = np.random.default_rng(seed)
    vocab = model_config().vocab_size
    tokens = rng.integers(0, vocab, (n, p + length)).astype(np.int32)
    prompt_lengths = rng.integers(1, p + 1, n)
    response_lengths = rng.integers(1, length + 1, n)
    response_lengths[0] = length  # one full-length response
    prompt_mask = np.arange(p)[None, :] >= (p - prompt_lengths)[:, None]
    response_mask = np.arange(length)[None, :] < response_lengths[:, None]
    tokens[:, :p][~prompt_mask] = 0  # pad id
    tokens[:, p:][~response_mask] = 0
    keep = np.ones(n, bool)
    keep[3] = False
    is_labeled = np.arange(n) % 2 == 0
    scores = np.where(rng.random(n) < 0.5, 1.0, -1.0).astype(np.float32)
    return train.canonical_batch(
        train.RLBatch(
            tokens=tokens,
            attention_mask=np.concatenate([prompt_mask, response_mask], axis=1),
            response_mask=response_mask,
            old_logprobs=(-np.log(vocab) + 0.3 * rng.standard_normal((n, length))).astype(
                np.float32
            ),
            advantages=rng.standard_normal((n, length)).astype(np.float32),
            returns=(scores[:, None] * response_mask).astype(np.float32),
            old_values=(0.2 * rng.standard_normal((n, length))).astype(np.float32),
            is_labeled=is_labeled,
            keep=keep,
        )
    )


def make_mesh(shape: tuple[int, int, int]) -> jax.sharding.Mesh:
    return parallel.make_mesh(shape, devices=jax.devices()[: math.prod(shape)])


def to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


@functools.cache
def split_model(role: str, settings: train.TrainSettings = SETTINGS):
    model = policy_model() if role == "policy" else critic_model()
    return train.split_for_training(model, settings)


def step_fn(role: str, settings: train.TrainSettings = SETTINGS):
    graphdef, _ = split_model(role, settings)
    make = train.make_policy_step if role == "policy" else train.make_critic_step
    return make(graphdef, settings)


def optimizer(role: str, settings: train.TrainSettings = SETTINGS) -> train.OptimizerSettings:
    return settings.policy_optimizer if role == "policy" else settings.critic_optimizer


@functools.cache
def run_steps(role: str, mesh_shape: tuple[int, int, int]):
    """STEPS steps of `role` on `mesh_shape` with batches 0, 1, 2 (fresh each call).

    Returns a dict: `params` (numpy, after each step), `metrics` (per step), `lowerings` (XLA
    lowerings during the step calls), `cache_size`, `step` (the CompiledStep), `state` (final,
    on the mesh), `mesh`.
    """
    _, params = split_model(role)
    mesh = make_mesh(mesh_shape)
    state = train.create_train_state(jax.tree.map(jnp.copy, params), optimizer(role), mesh)
    step = train.compile_train_step(
        step_fn(role),
        state,
        host_batch(0),
        mesh,
        micro_batches=MICRO_BATCHES,
        name=f"{role}_step",
        compiler_options=FAST_COMPILE,
    )
    out = {"params": [], "metrics": [], "step": step, "mesh": mesh}
    with CompileCounter() as counter:
        for i in range(STEPS):
            state, metrics = step(state, host_batch(i))
            out["params"].append(to_numpy(state.params))
            out["metrics"].append({k: float(v) for k, v in metrics.items()})
    out.update(lowerings=counter.count, cache_size=step.cache_size(), state=state)
    return out


def max_abs_diff(a, b) -> float:
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))
