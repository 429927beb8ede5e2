"""The `train` config section, optimizer schedules, train-state building, Orbax round trip and the
bfloat16-compute / remat options."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import train_step_helpers as h
from flax import nnx

from tempo_jax import train


def test_defaults_are_the_authors_settings():
    settings = train.settings_from_config(train.get_config())
    assert (
        settings.policy_optimizer.learning_rate == settings.critic_optimizer.learning_rate == 1e-6
    )
    assert settings.policy_optimizer.weight_decay == 0.0
    assert settings.critic_optimizer.weight_decay == 0.01
    assert settings.policy_optimizer.max_grad_norm == settings.critic_optimizer.max_grad_norm == 1.0
    assert settings.value_clip == 0.1 and settings.micro_batches == 1
    assert settings.policy_loss.name == "gspo" and settings.policy_loss.options() == {}
    assert settings == train.settings_from_config(None)
    hash(settings)  # closures and caches key on it


def test_every_field_has_a_comment():
    import inspect

    from tempo_jax.train import config as config_module

    source = inspect.getsource(config_module._optimizer_config) + inspect.getsource(
        config_module.get_config
    )
    for line in source.splitlines():
        if line.strip().startswith("cfg.") and "=" in line:
            assert "#" in line, f"field without a comment: {line.strip()}"


def test_overrides_from_a_config_dict():
    cfg = train.get_config()
    cfg.policy_loss.name = "ppo"
    cfg.policy_loss.clip_low = 0.1
    cfg.policy_optimizer.schedule = "warmup"
    cfg.policy_optimizer.warmup_steps = 4
    cfg.micro_batches = 4
    cfg.compute_dtype = "bfloat16"
    settings = train.settings_from_config(cfg)
    assert settings.policy_loss.options() == {"clip_low": 0.1}
    assert settings.policy_loss.aggregation == "token_mean"
    assert settings.micro_batches == 4 and settings.compute_dtype == "bfloat16"
    schedule = train.make_schedule(settings.policy_optimizer)
    lrs = [float(schedule(i)) for i in range(6)]
    np.testing.assert_allclose(lrs, [0, 0.25e-6, 0.5e-6, 0.75e-6, 1e-6, 1e-6], rtol=1e-6)
    assert float(train.make_schedule(settings.critic_optimizer)(0)) == pytest.approx(1e-6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"policy_optimizer": {"learning_rate": -1.0}}, r"train\.policy_optimizer\.learning_rate"),
        ({"critic_optimizer": {"schedule": "cosine"}}, r"train\.critic_optimizer\.schedule"),
        ({"policy_optimizer": {"schedule": "warmup"}}, r"train\.policy_optimizer\.warmup_steps"),
        ({"critic_optimizer": {"b2": 1.0}}, r"train\.critic_optimizer\.b2 must be in \[0, 1\)"),
        ({"policy_optimizer": {"max_grad_norm": -1.0}}, r"train\.policy_optimizer\.max_grad"),
        ({"policy_loss": {"name": "reinforce"}}, r"train\.policy_loss\.name must be one of"),
        ({"policy_loss": {"dual_clip": 3.0}}, r"train\.policy_loss\.dual_clip applies only"),
        ({"policy_loss": {"name": "ppo", "dual_clip": 0.5}}, r"train\.policy_loss\.dual_clip"),
        ({"micro_batches": 0}, r"train\.micro_batches must be >= 1"),
        ({"micro_batches": 2.5}, r"train\.micro_batches must be an int"),
        ({"vocab_chunk_size": 0}, r"train\.vocab_chunk_size"),
        ({"compute_dtype": "float16"}, r"train\.compute_dtype must be one of"),
        ({"value_clip": 0.0}, r"train\.value_clip must be > 0"),
        ({"remat": "yes"}, r"train\.remat must be a bool"),
        ({"learning_rate": 1e-3}, r"train\.<root> has unknown fields \['learning_rate'\]"),
        ({"policy_optimizer": {"lr": 1e-3}}, r"train\.policy_optimizer has unknown fields"),
    ],
)
def test_invalid_fields_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        train.settings_from_config(overrides)


def test_clipping_and_weight_decay_reach_the_optimizer():
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.array([30.0, 40.0, 0.0])}  # norm 50
    settings = train.OptimizerSettings(learning_rate=0.1, weight_decay=0.5, max_grad_norm=1.0)
    tx = train.make_optimizer(settings)
    updates, _ = tx.update(grads, tx.init(params), params)
    # Adam's first step is lr * sign(g) (after clipping to norm 1), plus lr * wd * w.
    np.testing.assert_allclose(updates["w"], [-0.1 - 0.05, -0.1 - 0.05, -0.05], rtol=1e-5)
    unclipped = train.make_optimizer(dataclasses.replace(settings, max_grad_norm=0.0))
    assert isinstance(unclipped.init(params)[0], optax.EmptyState)


def test_split_for_training_applies_dtype_and_remat_and_keeps_float32_params():
    settings = train.settings_from_config({"compute_dtype": "bfloat16", "remat": True})
    graphdef, params = train.split_for_training(h.policy_model(), settings)
    model = nnx.merge(graphdef, params)
    assert model.config.dtype == "bfloat16" and model.config.remat
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    state = train.abstract_train_state(params, settings.policy_optimizer)
    assert {x.dtype for x in jax.tree.leaves(state.opt_state) if x.ndim} == {jnp.dtype("float32")}
    jaxpr = str(jax.make_jaxpr(train.make_policy_step(graphdef, settings))(state, h.host_batch(0)))
    assert "remat" in jaxpr and "bf16" in jaxpr  # the layer body is checkpointed, matmuls bf16
    graphdef32, _ = h.split_model("policy")
    plain = str(
        jax.make_jaxpr(train.make_policy_step(graphdef32, h.SETTINGS))(state, h.host_batch(0))
    )
    assert "remat" not in plain and "bf16" not in plain


def test_bfloat16_remat_step_trains_close_to_float32(devices):
    settings = dataclasses.replace(h.SETTINGS, compute_dtype="bfloat16", remat=True)
    graphdef, params = train.split_for_training(h.policy_model(), settings)
    mesh = h.make_mesh((1, 1, 1))
    state = train.create_train_state(params, settings.policy_optimizer, mesh)
    step = train.compile_train_step(
        train.make_policy_step(graphdef, settings),
        state,
        h.host_batch(0),
        mesh,
        micro_batches=settings.micro_batches,
        compiler_options=h.FAST_COMPILE,
    )
    state, metrics = step(state, h.host_batch(0))
    reference = h.run_steps("policy", (1, 1, 1))["metrics"][0]  # float32, no remat
    assert float(metrics["skipped"]) == 0.0
    for name in ("loss", "entropy", "approx_kl"):
        assert float(metrics[name]) == pytest.approx(reference[name], rel=2e-2, abs=2e-3)
    assert float(metrics["grad_norm"]) == pytest.approx(reference["grad_norm"], rel=5e-2)
    leaves = jax.tree.leaves(state)
    assert {x.dtype for x in leaves if x.ndim} == {jnp.dtype(jnp.float32)}


def test_orbax_round_trip_of_a_sharded_state(devices, tmp_path):
    state = h.run_steps("critic", (2, 2, 2))["state"]
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "critic", state)
    checkpointer.wait_until_finished()
    _, params = h.split_model("critic")
    target = train.abstract_train_state(params, h.SETTINGS.critic_optimizer, h.make_mesh((2, 2, 2)))
    restored = checkpointer.restore(tmp_path / "critic", target)
    assert isinstance(restored, train.TrainState)
    same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), restored, state)
    assert jax.tree.all(same) and int(restored.step) == h.STEPS
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        assert got.sharding == want.sharding


def test_split_for_training_rejects_mismatched_params():
    model = h.policy_model()
    model.lm_head.set_value(jnp.zeros((3, 3)))
    with pytest.raises(ValueError, match="Policy: parameters do not match its config"):
        train.split_for_training(model, h.SETTINGS)


def test_config_section_is_an_ml_collections_config():
    cfg = train.get_config()
    assert isinstance(cfg, ml_collections.ConfigDict)
    cfg.critic_optimizer.learning_rate = 0  # an int from the command line is accepted
    assert train.settings_from_config(cfg).critic_optimizer.learning_rate == 0


def test_micro_batch_rows_fixes_the_micro_batch_size_of_every_batch():
    fixed = train.settings_from_config({"micro_batches": 4, "micro_batch_rows": 32})
    # The policy update (512 rows) and the critic's whole step (2048 rows) both get 32-row
    # micro-batches, so each holds the same rows per device.
    assert train.micro_batches_for(fixed, 512) == 16 and train.micro_batches_for(fixed, 2048) == 64
    counted = train.settings_from_config({"micro_batches": 4})
    assert train.micro_batches_for(counted, 512) == train.micro_batches_for(counted, 2048) == 4
    with pytest.raises(
        ValueError, match="train.micro_batch_rows = 32 does not divide a batch of 48"
    ):
        train.micro_batches_for(fixed, 48)
    with pytest.raises(ValueError, match="train.micro_batch_rows must be >= 0"):
        train.settings_from_config({"micro_batch_rows": -1})
