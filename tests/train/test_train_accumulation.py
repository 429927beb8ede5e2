"""Gradient accumulation: k micro-batches give the gradient, loss and update of one big batch.

The batch has uneven prompt and response lengths (1 .. L tokens) and a filtered row, so a naive
"average the k micro-batch losses" would weight rows wrongly: GSPO's seq-mean-token-mean needs
each micro-batch weighted by its share of rows, PPO's token mean by its share of tokens. The
reference is the plain computation on the whole batch: full [N, S, V] logits, log-softmax, the
`tempo_jax.rl` loss, `jax.grad`.
"""

import dataclasses

import jax
import jax.numpy as jnp
import pytest
import train_step_helpers as h
from flax import nnx

from tempo_jax import rl, train

K = 4  # 16 rows -> 4 micro-batches of 4 (rows i, i + 4, ...)


def _settings(loss: str, micro_batches: int) -> train.TrainSettings:
    return train.settings_from_config(
        {
            "micro_batches": micro_batches,
            "vocab_chunk_size": 128,
            "policy_loss": {"name": loss},
            "policy_optimizer": {"learning_rate": 1e-3, "eps": 1e-6},
        }
    )


def _naive_policy_loss(graphdef, loss_name, params, batch):
    """The whole batch at once, full logits, no chunking, no micro-batches."""
    policy = nnx.merge(graphdef, params)
    logits = policy(batch.tokens, batch.attention_mask)  # [N, S, V]
    logprobs = jax.nn.log_softmax(logits[:, h.P - 1 : -1])  # slots P-1 .. S-2
    logprobs = jnp.take_along_axis(logprobs, batch.tokens[:, h.P :, None], -1)[..., 0]
    loss_fn = rl.POLICY_LOSSES.get(loss_name)
    return loss_fn(
        logprobs, batch.old_logprobs, batch.advantages, batch.response_mask, keep=batch.keep
    )


@pytest.mark.parametrize("loss_name", ["gspo", "ppo"])
def test_micro_batch_gradients_equal_the_full_batch_gradient(devices, loss_name):
    graphdef, params = h.split_model("policy")
    batch = h.host_batch(21)
    many = train.make_policy_gradients(graphdef, _settings(loss_name, K))

    @jax.jit(compiler_options=h.FAST_COMPILE)  # one compile for both computations
    def both(params, batch):
        naive = jax.value_and_grad(
            lambda p: _naive_policy_loss(graphdef, loss_name, p, batch), has_aux=True
        )(params)
        return naive, many(params, batch)

    ((naive_loss, naive_metrics), naive_grads), (grads, metrics) = both(params, batch)
    scale = max(jax.tree.leaves(jax.tree.map(lambda g: float(jnp.max(jnp.abs(g))), naive_grads)))
    assert scale > 1e-3  # a real gradient
    assert h.max_abs_diff(h.to_numpy(grads), h.to_numpy(naive_grads)) < 1e-5 * scale
    assert float(metrics["loss"]) == pytest.approx(float(naive_loss), rel=1e-5, abs=1e-7)
    for name in ("clipfrac", "approx_kl"):
        want = float(naive_metrics[name])
        assert float(metrics[name]) == pytest.approx(want, rel=1e-5, abs=1e-7)
    mask = batch.response_mask & batch.keep[:, None]
    assert float(metrics["tokens"]) == mask.sum() and float(metrics["rows"]) == 15


def test_micro_batch_step_updates_equal_the_full_batch_step(devices):
    """The compiled GSPO step with k = 1 against the shared k = 2 run (same batches 0 and 1):
    the same loss, grad norm and parameters after each of two steps."""
    graphdef, params = h.split_model("policy")
    mesh = h.make_mesh((1, 1, 1))
    settings = dataclasses.replace(h.SETTINGS, micro_batches=1)
    state = train.create_train_state(
        jax.tree.map(jnp.copy, params), settings.policy_optimizer, mesh
    )
    step = train.compile_train_step(
        train.make_policy_step(graphdef, settings),
        state,
        h.host_batch(0),
        mesh,
        micro_batches=1,
        compiler_options=h.FAST_COMPILE,
    )
    micro = h.run_steps("policy", (1, 1, 1))  # k = 2
    assert h.MICRO_BATCHES == 2
    for i in range(2):
        state, metrics = step(state, h.host_batch(i))
        assert h.max_abs_diff(micro["params"][i], h.to_numpy(params)) > 5e-4  # ~lr per step
        assert h.max_abs_diff(h.to_numpy(state.params), micro["params"][i]) < 1e-5
        for name in ("loss", "grad_norm", "clipfrac", "approx_kl", "entropy"):
            want = micro["metrics"][i][name]
            assert float(metrics[name]) == pytest.approx(want, rel=1e-4, abs=1e-7)
