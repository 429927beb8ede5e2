"""Policy / critic steps on 8 fake CPU devices: meshes agree with one device, state really shards,
each step compiles once, and a mesh that does not divide the heads fails before compiling.

Tolerance: 1e-5 absolute on parameters after two AdamW steps of lr 1e-3 (each parameter moves by
~2e-3). Sharded runs are not bitwise equal to one device: XLA sums partial matmuls and gradients
across devices (all-reduce / reduce-scatter) in another order, so float32 rounding differs at
~1e-7 relative; Adam divides by sqrt(v), which turns that into ~1e-6 absolute on the update.
"""

import jax
import numpy as np
import pytest
import train_step_helpers as h
from compile_counter import CompileCounter
from flax import nnx

from tempo_jax import train

TOLERANCE = 1e-5
ROLES = ("policy", "critic")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("mesh_shape", h.MESHES)
def test_mesh_matches_single_device_after_two_steps(devices, role, mesh_shape):
    single = h.run_steps(role, (1, 1, 1))
    sharded = h.run_steps(role, mesh_shape)
    moved = h.max_abs_diff(single["params"][1], h.to_numpy(h.split_model(role)[1]))
    assert moved > 1e-3  # the comparison is meaningful: two steps changed the parameters
    for step in (0, 1):
        assert h.max_abs_diff(sharded["params"][step], single["params"][step]) < TOLERANCE
        for name, value in single["metrics"][step].items():
            assert sharded["metrics"][step][name] == pytest.approx(value, rel=1e-4, abs=1e-6)
    assert single["metrics"][0]["skipped"] == 0.0 and single["metrics"][0]["empty"] == 0.0


@pytest.mark.parametrize("role", ROLES)
def test_param_and_optimizer_shards_have_the_expected_shapes(devices, role):
    c = h.model_config()
    nl, d, hd, dh, f = c.num_layers, c.hidden_size, c.num_heads, c.head_dim, c.intermediate_size
    # (data, fsdp, tensor) -> expected per-device shard of q_proj [L, D, H, Dh] and
    # gate_proj [L, D, F]: embed over fsdp, heads and mlp over tensor, data replicates.
    expected = {
        (2, 2, 2): ((nl, d // 2, hd // 2, dh), (nl, d // 2, f // 2)),
        (1, 8, 1): ((nl, d // 8, hd, dh), (nl, d // 8, f)),
        (8, 1, 1): ((nl, d, hd, dh), (nl, d, f)),
    }
    for mesh_shape, (q_shard, gate_shard) in expected.items():
        state = h.run_steps(role, mesh_shape)["state"]
        params = dict(nnx.to_flat_state(state.params))
        mu = dict(nnx.to_flat_state(state.opt_state[1][0].mu))
        nu = dict(nnx.to_flat_state(state.opt_state[1][0].nu))
        for name, shard in (("q_proj", q_shard), ("gate_proj", gate_shard)):
            key = ("model", "layers", name)
            for tree in (params, mu, nu):
                array = tree[key].get_value()
                assert {s.data.shape for s in array.addressable_shards} == {shard}
                assert len(array.addressable_shards) == 8
    if role == "policy":  # the [V, D] output projection: vocab over tensor, embed over fsdp
        lm_head = h.run_steps(role, (2, 2, 2))["state"].params["lm_head"].get_value()
        assert lm_head.addressable_shards[0].data.shape == (c.vocab_size // 2, c.hidden_size // 2)
    step = h.run_steps(role, (2, 2, 2))["state"].step
    assert int(step) == h.STEPS and step.sharding.is_fully_replicated


@pytest.mark.parametrize("role", ROLES)
def test_each_step_compiles_once_across_fresh_batches(devices, role):
    for mesh_shape in ((1, 1, 1), *h.MESHES):
        run = h.run_steps(role, mesh_shape)
        # STEPS calls with three different batches: one lowering, one executable.
        assert run["lowerings"] == 1, (mesh_shape, run["lowerings"])
        assert run["cache_size"] == 1
    # A batch of another shape is refused (it would otherwise compile a second executable).
    step = h.run_steps(role, (1, 1, 1))["step"]
    state = h.run_steps(role, (1, 1, 1))["state"]
    with CompileCounter() as counter, pytest.raises(ValueError, match="field tokens"):
        step(state, h.host_batch(5, length=h.L + 1))
    with pytest.raises(ValueError, match="field keep: shape"):
        step(state, h.host_batch(5).replace(keep=np.ones(h.N, np.int32)))
    assert counter.count == 0 and step.cache_size() == 1


def test_bad_mesh_fails_before_compiling(devices):
    _, params = h.split_model("policy")
    mesh = h.make_mesh((1, 1, 8))  # 4 heads / 2 kv heads cannot split over tensor = 8
    with CompileCounter() as counter:
        with pytest.raises(ValueError) as info:
            train.create_train_state(params, h.SETTINGS.policy_optimizer, mesh)
        message = str(info.value)
        assert (
            "model.layers.q_proj: logical axis 'heads' (dim 2, size 4) is not divisible by "
            "mesh axis 'tensor' (size 8)"
        ) in message
        assert "model.layers.k_proj: logical axis 'kv_heads' (dim 2, size 2)" in message
        abstract = train.abstract_train_state(params, h.SETTINGS.policy_optimizer)
        with pytest.raises(ValueError, match=r"logical axis 'heads' \(dim 2, size 4\)"):
            train.compile_train_step(
                h.step_fn("policy"), abstract, h.host_batch(0), mesh, micro_batches=2
            )
        # Micro-batches that the batch shards cannot split: 16 rows / 4 = 4 rows over 8 shards.
        ok_mesh = h.make_mesh((2, 4, 1))
        abstract_ok = train.abstract_train_state(params, h.SETTINGS.policy_optimizer)
        with pytest.raises(ValueError, match=r"train\.micro_batches=4: micro-batches of 4 rows"):
            train.compile_train_step(
                h.step_fn("policy"), abstract_ok, h.host_batch(0), ok_mesh, micro_batches=4
            )
    assert counter.count == 0


def _step_with_non_finite(role, seed, field, value):
    """The role's one-device step on host batch `seed` with `field`[0, 0] = `value` (row 0 is
    kept and labeled, slot 0 a real response token): (run, step, state after it, its metrics,
    the state before on the host, the clean batch)."""
    run = h.run_steps(role, (1, 1, 1))
    step, state = run["step"], run["state"]
    before = h.to_numpy(state)
    bad = h.host_batch(seed)
    corrupted = getattr(bad, field).copy()
    corrupted[0, 0] = value
    state, metrics = step(state, bad.replace(**{field: corrupted}))
    return run, step, state, metrics, before, bad


def test_skipped_and_empty_updates_keep_the_state(devices):
    nan_advantage = _step_with_non_finite("policy", 7, "advantages", np.nan)
    run, step, state, metrics, before, bad = nan_advantage
    assert float(metrics["skipped"]) == 1.0 and float(metrics["empty"]) == 0.0
    assert not np.isfinite(float(metrics["loss"]))
    after = h.to_numpy(state)
    assert jax.tree.all(jax.tree.map(np.array_equal, after, before))  # params, opt state, step
    # NaN at a padding position is masked out: a normal update.
    advantages = bad.advantages.copy()
    advantages[~bad.response_mask] = np.nan
    state, metrics = step(state, bad.replace(advantages=advantages))
    assert float(metrics["skipped"]) == 0.0 and np.isfinite(float(metrics["loss"]))
    assert int(state.step) == int(before.step) + 1
    # Every row filtered: nothing to learn from, no update (AdamW momentum would still move).
    before = h.to_numpy(state)
    state, metrics = step(state, bad.replace(keep=np.zeros(h.N, bool)))
    assert float(metrics["empty"]) == 1.0 and float(metrics["skipped"]) == 0.0
    assert jax.tree.all(jax.tree.map(np.array_equal, h.to_numpy(state), before))
    run["state"] = state  # the donated state lives on for later tests


def test_critic_skips_non_finite_returns_and_unlabeled_batches(devices):
    run, step, state, metrics, before, bad = _step_with_non_finite("critic", 8, "returns", np.inf)
    assert float(metrics["skipped"]) == 1.0
    assert jax.tree.all(jax.tree.map(np.array_equal, h.to_numpy(state), before))
    state, metrics = step(state, bad.replace(is_labeled=np.zeros(h.N, bool)))
    assert float(metrics["empty"]) == 1.0 and float(metrics["loss"]) == 0.0
    assert jax.tree.all(jax.tree.map(np.array_equal, h.to_numpy(state), before))
    run["state"] = state
