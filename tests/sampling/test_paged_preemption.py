"""Recompute preemption in the paged engine: a preempted row keeps its tokens and, when
readmitted, a prefill of its prompt and response recomputes its keys and values; the tokens and
log-probs stay the static sampler's."""

from __future__ import annotations

import numpy as np
from flax import nnx
from test_paged_engine import _assert_same, _kwargs, _mixed, _prompts, olmo3_policy

from tempo_jax.sampling import Sampler, SamplingParams
from tempo_jax.sampling.engine import Engine
from tempo_jax.sampling.paged_attention import ring_pages


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
    """OLMo3-shaped (`olmo3_policy`: 2 sliding layers of window 8 + 1 full), 6 slots over 14
    pages of 4: the sliding layers' rings hold ring_pages(8, 4) = 3 pages per slot, rows run
    past the window (prompt 12 + 20 tokens); rows preempted after their ring wrapped are
    refilled into it (the last R pages' worth) and into the full layer's pages; every row gives
    the static sampler's tokens."""
    policy = olmo3_policy()
    config, state = policy.config, nnx.state(policy)
    tokens, mask = _prompts()
    want = Sampler(policy, **_kwargs()).generate(state, tokens, mask, n=2, sampling=_mixed(6))
    engine = Engine(policy, page_size=4, num_slots=6, num_pages=14, steps_per_call=4,
                    **_kwargs())  # fmt: skip
    assert engine.ring == ring_pages(8, 4) == 3
    assert np.asarray(want.lengths).max() + 12 > 2 * config.sliding_window
    got = engine.generate(state, tokens, mask, n=2, sampling=_mixed(6))
    _assert_same(got, want)
    stats = engine.last_stats
    assert stats["refills"] > 0
    # A refilled row wrapped its ring: its oldest positions were left out of the refill.
    assert stats["longest_refill"] > engine.ring * engine.page_size > config.sliding_window
