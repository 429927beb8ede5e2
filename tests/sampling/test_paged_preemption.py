"""Recompute preemption in the paged engine: a preempted row keeps its tokens and, when
readmitted, a prefill of its prompt and response recomputes its keys and values; the tokens and
log-probs stay the static sampler's."""

from __future__ import annotations

import numpy as np
from flax import nnx
from sampling_helpers import VOCAB
from test_paged_engine import _assert_same, _kwargs, _mixed, _prompts

import tempo_jax.models as tm
from tempo_jax.sampling import Sampler, SamplingParams
from tempo_jax.sampling.engine import Engine


def test_recomputed_rows_give_the_static_tokens_and_log_probs(policy, state):
    """Greedy and mixed per-row sampling, 3 prompts x 3 samples, 8 slots over 16 pages of 4
    tokens (8 of them the prompts'): growing rows overflow the pool, are preempted mid-response
    and refilled; tokens, lengths and finish reasons equal the static sampler's, log-probs to
    float rounding; no token is decoded twice (restart decodes the preempted ones again)."""
    tokens, mask = _prompts()
    static = Sampler(policy, **_kwargs())
    engine = Engine(policy, page_size=4, num_slots=8, num_pages=16, steps_per_call=6,
                    **_kwargs())  # fmt: skip
    assert engine.preemption == "recompute"
    stats = {}
    for name, sampling in (("greedy", SamplingParams(greedy=True)), ("mixed", _mixed(9))):
        want = static.generate(state, tokens, mask, n=3, sampling=sampling, seed=11)
        got = engine.generate(state, tokens, mask, n=3, sampling=sampling, seed=11)
        _assert_same(got, want)
        stats[name] = engine.last_stats
        lengths = np.asarray(want.lengths)
        # One kept token per decoded step of each row, none twice.
        assert stats[name]["kept_tokens"] == int(lengths.sum()) - int((lengths >= 1).sum())
        assert stats[name]["preemptions"] > 0
        assert stats[name]["refills"] == stats[name]["preemptions"]
        assert stats[name]["peak_pages"] <= 15
    engine.preemption = "restart"  # a host policy: the same executables
    got = engine.generate(state, tokens, mask, n=3, sampling=_mixed(9), seed=11)
    _assert_same(got, want)
    restart = engine.last_stats
    assert restart["refills"] == 0 and restart["preemptions"] > 0
    assert stats["mixed"]["slot_steps"] < restart["slot_steps"]


def test_recompute_refills_sliding_rings_past_the_window():
    """OLMo3-shaped (3 sliding layers of window 8 + 1 full), 6 slots over 14 pages of 4: rows
    preempted after their ring wrapped are refilled into it (the last R pages' worth) and into
    the full layer's pages, and give the static sampler's tokens."""
    config = tm.get_preset("tiny_olmo3", vocab_size=VOCAB, initializer_range=0.2)
    policy = tm.Policy(config, rngs=nnx.Rngs(1))
    state = nnx.state(policy)
    tokens, mask = _prompts()
    want = Sampler(policy, **_kwargs()).generate(state, tokens, mask, n=2, sampling=_mixed(6))
    engine = Engine(policy, page_size=4, num_slots=6, num_pages=14, steps_per_call=4,
                    **_kwargs())  # fmt: skip
    got = engine.generate(state, tokens, mask, n=2, sampling=_mixed(6))
    _assert_same(got, want)
    stats = engine.last_stats
    assert stats["refills"] > 0
    # A refilled row wrapped its ring: its oldest positions were left out of the refill.
    assert stats["longest_refill"] > engine.ring * engine.page_size > config.sliding_window


def test_recompute_on_row_shards_refills_each_shard_in_its_own_pages(policy, state):
    """4 row shards x tensor 2 on 8 devices, 2 slots and 10 pages of 4 a shard (its prompt
    takes 3): each shard preempts and refills its own rows, and the tokens are the
    single-device static sampler's (mixed sampling)."""
    from tempo_jax import parallel

    tokens, mask = _prompts()
    want = Sampler(policy, **_kwargs()).generate(state, tokens, mask, n=3, sampling=_mixed(9),
                                                 seed=11)  # fmt: skip
    engine = Engine(policy, page_size=4, num_slots=8, num_pages=10, steps_per_call=6,
                    mesh=parallel.make_mesh((4, 1, 2)), decode_tensor=2, **_kwargs())  # fmt: skip
    got = engine.generate(state, tokens, mask, n=3, sampling=_mixed(9), seed=11)
    _assert_same(got, want)
    assert engine.last_stats["refills"] > 0


def test_the_refill_compiles_ahead_of_time_at_its_widest(policy, state):
    """`aot.engine_compile` builds the refill for 3 prompts x 3 samples of width 16: one
    readmitted row of 16 + 19 tokens (the chunk prefill's 3 x 16 cache holds one), writing
    into the pools it takes (2 layers x k and v)."""
    import jax

    from tempo_jax.aot.engine_compile import engine_executable, engine_shape_detail
    from tempo_jax.tempo import functions as fns

    engine = Engine(policy, page_size=4, num_slots=0, steps_per_call=6, **_kwargs())
    call = fns.Call(fns.ENGINE_REFILL, 9, prompts=3, samples=3)
    pages = 1 + 3 * 4 + 9 * 9  # scratch + prompt pages + slots x ceil((16 + 19) / 4)
    compiled = engine_executable(engine, jax.eval_shape(lambda: state), call, 16, pages,
                                 engine.stop.arrays())  # fmt: skip
    assert engine.refill_rows(3, 16) == 1
    assert "1 readmitted rows of 35 tokens" in engine_shape_detail(engine, call, 16, pages)
    c = policy.config
    pool_bytes = 2 * c.num_layers * c.num_kv_heads * pages * 4 * c.head_dim * 4
    memory = compiled.memory_analysis()
    assert memory.argument_size_in_bytes >= pool_bytes
    assert memory.output_size_in_bytes >= pool_bytes  # the pools come back (donated)
