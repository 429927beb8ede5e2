"""Forward-only log-probs / values: slot alignment against naive per-position computations.

Response token t of row i sits at slot P + t. Its log-prob must be read from the logits at slot
P + t - 1, and its value `V(x, y_<t)` from the critic's output at slot P - 1 + t. The naive
references index the full [N, S, V] logits / [N, S] values with explicit loops, and a second
reference reruns the models on the truncated prefix `tokens[:, :P + t]` (its last slot must give
the same numbers), which pins "before token t" down independently of the slicing code.
"""

import jax
import numpy as np
import pytest
import train_step_helpers as h
from flax import nnx

from tempo_jax import train
from tempo_jax.rewards.self_rewards import token_self_certainty
from tempo_jax.rl import token_entropy

PREFIX_T = 2  # response position checked against a truncated-prefix rerun


@pytest.fixture(scope="module")
def batch():
    return h.host_batch(11)


def _forward_and_references(role, make_fn, mesh_shape, batch, name):
    """The role's forward compiled on a mesh, its parameters, and the references: the model's
    outputs on the full sequences and at the last slot of the prefix `tokens[:, :P + PREFIX_T]`."""
    graphdef, params = h.split_model(role)
    fn = train.compile_forward(
        make_fn(graphdef, h.SETTINGS),
        params,
        batch.sequences(),
        h.make_mesh(mesh_shape),
        micro_batches=h.MICRO_BATCHES,
        name=name,
        compiler_options=h.FAST_COMPILE,
    )
    model = nnx.merge(graphdef, params)
    full = jax.jit(lambda t, m: model(t, m))(batch.tokens, batch.attention_mask)
    prefix = h.P + PREFIX_T
    at_prefix = jax.jit(lambda t, m: model(t, m)[:, -1])(
        batch.tokens[:, :prefix], batch.attention_mask[:, :prefix]
    )
    return fn, params, np.asarray(full), np.asarray(at_prefix)


@pytest.fixture(scope="module")
def policy_outputs(devices, batch):
    fn, params, logits, prefix_logits = _forward_and_references(
        "policy", train.make_policy_token_stats_fn, (2, 2, 2), batch, "policy_token_stats"
    )
    stats = fn(params, batch.sequences())
    stats_again = fn(params, h.host_batch(12).sequences())  # a fresh batch: no recompile
    return h.to_numpy(stats), logits, prefix_logits, fn, stats_again


@pytest.fixture(scope="module")
def critic_outputs(devices, batch):
    fn, params, full, prefix_values = _forward_and_references(
        "critic", train.make_critic_values_fn, (1, 8, 1), batch, "critic_values"
    )
    return np.asarray(fn(params, batch.sequences())), full, prefix_values, fn


def _log_softmax(z):
    z = z.astype(np.float64)
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def test_policy_logprobs_read_the_slot_before_each_token(batch, policy_outputs):
    stats, logits, prefix_logits, _, _ = policy_outputs
    n, length = batch.response_mask.shape
    assert stats.logprobs.shape == stats.entropy.shape == (n, length)
    for i in range(n):
        for t in range(length):
            if not batch.response_mask[i, t]:
                assert stats.logprobs[i, t] == stats.entropy[i, t] == 0.0
                continue
            z = logits[i, h.P - 1 + t]  # the slot before response token t
            token = batch.tokens[i, h.P + t]
            np.testing.assert_allclose(stats.logprobs[i, t], _log_softmax(z)[token], atol=2e-5)
            np.testing.assert_allclose(stats.entropy[i, t], token_entropy(z), atol=2e-5)
            np.testing.assert_allclose(
                stats.self_certainty[i, t], token_self_certainty(z), atol=2e-5
            )
    # Independent of the slicing: the policy run on the prefix ending at slot P + t - 1.
    rows = batch.response_mask[:, PREFIX_T]
    tokens = batch.tokens[:, h.P + PREFIX_T]
    want = np.array([_log_softmax(prefix_logits[i])[tokens[i]] for i in range(n)])
    np.testing.assert_allclose(stats.logprobs[rows, PREFIX_T], want[rows], atol=2e-5)
    # One slot off would be a different number (the check can fail).
    wrong = np.array([_log_softmax(logits[i, h.P + PREFIX_T])[tokens[i]] for i in range(n)])
    assert np.max(np.abs(stats.logprobs[rows, PREFIX_T] - wrong[rows])) > 1e-2


def test_critic_values_are_before_each_token(batch, critic_outputs):
    values, full, prefix_values, _ = critic_outputs
    n, length = batch.response_mask.shape
    assert values.shape == (n, length) and values.dtype == np.float32
    for i in range(n):
        for t in range(length):
            want = full[i, h.P - 1 + t] if batch.response_mask[i, t] else 0.0
            np.testing.assert_allclose(values[i, t], want, atol=1e-5)
    # V[i, 0] is the value of the bare prompt: the critic's output at the last prompt slot.
    np.testing.assert_allclose(values[:, 0], full[:, h.P - 1], atol=1e-5)
    # V[i, t] = V(x, y_<t): the critic on the prefix that stops right before token t.
    rows = batch.response_mask[:, PREFIX_T]
    np.testing.assert_allclose(values[rows, PREFIX_T], prefix_values[rows], atol=1e-5)
    assert np.max(np.abs(full[rows, h.P + PREFIX_T] - prefix_values[rows])) > 1e-3


def test_forward_functions_compile_once(policy_outputs, critic_outputs):
    policy_fn, critic_fn = policy_outputs[3], critic_outputs[3]
    assert policy_fn.cache_size() == 1  # two batches, one executable
    assert critic_fn.cache_size() == 1
    stats_again = policy_outputs[4]
    assert stats_again.logprobs.shape == (h.N, h.L)
    assert not np.allclose(np.asarray(stats_again.logprobs), policy_outputs[0].logprobs)
    # Outputs stay split over the batch axes, ready to go into an RLBatch.
    assert stats_again.logprobs.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
