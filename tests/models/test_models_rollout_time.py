"""The rollout-time model: length distributions, the bandwidth floor, today's static sampler (the
README's 3615 s) and the paged engine's estimate, on hand-checkable numbers."""

import dataclasses

import numpy as np
import pytest

from tempo_jax.models import get_preset
from tempo_jax.models import rollout_time as rt
from tempo_jax.parallel.topology import GIB, TPU_CHIPS, ChipSpec

V5P = TPU_CHIPS["TPU v5"]


def _qwen3_8b(**changes) -> rt.RolloutRecipe:
    """Qwen3-8B's AIME recipe on v5p:2x2x4 as its compile report has it: 15.26 GiB of bfloat16
    decode weights, 1.91 + 9.10 GiB of train states per chip, 128-row static chunks."""
    model = get_preset("qwen3_8b", dtype="bfloat16")
    params = model.num_layers * rt.model_flops.layer_matmul_params(model)
    params += 2 * model.vocab_size * model.hidden_size  # untied embedding and output head
    recipe = rt.RolloutRecipe(
        model, V5P, chips=16, rows=2048, samples=8, max_new_tokens=16384,
        max_prompt_length=2048, weight_bytes=2 * params, resident_bytes=int(11.01 * GIB),
        static_chunk_rows=128,
    )  # fmt: skip
    return dataclasses.replace(recipe, **changes)


def test_aime_distribution_has_its_two_moments_and_full_is_the_cap():
    lengths = rt.AIME.lengths(16384, 2048)
    assert abs(lengths.mean() - 9000) < 20
    assert abs((lengths == 16384).mean() - 0.14) < 0.002
    assert lengths.min() >= 1 and np.median(lengths) < 9000  # long-tailed: median below mean
    assert (rt.FULL.lengths(100, 7) == 100).all()
    mu, sigma = rt.AIME.lognormal()
    assert mu < 0 < sigma  # median exp(mu) L below the cap


def test_kv_bytes_per_token_split_by_layer_kind():
    # Qwen3-8B: 36 full layers x K and V x 8 heads x 128 x 2 bytes.
    assert rt.kv_bytes_per_token(get_preset("qwen3_8b"), 2) == (36 * 2 * 8 * 128 * 2, 0)
    olmo = get_preset("olmo3_7b")
    per_layer = 2 * olmo.num_kv_heads * olmo.head_dim * 2
    assert rt.kv_bytes_per_token(olmo, 2) == (8 * per_layer, 24 * per_layer)  # 1 in 4 full


def test_floor_by_hand_on_one_chip():
    """2 rows of L = 4 after 2 prompt tokens, budget for everything: the prefill gives each row
    its first token, then 3 decode steps seeing 3, 4, 5 keys, each step reading the weights once;
    compute negligible (huge peak)."""
    model = get_preset("tiny", dtype="bfloat16")
    chip = ChipSpec("test", hbm_bytes=10**12, peak_flops=1e30, hbm_bandwidth=1e9)
    recipe = rt.RolloutRecipe(
        model, chip, chips=1, rows=2, samples=2, max_new_tokens=4, max_prompt_length=2,
        weight_bytes=10**6, resident_bytes=0, static_chunk_rows=2, prompt_tokens=2,
    )  # fmt: skip
    full, sliding = rt.kv_bytes_per_token(model, 2)
    assert sliding == 0
    floor = rt.floor_seconds(recipe, rt.FULL, tensor=1)
    assert floor.steps == 3 and floor.slots == 2
    assert floor.seconds == pytest.approx((3 * 10**6 + 2 * 12 * full) / 1e9)
    # Static: the same 3 steps, each reading the whole [2 rows, 2 + 4 - 1] cache.
    static = rt.static_seconds(recipe, rt.FULL)
    assert static.seconds == pytest.approx(3 * (10**6 + 2 * 5 * full) / 1e9)
    # The engine: both rows in one call of 16 steps, each step reading the weights and each row's
    # one 16-token page (a slot's 6 tokens fit one page, the kernel's block), also after the
    # row's 3 steps; one prefill of the shared prompt; the call's host overhead.
    engine = rt.engine_seconds(recipe, rt.FULL, tensor=1)
    assert engine.slots == 2 and engine.steps == 16 and engine.preemptions == 0
    call = 16 * 10**6 + 16 * 2 * 16 * full
    assert engine.seconds == pytest.approx((call + 10**6) / 1e9 + rt.CALL_OVERHEAD_S)
    assert engine.wasted_fraction == pytest.approx(1 - 6 / 32)


def test_static_reproduces_the_readme_roofline_for_qwen3_8b():
    """16 chunks x 226 s (README compile table): every 128-row chunk decodes to 16384 tokens,
    even under the aime distribution (some row of 128 reaches the cap)."""
    recipe = _qwen3_8b()
    assert rt.static_seconds(recipe, rt.FULL).seconds == pytest.approx(3615, abs=2)
    assert rt.static_seconds(recipe, rt.AIME).seconds == pytest.approx(3615, abs=2)


def test_qwen3_8b_floor_matches_the_issue_and_bounds_the_engine():
    """Issue 23: ~1170 s replicated / ~960 s tensor-parallel at full length, ~440 s for aime (the
    issue counts no prompt tokens; 256 here add ~3%)."""
    recipe = _qwen3_8b()
    replicated = rt.floor_seconds(recipe, rt.FULL, tensor=1).seconds
    tensor = rt.floor_seconds(recipe, rt.FULL, tensor=4).seconds
    assert 1170 <= replicated <= 1230 and 960 <= tensor <= 1020
    assert rt.floor_seconds(recipe, rt.AIME, tensor=1).seconds == pytest.approx(459, abs=10)
    assert rt.floor_seconds(recipe, rt.AIME, tensor=4).seconds == pytest.approx(386, abs=10)
    for dist in (rt.FULL, rt.AIME):
        for split in (1, 4):
            engine = rt.engine_seconds(recipe, dist, split)
            assert engine.seconds >= rt.floor_seconds(recipe, dist, split).seconds
            assert engine.steps >= 16383
            assert 0 <= engine.wasted_fraction < 1
    # Without a prompt the replicated floor is the issue's arithmetic: 2048 rows x 16384 tokens
    # of 144 KiB a token over 16 chips, plus the weights once per step at 61.5 GB of KV budget.
    bare = rt.floor_seconds(_qwen3_8b(prompt_tokens=0), rt.FULL, tensor=1)
    assert bare.seconds == pytest.approx(1160, abs=10)


def test_qwen3_8b_engine_estimate_against_the_floor():
    """Tensor-parallel decode over 4 chips: within 1.25x of the floor (the better layout's) at
    full length, 1.26x under aime (the floor there assumes all 2048 rows decode at once)."""
    recipe = _qwen3_8b()
    for dist, most in ((rt.FULL, 1.2), (rt.AIME, 1.26)):
        floor = min(rt.floor_seconds(recipe, dist, t).seconds for t in (1, 4))
        engine = rt.engine_seconds(recipe, dist, 4).seconds
        assert engine <= most * floor
        assert engine < rt.static_seconds(recipe, dist).seconds / 2.5


def test_engine_slots_follow_the_page_budget():
    recipe = _qwen3_8b()
    roomy = rt.engine_seconds(recipe, rt.AIME, 1)
    tight = rt.engine_seconds(dataclasses.replace(recipe, resident_bytes=int(40 * GIB)), rt.AIME, 1)
    assert tight.kv_budget_bytes < roomy.kv_budget_bytes and tight.slots < roomy.slots
    assert tight.seconds > roomy.seconds
    with pytest.raises(ValueError, match="no row fits"):
        rt.engine_seconds(dataclasses.replace(recipe, resident_bytes=int(80 * GIB)), rt.FULL, 1)
