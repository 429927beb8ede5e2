"""The paged rollout engine: the static Sampler's tokens token for token, pages and slots reused."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx
from sampling_helpers import PAD, VOCAB

import tempo_jax.models as tm
from tempo_jax.aot.engine_compile import engine_executable, engine_shape_detail
from tempo_jax.models.attention import Slots, decode_attention
from tempo_jax.sampling import (
    FINISH_EOS,
    FINISH_LENGTH,
    FINISH_STOP,
    Sampler,
    SamplingParams,
    StopCriteria,
)
from tempo_jax.sampling.engine import Engine
from tempo_jax.sampling.page_allocator import PageAllocator
from tempo_jax.sampling.paged_attention import paged_decode_attention, ring_pages
from tempo_jax.tempo import functions as fns

MAX_NEW = 20
EOS = (3, 17, 40, 77, 101, 150, 200)  # ~3% of the vocabulary: sampled rows end at varied steps
STOP = ((5, 6), (9,))
FIELDS = ("tokens", "response_mask", "lengths", "finish_reason", "group_ids", "prompt_tokens")


def _prompts(count: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompts of lengths 12, 9, 5, 12, ... in width 12 (bucket 16)."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, VOCAB - 1, size=(count, 12)).astype(np.int32)
    mask = np.ones((count, 12), np.int32)
    for i in range(count):
        mask[i, : (0, 3, 7)[i % 3]] = 0
    tokens[mask == 0] = PAD
    return tokens, mask


def _mixed(num_rows: int) -> SamplingParams:
    """Per-row greedy, full-vocabulary, top-k and nucleus rows in one call."""
    kinds = np.arange(num_rows) % 4
    return SamplingParams(
        temperature=np.where(kinds == 1, 1.3, 0.9).astype(np.float32),
        top_k=np.where(kinds == 2, 12, 0).astype(np.int32),
        top_p=np.where(kinds == 3, 0.8, 1.0).astype(np.float32),
        greedy=kinds == 0,
    )


def olmo3_policy() -> tm.Policy:
    """OLMo3-shaped: 2 sliding layers of window 8 + 1 full (the preset's 4 layers cost a third
    more compile for the same code), the same weights wherever it is built (one compile of each
    function across the files that use it, through the persistent cache)."""
    config = tm.get_preset("tiny_olmo3", vocab_size=VOCAB, initializer_range=0.2)
    config = dataclasses.replace(
        config, num_layers=3, layer_types=("sliding_attention",) * 2 + ("full_attention",)
    )
    return tm.Policy(config, rngs=nnx.Rngs(1))


def _kwargs(max_new: int = MAX_NEW) -> dict:
    return dict(
        max_new_tokens=max_new,
        prompt_buckets=(16,),
        eos_ids=EOS,
        stop_sequences=STOP,
        pad_id=PAD,
        max_top_k=32,
    )


def _assert_same(got, want) -> None:
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(got, name), np.asarray(getattr(want, name)), name)
    for name in ("logprobs", "sampling_logprobs"):  # another attention reduction order
        np.testing.assert_allclose(getattr(got, name), np.asarray(getattr(want, name)), atol=2e-5)


@pytest.fixture(scope="module")
def stop(policy, state) -> StopCriteria:
    """EOS plus the token greedy decoding of prompt 1 gives at step 4 (so greedy rows end at
    different steps too), same counts as the engines' own criteria (no recompile). The probe
    draws 3 greedy samples a prompt, the static rollouts' shape (one executable)."""
    tokens, mask = _prompts()
    probe = Sampler(policy, **_kwargs()).generate(
        state, tokens, mask, n=3, sampling=SamplingParams(greedy=True)
    )
    extra = int(np.asarray(probe.tokens)[3, 4])  # row 3: prompt 1's first sample
    return StopCriteria.create(EOS[:-1] + (extra,), STOP, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def static_rollouts(policy, state, stop):
    tokens, mask = _prompts()
    sampler = Sampler(policy, **_kwargs())
    return {
        name: sampler.generate(state, tokens, mask, n=3, sampling=sampling, seed=11, stop=stop)
        for name, sampling in (("greedy", SamplingParams(greedy=True)), ("mixed", _mixed(9)))
    }


@pytest.mark.parametrize("num_slots,page_size", [(3, 4), (8, 16), (0, 4)])
def test_engine_equals_the_static_sampler_token_for_token(
    policy, state, stop, static_rollouts, num_slots, page_size
):
    """3 prompts x 3 samples, greedy and mixed per-row sampling, EOS / stop sequences ending
    rows at different steps, with fewer slots than rows (refills) or one slot per row."""
    tokens, mask = _prompts()
    engine = Engine(policy, page_size=page_size, num_slots=num_slots, steps_per_call=6,
                    **_kwargs())  # fmt: skip
    for name, sampling in (("greedy", SamplingParams(greedy=True)), ("mixed", _mixed(9))):
        got = engine.generate(state, tokens, mask, n=3, sampling=sampling, seed=11, stop=stop)
        want = static_rollouts[name]
        _assert_same(got, want)
        lengths = np.asarray(want.lengths)
        assert lengths.min() < MAX_NEW and lengths.max() == MAX_NEW, lengths  # varied lengths
        stats = engine.last_stats
        assert stats["kept_tokens"] == int(lengths.sum()) - int((lengths >= 1).sum())
        # Every call steps at most num_slots slots (fewer once the queue is empty).
        assert stats["kept_tokens"] <= stats["slot_steps"]
        assert stats["slot_steps"] <= stats["calls"] * engine.steps_per_call * (num_slots or 9)
    reasons = set(np.asarray(static_rollouts["mixed"].finish_reason).tolist())
    assert FINISH_LENGTH in reasons and reasons & {FINISH_EOS, FINISH_STOP}


def test_a_small_pool_makes_rows_wait_for_pages_and_still_gives_the_same_tokens(
    policy, state, stop, static_rollouts
):
    """A pool of 16 pages of 4 tokens (8 of them the prompts') holds about two rows at full
    length: admission goes by free pages, 8 slots of growing rows overflow it, so rows are
    preempted and decoded again; the peak stays inside the pool and the tokens do not change."""
    tokens, mask = _prompts()
    engine = Engine(policy, page_size=4, num_slots=8, num_pages=16, steps_per_call=6,
                    **_kwargs())  # fmt: skip
    got = engine.generate(state, tokens, mask, n=3, sampling=_mixed(9), seed=11, stop=stop)
    _assert_same(got, static_rollouts["mixed"])
    stats = engine.last_stats
    assert stats["peak_pages"] <= 15 and stats["preemptions"] > 0
    lengths = np.asarray(got.lengths)
    assert stats["kept_tokens"] == int(lengths.sum()) - int((lengths >= 1).sum())
    too_small = Engine(policy, page_size=4, num_slots=2, num_pages=4, **_kwargs())
    with pytest.raises(ValueError, match="rollout.paged.num_pages"):
        too_small.generate(state, tokens, mask, n=1, sampling=SamplingParams(greedy=True))


def test_paged_attention_reference_equals_decode_attention_on_the_same_keys():
    """Random pages in a shuffled pool, GQA (4 query heads on 2 kv heads), lengths 1 .. 11,
    full and window 5 (ring of 3 pages of 3): the contiguous decode_attention's numbers."""
    rng = np.random.default_rng(0)
    num_slots, kv, heads, dim, ps, width = 3, 2, 4, 8, 3, 4
    lengths = np.array([1, 7, 11], np.int32)
    keys = rng.normal(size=(num_slots, width * ps, kv, dim)).astype(np.float32)
    values = rng.normal(size=keys.shape).astype(np.float32)
    q = rng.normal(size=(num_slots, heads, dim)).astype(np.float32)
    pages = rng.permutation(np.arange(1, 1 + num_slots * width)).reshape(num_slots, width)
    pool_k = np.zeros((kv, 1 + num_slots * width, ps, dim), np.float32)
    pool_v = np.zeros_like(pool_k)
    for s in range(num_slots):
        for j in range(width):
            pool_k[:, pages[s, j]] = np.swapaxes(keys[s, j * ps : (j + 1) * ps], 0, 1)
            pool_v[:, pages[s, j]] = np.swapaxes(values[s, j * ps : (j + 1) * ps], 0, 1)
    for window in (None, 5):
        slots = np.arange(width * ps)
        valid = slots[None, :] < lengths[:, None]
        want = np.stack([
            np.asarray(decode_attention(
                q[s][None, None], keys[s][None], values[s][None],
                Slots(np.array([lengths[s] - 1]), slots, valid[s][None]),
                window or 2**30, dtype=np.float32,
            ))[0, 0]
            for s in range(num_slots)
        ])  # fmt: skip
        if window is None:
            table, k_pool, v_pool = pages, pool_k, pool_v
        else:  # the same positions stored in a ring of R pages
            ring = ring_pages(window, ps)
            table = pages[:, :ring]
            k_pool, v_pool = np.zeros_like(pool_k), np.zeros_like(pool_v)
            for s in range(num_slots):
                for pos in range(lengths[s]):
                    page, off = table[s, (pos // ps) % ring], pos % ps
                    k_pool[:, page, off] = keys[s, pos]
                    v_pool[:, page, off] = values[s, pos]
        got = paged_decode_attention(
            q, k_pool, v_pool, lengths, table, impl="reference", sm_scale=dim**-0.5, window=window
        )
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)
    with pytest.raises(ValueError, match="impl"):
        paged_decode_attention(q, pool_k, pool_v, lengths, pages, impl="dense", sm_scale=1.0)


def test_page_allocator_shares_and_frees_by_reference_count():
    allocator = PageAllocator(6)
    prompt = allocator.allocate(3)
    assert 0 not in prompt and allocator.num_free == 2
    allocator.share(prompt[:2])  # a sample reads the prompt's two full pages
    allocator.release(prompt)  # the prompt lets go after its last sample is admitted
    assert allocator.num_free == 3 and allocator.in_use == 2
    allocator.release(prompt[:2])
    assert allocator.num_free == 5 and allocator.peak_in_use == 3
    with pytest.raises(RuntimeError, match="exhausted"):
        allocator.allocate(6)
    with pytest.raises(RuntimeError, match="not held"):
        allocator.release([prompt[0]])


def test_engine_executables_compile_from_abstract_parameters(policy, state):
    """`aot.engine_compile` builds prefill, decode and the refill ahead of time for 3 prompts x 3
    samples of width 16: every executable's arguments hold the page pools it takes (2 layers x
    k and v x 1 + 3 x 4 + 9 x 9 pages); the refill, at its widest one readmitted row of
    16 + 19 tokens (the chunk prefill's 3 x 16 cache holds one), gives the pools back
    (donated)."""
    engine = Engine(policy, page_size=4, num_slots=0, steps_per_call=6, **_kwargs())
    abstract = jax.eval_shape(lambda: state)
    pages = 1 + 3 * 4 + 9 * 9  # scratch + prompt pages + slots x ceil((16 + 19) / 4)
    calls = {
        function: fns.Call(function, 9, prompts=3, samples=3)
        for function in (fns.ENGINE_PREFILL, fns.ENGINE_DECODE, fns.ENGINE_REFILL)
    }
    compiled = {
        function: engine_executable(engine, abstract, call, 16, pages, engine.stop.arrays())
        for function, call in calls.items()
    }
    c = policy.config
    pool_bytes = 2 * c.num_layers * c.num_kv_heads * pages * 4 * c.head_dim * 4
    for executable in compiled.values():
        assert executable.memory_analysis().argument_size_in_bytes >= pool_bytes
    assert engine.refill_rows(3, 16) == 1
    detail = engine_shape_detail(engine, calls[fns.ENGINE_REFILL], 16, pages)
    assert "1 readmitted rows of 35 tokens" in detail
    assert compiled[fns.ENGINE_REFILL].memory_analysis().output_size_in_bytes >= pool_bytes


def test_the_engine_sharded_over_rows_and_tensor_gives_the_static_sampler_tokens(
    policy, state, stop, static_rollouts
):
    """On 8 devices as 4 row shards x tensor 2: the 3 prompts padded to 4 (one per shard), 8
    slots (2 a shard, so rows queue), weights and KV heads split in 2, each shard's pool its own
    10 pages of 4 (its prompt takes 3): each shard preempts and refills its own rows. Greedy and
    mixed per-row sampling give the single-device static tokens."""
    from tempo_jax import parallel

    tokens, mask = _prompts()
    mesh = parallel.make_mesh((4, 1, 2))
    engine = Engine(policy, page_size=4, num_slots=8, num_pages=10, steps_per_call=6,
                    mesh=mesh, decode_tensor=2, **_kwargs())  # fmt: skip
    assert (engine.layout.data, engine.layout.tensor) == (4, 2)
    for name, sampling in (("greedy", SamplingParams(greedy=True)), ("mixed", _mixed(9))):
        got = engine.generate(state, tokens, mask, n=3, sampling=sampling, seed=11, stop=stop)
        _assert_same(got, static_rollouts[name])
        assert engine.last_stats["refills"] > 0, name
    (pools,) = engine._pools.values()
    c = policy.config
    full_pages = 10  # per shard
    assert pools.k[0].shape == (c.num_kv_heads, 4 * full_pages, 4, c.head_dim)
    shard = pools.k[0].addressable_shards[0].data.shape
    assert shard == (c.num_kv_heads // 2, full_pages, 4, c.head_dim)
    assert engine.last_stats["slot_steps"] % (4 * engine.steps_per_call) == 0
    # The decode call's collectives: per layer one all-reduce of the attention output and one of
    # the MLP output over tensor, one for the vocabulary-split embedding lookup, one all-gather
    # of the logits; no pool, table or row is gathered across shards.
    compiled = engine.lower("decode", jax.eval_shape(lambda: state), 3, 3, 16, stop.arrays())
    hlo = compiled.compile().as_text()
    assert hlo.count("all-reduce(") == 2 * c.num_layers + 1
    assert hlo.count("all-gather(") == 1 and "all-to-all" not in hlo


def test_a_vocabulary_the_tensor_split_does_not_divide_stays_whole():
    """OLMo3's 100278-token vocabulary over tensor 4: heads split, embedding and head whole."""
    from tempo_jax import parallel
    from tempo_jax.sampling.engine_layout import EngineLayout, weight_axes

    config = tm.get_preset("tiny", vocab_size=255)
    policy = nnx.eval_shape(lambda: tm.Policy(config, rngs=nnx.Rngs(0)))
    layout = EngineLayout.create(parallel.make_mesh((4, 1, 2)), None, 2, config)
    weights, head = layout.decode_weight_shardings(weight_axes(policy))
    assert head.spec == weights.embed.spec == jax.sharding.PartitionSpec()
    assert weights.layers[0]["q_proj"].spec == jax.sharding.PartitionSpec(None, "tensor")
    assert layout.logits.spec == jax.sharding.PartitionSpec(("data", "fsdp"), None)
    with pytest.raises(ValueError, match="decode_tensor=4 does not divide the 2 KV heads"):
        EngineLayout.create(parallel.make_mesh((2, 1, 4)), None, 4, config)
