"""Attention implementations against the dense reference: forward, gradient, memory, dispatch."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tempo_jax import models, parallel
from tempo_jax.models import attention

B, T, H, K, DH = 2, 40, 4, 2, 16
# Row 0 fills the sequence, row 1 is left-padded by 7 (and right-padded by 3, like a response).
VALID = np.zeros((B, T), bool)
VALID[0] = True
VALID[1, 7:37] = True
CASES = {"causal": None, "sliding": 5}


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(B, T, H, DH)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(B, T, K, DH)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(B, T, K, DH)), jnp.float32)
    # Cotangent weights on valid queries only: padding queries are garbage by contract.
    w = jnp.asarray(rng.normal(size=(B, T, H, DH)), jnp.float32) * VALID[:, :, None, None]
    return q, k, v, w


def _slots():
    s = jnp.arange(T, dtype=jnp.int32)
    return attention.Slots(s, s, jnp.asarray(VALID))


def _dense(q, k, v, window):
    w = attention.NO_WINDOW if window is None else window
    return attention.dense_attention(q, k, v, attention.visible(_slots(), w), dtype=jnp.float32)


def _blockwise(q, k, v, window):
    w = attention.NO_WINDOW if window is None else window
    # 8-key blocks over 40 keys: five blocks, the first ones fully masked for row 1's queries.
    return attention.blockwise_attention(q, k, v, _slots(), w, dtype=jnp.float32, block_size=8)


def _jitted(fn, window, q, k, v):
    """fn's forward as one compiled program (eager dispatch would compile each op on its own)."""
    return jax.jit(fn, static_argnums=3)(q, k, v, window)


def _valid_max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)) * VALID[:, :, None, None]))


def _grads(fn, window, q, k, v, w):
    grad = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v, window) * w), argnums=(0, 1, 2))
    return jax.jit(grad)(q, k, v)


def _assert_gradients_match_dense(fn, window, q, k, v, w):
    got, want = _grads(fn, window, q, k, v, w), _grads(_dense, window, q, k, v, w)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize("case", sorted(CASES))
def test_blockwise_equals_dense_forward_and_gradient(case):
    window = CASES[case]
    q, k, v, w = _inputs()
    forward = jax.jit(lambda fn, q, k, v: fn(q, k, v, window), static_argnums=0)
    assert _valid_max_diff(forward(_blockwise, q, k, v), forward(_dense, q, k, v)) < 1e-5
    for got, want, name in zip(
        _grads(_blockwise, window, q, k, v, w),
        _grads(_dense, window, q, k, v, w),
        "qkv",
        strict=True,
    ):
        scale = float(jnp.max(jnp.abs(want)))
        assert scale > 0.1, name  # a real gradient, not zeros on both sides
        np.testing.assert_allclose(got, want, atol=1e-5 * scale, err_msg=name)


def test_blockwise_memory_grows_linearly_dense_quadratically():
    """Compiled temp bytes of forward + backward at 512, 1024, 2048 keys (XLA's own report)."""

    def temp_bytes(length, impl):
        q = jax.ShapeDtypeStruct((1, length, H, DH), jnp.float32)
        kv = jax.ShapeDtypeStruct((1, length, K, DH), jnp.float32)

        def loss(q, k, v):
            s = jnp.arange(length, dtype=jnp.int32)
            slots = attention.Slots(s, s, jnp.ones((1, length), bool))
            if impl == "dense":
                mask = attention.visible(slots, attention.NO_WINDOW)
                out = attention.dense_attention(q, k, v, mask, dtype=jnp.float32)
            else:
                out = attention.blockwise_attention(
                    q, k, v, slots, attention.NO_WINDOW, dtype=jnp.float32, block_size=128
                )
            return jnp.sum(out**2)

        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    dense = [temp_bytes(n, "dense") for n in (512, 1024, 2048)]
    block = [temp_bytes(n, "blockwise") for n in (512, 1024, 2048)]
    assert dense[2] / dense[1] > 3.5  # [T, S] scores: 4x per doubling
    assert block[2] / block[1] < 2.5 and block[1] / block[0] < 2.5  # linear: 2x
    assert block[2] * 8 < dense[2]


@pytest.mark.parametrize("case", sorted(CASES))
def test_cudnn_wrapper_equals_dense(case):
    """The rotate-to-right-padding wrapper, run by jax.nn.dot_product_attention's XLA path."""
    window = CASES[case]
    q, k, v, w = _inputs(1)
    valid = jnp.asarray(VALID)

    def cudnn(q, k, v, window):
        return attention.cudnn_attention(
            q, k, v, valid, window=window, dtype=jnp.float32, implementation="xla"
        )

    assert _valid_max_diff(_jitted(cudnn, window, q, k, v), _jitted(_dense, window, q, k, v)) < 1e-5
    _assert_gradients_match_dense(cudnn, window, q, k, v, w)


def test_splash_kernel_in_interpret_mode_equals_dense():
    """The Pallas TPU kernel, interpreted on CPU: causal and sliding, forward; causal gradient."""
    q, k, v, w = _inputs(2)
    valid = jnp.asarray(VALID)

    def splash(q, k, v, window):
        return attention.splash_attention(
            q, k, v, valid, window=window, dtype=jnp.float32, interpret=True
        )

    for window in CASES.values():
        assert (
            _valid_max_diff(_jitted(splash, window, q, k, v), _jitted(_dense, window, q, k, v))
            < 1e-5
        )
    _assert_gradients_match_dense(splash, None, q, k, v, w)


def test_dispatch_under_a_layer_scan_selects_each_layers_window():
    """`attention()` with a traced `sliding` flag (the decoder's scan) per implementation."""
    q, k, v, _ = _inputs(3)

    def run(impl, flags):
        def body(_, sliding):
            out = attention.attention(
                q,
                k,
                v,
                _slots(),
                window=5,
                sliding=sliding,
                implementation=impl,
                dtype=jnp.float32,
                self_attention=True,
                block_size=8,
            )
            return None, out

        return jax.lax.scan(body, None, jnp.asarray(flags))[1]

    dense = run("dense", [False, True])
    assert _valid_max_diff(dense[0], _jitted(_dense, None, q, k, v)) < 1e-6
    assert _valid_max_diff(dense[1], _jitted(_dense, 5, q, k, v)) < 1e-6
    assert _valid_max_diff(dense[0], dense[1]) > 0.1  # the window changes the numbers
    blockwise = run("blockwise", [False, True])
    for i in range(2):
        assert _valid_max_diff(blockwise[i], dense[i]) < 1e-5


def test_decoder_with_blockwise_attention_equals_dense():
    """A whole OLMo3 decoder (sliding and full layers) and its gradient, blockwise vs dense."""
    config = models.get_preset(
        "tiny_olmo3",
        num_layers=2,
        layer_types=("sliding_attention", "full_attention"),
        attention="dense",
    )
    policy = models.Policy(config, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(policy)
    blockwise_def, _ = nnx.split(
        models.Policy(
            dataclasses.replace(config, attention="blockwise", attention_block_size=4),
            rngs=nnx.Rngs(0),
        )
    )
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, (2, 24)), jnp.int32)
    mask = jnp.asarray(np.arange(24)[None, :] >= np.array([[0], [5]]))

    def loss(graphdef, state):
        logits = nnx.merge(graphdef, state)(tokens, mask)
        return jnp.sum(jax.nn.log_softmax(logits)[..., 0] * mask), logits

    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=1, has_aux=True), static_argnums=0)
    (loss_d, logits_d), grads_d = value_and_grad(graphdef, state)
    (loss_b, logits_b), grads_b = value_and_grad(blockwise_def, state)
    m = np.asarray(mask)[:, :, None]
    np.testing.assert_allclose(np.asarray(logits_b) * m, np.asarray(logits_d) * m, atol=1e-5)
    np.testing.assert_allclose(float(loss_b), float(loss_d), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_b), jax.tree.leaves(grads_d), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.max(jnp.abs(b))) + 1e-8)


def test_resolve_by_platform_and_config_validation():
    tiny_config = models.get_preset("tiny")
    assert attention.resolve("auto", "tpu") == "splash"
    assert attention.resolve("auto", "gpu", jnp.bfloat16) == "cudnn"
    assert attention.resolve("auto", "gpu", jnp.float32) == "blockwise"  # cuDNN needs 16 bits
    assert attention.resolve("auto", "cpu") == "blockwise"
    assert attention.resolve("dense", "tpu") == "dense"
    with pytest.raises(ValueError, match="attention must be one of"):
        attention.resolve("flash")
    with pytest.raises(ValueError, match="ModelConfig.attention"):
        dataclasses.replace(tiny_config, attention="flash")
    with pytest.raises(ValueError, match="ModelConfig.attention_block_size"):
        dataclasses.replace(tiny_config, attention_block_size=0)


def test_decode_reads_a_bfloat16_cache_without_a_float32_copy():
    """One query over a bf16 cache: XLA's temporaries stay below one float32 copy of the keys
    (the converts are fused into the reductions), and the result matches dense attention."""
    batch, slots, groups = 4, 300, 3
    index = 200

    def decode(q, k, v, valid):
        s = attention.Slots(jnp.asarray([index], jnp.int32), jnp.arange(slots), valid)
        return attention.decode_attention(q, k, v, s, attention.NO_WINDOW, dtype=jnp.bfloat16)

    rng = np.random.default_rng(4)
    q = jnp.asarray(rng.normal(size=(batch, 1, K * groups, DH)), jnp.bfloat16)
    k, v = (jnp.asarray(rng.normal(size=(batch, slots, K, DH)), jnp.bfloat16) for _ in "kv")
    valid = jnp.asarray(np.arange(slots)[None, :] <= index - np.arange(batch)[:, None] * 10)
    compiled = jax.jit(decode).lower(q, k, v, valid).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < batch * slots * K * DH * 4
    mask = attention.visible(
        attention.Slots(jnp.asarray([index]), jnp.arange(slots), valid), attention.NO_WINDOW
    )
    want = attention.dense_attention(
        q.astype(jnp.float32),
        k.astype(jnp.float32),
        v.astype(jnp.float32),
        mask,
        dtype=jnp.float32,
    )
    np.testing.assert_allclose(np.asarray(compiled(q, k, v, valid), np.float32), want, atol=0.03)


def test_splash_under_a_mesh_runs_per_shard_and_equals_dense():
    """Under an activation-sharding context the kernel runs under shard_map (rows over
    data x fsdp, heads over tensor); the lowered program holds no all-gather of the operands."""
    mesh = parallel.make_mesh((1, 2, 2), devices=jax.devices()[:4])
    q, k, v, _ = _inputs(5)
    valid = jnp.asarray(VALID)
    spec = jax.sharding.PartitionSpec(("data", "fsdp"), None, "tensor", None)
    sharding = jax.sharding.NamedSharding(mesh, spec)
    q, k, v = (jax.device_put(x, sharding) for x in (q, k, v))

    def splash(q, k, v):
        context = parallel.current_activation_sharding()
        return attention.splash_attention(
            q, k, v, valid, window=5, dtype=jnp.float32, interpret=True, sharding=context
        )

    with parallel.activation_sharding(mesh):
        lowered = jax.jit(splash).lower(q, k, v)
    compiled = lowered.compile()
    out = compiled(q, k, v)
    assert "all-gather" not in compiled.as_text()
    assert _valid_max_diff(out, _jitted(_dense, 5, q, k, v)) < 1e-5
