"""Numerical parity with transformers (float32, CPU) and the decoder's invariances."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from models_helpers import hf_outputs, rebuild, run

import tempo_jax.models as tm
from tempo_jax.models import layers

PARITY_TOL = 1e-4
# bfloat16 compute vs float32 on the test models (logits up to ~3.2 in magnitude). Measured
# (float32 params, bfloat16 compute): max |diff| 0.044 (qwen3) / 0.14 (olmo3, whose post-norms
# rescale rounding errors), mean 0.006 / 0.009; transformers' own bfloat16 run of the same models
# is off by max 0.049 / 0.078, mean 0.008 / 0.010. Stated tolerance: max < 0.25, mean < 0.02,
# and a mean error no worse than 1.5x transformers' bfloat16.
BF16_MAX_TOL = 0.25
BF16_MEAN_TOL = 0.02


@pytest.fixture(scope="module")
def fp32_logits(hf_cases, batch):
    tokens, mask = batch
    return {
        name: run(case.ours, tokens, mask)
        for name, case in hf_cases.items()
        if case.role == "policy"
    }


@pytest.mark.parametrize("name", ["qwen3", "qwen3_tied", "olmo3"])
def test_policy_logits_match_transformers(hf_cases, batch, fp32_logits, name):
    tokens, mask = batch
    ours = fp32_logits[name]
    ref = hf_outputs(hf_cases[name].hf, tokens, mask)
    real = mask.astype(bool)
    assert ours.shape == (3, 12, 128) and ours.dtype == np.float32
    assert np.abs(ref).max() > 1.0  # the random weights give non-trivial logits
    assert np.abs(ours - ref)[real].max() < PARITY_TOL
    assert np.isfinite(ours).all()  # padding positions are garbage but never NaN


def test_olmo3_sliding_window_pattern_matters(hf_cases, batch, fp32_logits):
    """Treating every OLMo3 layer as full attention moves the logits: the pattern is in play."""
    tokens, mask = batch
    ours = hf_cases["olmo3"].ours
    assert ours.config.layer_types == ("sliding_attention",) * 3 + ("full_attention",)
    assert ours.config.sliding_window == 4
    all_full = run(rebuild(ours, layer_types=None, sliding_window=None), tokens, mask)
    ref = hf_outputs(hf_cases["olmo3"].hf, tokens, mask)
    # Row 0 has 12 real tokens: positions >= 4 see keys the window hides.
    assert np.abs(all_full[0, 4:] - ref[0, 4:]).max() > 1e-2
    assert np.abs(fp32_logits["olmo3"][0] - ref[0]).max() < PARITY_TOL


def test_olmo3_7b_yarn_frequencies_match_transformers():
    """The real OLMo3 7B preset's rotary tables equal transformers' for both layer kinds."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.olmo3.modeling_olmo3 import Olmo3RotaryEmbedding

    from tempo_jax.models.hf_config import config_to_hf

    preset = tm.get_preset("olmo3_7b")
    hf_config = transformers.Olmo3Config(**config_to_hf(preset, "policy"))
    ref_full, ref_scale = ROPE_INIT_FUNCTIONS["yarn"](hf_config, layer_type="full_attention")
    ref_sliding, _ = Olmo3RotaryEmbedding.compute_default_rope_parameters(
        hf_config, layer_type="sliding_attention"
    )
    full, scale = layers.rope_inv_freq(preset.rope, preset.head_dim)
    sliding, _ = layers.rope_inv_freq(preset.resolved_sliding_rope, preset.head_dim)
    np.testing.assert_allclose(full, ref_full.numpy(), rtol=1e-6)
    np.testing.assert_allclose(sliding, ref_sliding.numpy(), rtol=1e-6)
    assert scale == pytest.approx(ref_scale) and scale == pytest.approx(1.2079441541679836)
    assert np.abs(full / sliding - 1).max() > 0.5  # YaRN really rescales some frequencies


def test_critic_values_match_transformers(hf_cases, batch):
    tokens, mask = batch
    case = hf_cases["qwen3_critic"]
    ours = run(case.ours, tokens, mask)
    ref = hf_outputs(case.hf, tokens, mask)[..., 0]
    assert ours.shape == (3, 12) and ours.dtype == np.float32
    assert np.abs(ref).max() > 0.5
    assert np.abs(ours - ref)[mask.astype(bool)].max() < PARITY_TOL


@pytest.mark.parametrize("name", ["qwen3", "olmo3"])
def test_more_left_padding_does_not_change_logits(hf_cases, name):
    model = hf_cases[name].ours
    rng = np.random.default_rng(1)
    sequence = rng.integers(3, 128, size=7)
    tokens = np.zeros((3, 12), np.int64)
    mask = np.zeros((3, 12), np.int32)
    for row, pad in enumerate([5, 3, 0]):  # 5 pads = just the 7 tokens
        tokens[row, pad : pad + 7] = sequence
        tokens[row, :pad] = rng.integers(3, 128, size=pad)  # junk under the padding
        mask[row, pad : pad + 7] = 1
        if pad < 5:  # rows 1, 2: extra real tokens after the sequence, right-padded
            tokens[row, pad + 7 :] = rng.integers(3, 128, size=5 - pad)
    mask[2, 7:] = 0  # row 2: the sequence, then right padding
    logits = run(model, tokens, mask)
    reference = logits[0, 5:]
    np.testing.assert_allclose(logits[1, 3:10], reference, atol=1e-5)
    np.testing.assert_allclose(logits[2, 0:7], reference, atol=1e-5)


@pytest.mark.parametrize("name", ["qwen3", "olmo3"])
def test_bfloat16_compute_close_to_float32(hf_cases, batch, fp32_logits, name):
    tokens, mask = batch
    model = tm.with_dtypes(hf_cases[name].ours, dtype="bfloat16")
    assert model.config.dtype == "bfloat16" and model.config.param_dtype == "float32"
    logits = run(model, tokens, mask)
    real = mask.astype(bool)
    diff = np.abs(logits - fp32_logits[name])[real]
    assert logits.dtype == np.float32
    assert 0 < diff.max() < BF16_MAX_TOL, diff.max()  # > 0: bfloat16 really was used
    assert diff.mean() < BF16_MEAN_TOL, diff.mean()
    hf_bf16 = copy.deepcopy(hf_cases[name].hf).to(torch.bfloat16)
    hf_diff = np.abs(hf_outputs(hf_bf16, tokens, mask) - fp32_logits[name])[real]
    assert diff.mean() < 1.5 * hf_diff.mean(), (diff.mean(), hf_diff.mean())
    agree = logits.argmax(-1)[real] == fp32_logits[name].argmax(-1)[real]
    assert agree.mean() > 0.9


def test_bfloat16_params(hf_cases, batch, fp32_logits):
    model = tm.with_dtypes(hf_cases["qwen3"].ours, dtype="bfloat16", param_dtype="bfloat16")
    dtypes = {x.dtype for x in jax.tree.leaves(nnx.state(model))}
    assert dtypes == {jnp.dtype(jnp.bfloat16)}
    tokens, mask = batch
    diff = np.abs(run(model, tokens, mask) - fp32_logits["qwen3"])[mask.astype(bool)]
    assert 0 < diff.max() < BF16_MAX_TOL and diff.mean() < BF16_MEAN_TOL


def test_hidden_states_and_output_embedding_give_the_logits(hf_cases, batch, fp32_logits):
    tokens, mask = batch
    model = hf_cases["qwen3"].ours
    hidden = np.asarray(model.hidden_states(jnp.asarray(tokens), jnp.asarray(mask)))
    weight = np.asarray(model.output_embedding())
    assert hidden.shape == (3, 12, 32) and weight.shape == (128, 32)
    np.testing.assert_allclose(hidden @ weight.T, fp32_logits["qwen3"], atol=1e-5)
    tied = hf_cases["qwen3_tied"].ours
    assert tied.lm_head is None
    assert tied.output_embedding() is not None
    np.testing.assert_array_equal(tied.output_embedding(), tied.model.embed_tokens[...])


def test_pure_under_jit_and_grad(hf_cases, batch, fp32_logits):
    """A pure loss of (graphdef, state) differentiates: every parameter gets a gradient.

    (Jitted prefill / decode over (graphdef, state) are checked in test_models_kv_cache.)
    """
    tokens, mask = batch
    model = hf_cases["olmo3"].ours
    graphdef, state = nnx.split(model)

    def loss(state):
        logits = nnx.merge(graphdef, state)(jnp.asarray(tokens), jnp.asarray(mask))
        return jnp.sum(jax.nn.log_softmax(logits)[..., 5] * mask)

    grads = jax.jit(jax.grad(loss))(state)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.isfinite(g).all(), path
        assert np.abs(g).max() > 0, path
    # The model object was not mutated by being traced.
    np.testing.assert_array_equal(
        nnx.state(model)["model"]["norm"][...], state["model"]["norm"][...]
    )


ALLOWED_AXES = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "layers", None}


@pytest.mark.parametrize("preset", ["tiny", "tiny_olmo3", "qwen3_14b", "olmo3_7b"])
@pytest.mark.parametrize("cls", [tm.Policy, tm.Critic])
def test_every_param_has_logical_axes(preset, cls):
    model = nnx.eval_shape(lambda: cls(tm.get_preset(preset), rngs=nnx.Rngs(0)))
    params = list(nnx.iter_graph(model))
    count = 0
    for path, node in params:
        if isinstance(node, nnx.Param):
            axes = node.get_metadata().get("logical_axes")
            assert axes is not None and len(axes) == node.shape.__len__(), path
            assert set(axes) <= ALLOWED_AXES, (path, axes)
            stacked = len(path) >= 2 and path[-2] == "layers"
            assert stacked == (axes[:1] == ("layers",)), path
            count += 1
    assert count >= 14


def test_critic_from_policy(hf_cases, batch):
    tokens, mask = batch
    policy = hf_cases["qwen3"].ours
    critic = tm.critic_from_policy(policy, rngs=nnx.Rngs(3))
    values = run(critic, tokens, mask)
    assert values.shape == (3, 12)
    assert 0 < np.abs(values).max() < 0.1  # ~0 but not a dead (all-zero) head
    np.testing.assert_array_equal(critic.model.layers.q_proj[...], policy.model.layers.q_proj[...])
    # A copy, not an alias: changing the critic leaves the policy alone.
    before = np.asarray(policy.model.norm[...]).copy()
    critic.model.norm[...] = critic.model.norm[...] * 2
    np.testing.assert_array_equal(policy.model.norm[...], before)
