"""Seconds of rollouts per RL step, from bytes and FLOPs: the bandwidth floor, today's static
sampler and the paged engine, for named response-length distributions.

    recipe = RolloutRecipe(model, chip, chips=16, rows=2048, samples=8, ...)
    floor_seconds(recipe, AIME, tensor=1).seconds     # continuous batching at the KV budget
    static_seconds(recipe, AIME).seconds              # chunks decoded to their longest row
    engine_seconds(recipe, AIME, tensor=1).seconds    # the paged engine, call by call

A row of L tokens gets its first token from the prefill, then L - 1 decode steps, step i seeing
p + i keys (p prompt tokens). Decode is bandwidth-bound: per decode step each chip reads its
shard of the weights once plus the filled KV of the rows it holds, and the step costs
max(bytes / HBM bandwidth, FLOPs / peak). With the decode weights split `tensor` ways
(tensor-parallel decode), a group of `tensor` chips holds a row, each chip 1/tensor of its KV
heads and of every weight; with `tensor` = 1 every chip holds all the weights (replicated) and
its own rows. A chip's KV budget is what is left of `hbm_fraction` of HBM after the run's
resident state (the train states), its weight shard and a workspace.

- Floor: the pool holds exactly the filled tokens (a sliding layer its window), so by Little's law
  the decode steps are at least (KV byte-steps of the chip's rows) / budget, and at least the
  longest row's. Plus the prefill at the chips' peak FLOP/s. (When the budget is not binding the
  longest row bounds the steps, a bound no schedule reaches: it needs every row decoding at once.)
- Static (`tempo_jax.sampling.decode` today, what the README's compile table reports): chunks of
  `static_chunk_rows` rows, each decoded until its longest row ends, every step reading the chunk's
  whole [rows, prompt width + L - 1] cache and the chip's weights.
- Engine (`engine_seconds`): slots over a page pool with vLLM-style admission and recompute
  preemption (one readmitted row's prefill a call); calls of
  `steps_per_call` steps of the active slots (`batch_slots` of them) in which a row that ends
  keeps its slot until the call returns; the Pallas kernel reading whole compute blocks;
  prefills of admitted prompts (the n samples of a prompt share its prompt pages); per-call
  host overhead; per-layer all-reduces under tensor-parallel decode. Simulated call by call for
  one group of chips (every group runs the same).

Shapes and units: bytes and seconds; lengths in tokens.
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

import numpy as np

from tempo_jax.models import flops as model_flops
from tempo_jax.models.config import ModelConfig
from tempo_jax.parallel.topology import GIB, ChipSpec

# Assumptions of the engine estimate (not measured here): host dispatch, the device-to-host copy
# of a call's tokens and admission bookkeeping per call; one all-reduce's latency.
CALL_OVERHEAD_S = 1e-3
ALLREDUCE_LATENCY_S = 10e-6
# Bytes/s one chip's ring all-reduce moves: a bidirectional ring uses 2 of the chip's ICI links,
# each 1/ports of the published per-chip ICI bandwidth (Cloud TPU system architecture pages:
# v5p 4800 Gbps over 6 links, v6e 3584 Gbps over 4, v5e 1600 Gbps over 4, v4 2400 Gbps over 6).
ICI_RING_BYTES_PER_S = {
    "TPU v5p": 2 * 4800e9 / 8 / 6,
    "TPU v6e": 2 * 3584e9 / 8 / 4,
    "TPU v5e": 2 * 1600e9 / 8 / 4,
    "TPU v4": 2 * 2400e9 / 8 / 6,
}
HOST_RING_BYTES_PER_S = 10e9  # CPU devices: a nominal memory copy
# Prompt tokens of the floor and the engine: AIME problems in a chat template are ~100-300
# tokens; the static sampler pads every prompt to `max_prompt_length` instead.
PROMPT_TOKENS = 256
# Keys one Pallas compute block holds (sampling/paged_attention_tpu.BLOCK_TOKENS): the kernel
# reads a slot's keys in whole blocks.
KERNEL_BLOCK_TOKENS = 512
# The engine's admission policy (`engine_seconds`): the share of the pool kept free when
# admitting; slots per row the budget holds at an average age of L / 2 (room for rows that end
# early). Chosen among 1.25 / 1.5 / 2 (slots) by the estimates of the AIME recipes. (Pacing the
# first admissions over 0.25 L, which the restart engine needed, costs up to 0.06x of the floor
# once preempted rows are readmitted one a call, and was dropped.)
WATERMARK = 0.02
SLOTS_PER_TARGET = 1.25
# Preempted rows `sampling.Engine` readmits (and prefills) per call and row shard: the AIME
# recipes' chunk prefill cache holds one full-length row.
REFILL_ROWS = 1


def batch_slots(busiest: int, slots: int) -> int:
    """Slots a decode call steps (per row shard) when `busiest` are active, of `slots`: the
    smallest power of two up to q = max(8, slots / 8), or multiple of q above it, that holds
    them, at most `slots` (`sampling.Engine` passes only those; a few compiled batch sizes).
    Powers of two alone left up to half the slots idle while the last rows drain (15.8% of the
    CPU benchmark's slot-steps at 48 slots); multiples of q leave fewer than q idle."""
    quantum = max(8, -(-slots // 8))
    busiest = max(busiest, 1)
    if busiest <= quantum:
        size = 1 << (busiest - 1).bit_length()
    else:
        size = -(-busiest // quantum) * quantum
    return min(size, slots)


@dataclasses.dataclass(frozen=True)
class LengthDistribution:
    """Response lengths as a fraction of the cap L.

    `full`: every row reaches L. Otherwise a lognormal censored at L (a row that would run past
    the cap stops at it), fitted to two moments: the mean length `mean_fraction` L and the share
    `cap_fraction` of rows that reach L.
    """

    name: str
    mean_fraction: float = 1.0
    cap_fraction: float = 1.0

    def lognormal(self) -> tuple[float, float]:
        """(mu, sigma) of log(X / L), X the uncensored length.

        P(X >= L) = cap_fraction fixes mu = -z sigma (z the normal quantile of 1 - cap_fraction);
        E[min(X, L)] / L = exp(mu + sigma^2 / 2) Phi(z - sigma) + cap_fraction decreases in sigma,
        so bisection finds the sigma whose mean is `mean_fraction`.
        """
        normal = NormalDist()
        z = normal.inv_cdf(1 - self.cap_fraction)

        def mean(sigma: float) -> float:
            mu = -z * sigma
            return math.exp(mu + sigma**2 / 2) * normal.cdf(z - sigma) + self.cap_fraction

        lo, hi = 1e-6, 10.0
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if mean(mid) > self.mean_fraction else (lo, mid)
        sigma = (lo + hi) / 2
        return -z * sigma, sigma

    def lengths(self, cap: int, rows: int) -> np.ndarray:
        """[rows] int lengths in 1..cap: the distribution's quantiles at (i + 1/2) / rows, in a
        fixed shuffled order (rows arrive in no order of length)."""
        if self.cap_fraction >= 1.0:
            return np.full(rows, cap, np.int64)
        mu, sigma = self.lognormal()
        normal = NormalDist()
        quantiles = [normal.inv_cdf((i + 0.5) / rows) for i in range(rows)]
        x = np.exp(mu + sigma * np.asarray(quantiles)) * cap
        lengths = np.clip(np.ceil(x), 1, cap).astype(np.int64)
        return np.random.default_rng(0).permutation(lengths)


FULL = LengthDistribution("full")
# Reasoning-model RL on AIME at a 16384-token cap: mean ~9000 tokens, ~14% of rollouts truncated
# at the cap (the figures issue 23 states for Qwen3-8B-class thinking models); long-tailed, hence
# the censored lognormal.
AIME = LengthDistribution("aime", mean_fraction=9000 / 16384, cap_fraction=0.14)
DISTRIBUTIONS = {d.name: d for d in (FULL, AIME)}


@dataclasses.dataclass(frozen=True)
class RolloutRecipe:
    """One RL step's rollouts on one slice.

    Attributes:
      model: the policy's shape (KV heads, layers, sliding window).
      chip: HBM bytes, bandwidth and peak FLOP/s per chip.
      chips: chips of the slice.
      rows: rollouts per RL step (prompts x samples).
      samples: n rollouts per prompt (they share its prefill and its prompt pages).
      max_new_tokens: the response cap L.
      max_prompt_length: the static sampler's padded prompt width.
      weight_bytes: the policy's decode weights, whole, in the compute dtype.
      resident_bytes: per chip, the run's other live state during rollouts.
      static_chunk_rows: rows per static sampler chunk.
      static_tensor: the static sampler's weight split (`parallel.mesh.tensor`).
      prompt_tokens: prompt tokens per row for the floor and the engine.
      page_size, steps_per_call, num_slots: the engine's (num_slots 0 = from the page budget).
      workspace_bytes: per chip, kept free for the decode call's temporaries.
      hbm_fraction: of HBM a run may use.
    """

    model: ModelConfig
    chip: ChipSpec
    chips: int
    rows: int
    samples: int
    max_new_tokens: int
    max_prompt_length: int
    weight_bytes: int
    resident_bytes: int
    static_chunk_rows: int
    static_tensor: int = 1
    prompt_tokens: int = PROMPT_TOKENS
    page_size: int = 16
    steps_per_call: int = 16
    num_slots: int = 0
    workspace_bytes: int = 2 * GIB
    hbm_fraction: float = 0.9

    @property
    def itemsize(self) -> int:
        return np.dtype(self.model.compute_dtype).itemsize


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Seconds of one step's rollouts and how they arise (per group of `tensor` chips).

    Attributes:
      seconds: decode + prefill (+ call overhead and collectives for the engine).
      tensor: the decode weights' split.
      slots: rows decoding at once per group (the floor: the time average).
      steps: decode steps per group.
      kv_budget_bytes: per chip.
      wasted_fraction: slot-steps producing no kept token, over all slot-steps (engine).
      preemptions: rows preempted and recomputed (engine, per group).
    """

    seconds: float
    tensor: int
    slots: float
    steps: int
    kv_budget_bytes: int
    wasted_fraction: float = 0.0
    preemptions: int = 0


def kv_bytes_per_token(model: ModelConfig, itemsize: int) -> tuple[int, int]:
    """(full-attention layers', sliding layers') K and V bytes of one token, all KV heads."""
    per_layer = 2 * model.num_kv_heads * model.head_dim * itemsize
    sliding = sum(k == "sliding_attention" for k in model.resolved_layer_types)
    return per_layer * (model.num_layers - sliding), per_layer * sliding


def _window(model: ModelConfig) -> int:
    return model.sliding_window or 1


def tensor_options(recipe: RolloutRecipe, tensor: int) -> tuple[int, ...]:
    """The decode weight splits to compare: 1 (replicated) and `tensor` when it divides the
    chips and the KV heads."""
    ok = tensor > 1 and recipe.chips % tensor == 0 and recipe.model.num_kv_heads % tensor == 0
    return (1, tensor) if ok else (1,)


def kv_budget(recipe: RolloutRecipe, tensor: int) -> int:
    """Per-chip bytes left for the KV pool."""
    used = recipe.resident_bytes + recipe.weight_bytes // tensor + recipe.workspace_bytes
    return int(recipe.hbm_fraction * recipe.chip.hbm_bytes) - used


def _row_kv_byte_steps(recipe: RolloutRecipe, lengths: np.ndarray) -> float:
    """Sum over rows and their decode steps of the KV bytes a step reads (all KV heads): step j
    of a row sees prompt + j keys, a sliding layer at most its window."""
    full, sliding = kv_bytes_per_token(recipe.model, recipe.itemsize)
    p, w = recipe.prompt_tokens, _window(recipe.model)
    total = 0.0
    for length, count in zip(*np.unique(lengths, return_counts=True), strict=True):
        steps = int(length) - 1  # decode step i = 1..L-1 sees p + i keys
        keys = p * steps + steps * (steps + 1) // 2
        total += count * (full * keys + sliding * model_flops.sum_min(p + 1, p + steps, w))
    return total


def _decode_flops(recipe: RolloutRecipe, lengths: np.ndarray) -> float:
    """FLOPs of decoding every row (all chips together)."""
    total = 0.0
    for length, count in zip(*np.unique(lengths, return_counts=True), strict=True):
        total += count * model_flops.forward_flops(
            recipe.model,
            1,
            int(length) - 1,
            head_positions=int(length) - 1,
            context=recipe.prompt_tokens,
        )
    return total


def _prefill_seconds(recipe: RolloutRecipe, prompt_tokens: int, prompts: int) -> float:
    flops = model_flops.forward_flops(recipe.model, prompts, prompt_tokens, head_positions=1)
    return flops / (recipe.chips * recipe.chip.peak_flops)


def floor_seconds(recipe: RolloutRecipe, distribution: LengthDistribution, tensor: int) -> Estimate:
    """The bandwidth floor of one step's rollouts with the decode weights split `tensor` ways."""
    lengths = distribution.lengths(recipe.max_new_tokens, recipe.rows)
    groups = recipe.chips // tensor
    budget = kv_budget(recipe, tensor)
    if budget <= 0:
        raise ValueError(f"no row fits the KV budget with tensor={tensor}")
    kv_read = _row_kv_byte_steps(recipe, lengths) / recipe.chips  # per chip
    steps = max(math.ceil(kv_read / budget), int(lengths.max()) - 1, 1)
    tokens = (lengths - 1).sum() / groups
    bytes_read = steps * recipe.weight_bytes / tensor + kv_read
    decode = max(
        bytes_read / recipe.chip.hbm_bandwidth,
        _decode_flops(recipe, lengths) / (recipe.chips * recipe.chip.peak_flops),
    )
    prefill = _prefill_seconds(recipe, recipe.prompt_tokens, recipe.rows // recipe.samples)
    return Estimate(decode + prefill, tensor, float(tokens / steps), steps, budget)


def static_seconds(recipe: RolloutRecipe, distribution: LengthDistribution) -> Estimate:
    """Today's sampler: chunks of `static_chunk_rows` rows (prefilled once per prompt), each
    decoded to its longest row, each step reading the chunk's whole cache and the chip's weights
    (the README's compile-table roofline)."""
    c, chip, t = recipe.model, recipe.chip, recipe.static_tensor
    lengths = distribution.lengths(recipe.max_new_tokens, recipe.rows)
    rows = recipe.static_chunk_rows
    width = recipe.max_prompt_length
    full, sliding = kv_bytes_per_token(c, recipe.itemsize)  # static caches are full length
    cache = (full + sliding) * rows * (width + recipe.max_new_tokens - 1) / recipe.chips
    step_bytes = recipe.weight_bytes / t + cache
    peak = recipe.chips * chip.peak_flops
    seconds, steps = 0.0, 0
    for start in range(0, recipe.rows, rows):
        longest = int(lengths[start : start + rows].max())
        seconds += _prefill_seconds(recipe, width, rows // recipe.samples)
        flops = _step_flops(c, rows, width + np.arange(longest - 1))
        seconds += float(np.maximum(flops / peak, step_bytes / chip.hbm_bandwidth).sum())
        steps += longest - 1
    return Estimate(seconds, t, rows, steps, 0)


def _step_flops(c: ModelConfig, rows: int, context: np.ndarray) -> np.ndarray:
    """[steps] FLOPs of decode steps of `rows` rows whose queries see `context` cached keys
    (`flops.forward_flops(c, rows, 1, head_positions=1, context=...)`, vectorized)."""
    kinds = c.resolved_layer_types
    sliding = sum(k == "sliding_attention" for k in kinds)
    keys = (len(kinds) - sliding) * (context + 1) + sliding * np.minimum(context + 1, _window(c))
    trunk = 2 * c.num_layers * model_flops.layer_matmul_params(c) * rows
    return (
        trunk + 4 * c.num_heads * c.head_dim * rows * keys + 2 * c.hidden_size * c.vocab_size * rows
    )


def _kernel_block_tokens(recipe: RolloutRecipe) -> int:
    """Tokens of one Pallas compute block (`paged_attention_tpu.pages_per_compute_block`)."""
    pages_per_slot = math.ceil((recipe.prompt_tokens + recipe.max_new_tokens) / recipe.page_size)
    block = 1
    for d in range(1, pages_per_slot + 1):
        if pages_per_slot % d == 0 and d * recipe.page_size <= KERNEL_BLOCK_TOKENS:
            block = d
    return block * recipe.page_size


def engine_seconds(
    recipe: RolloutRecipe,
    distribution: LengthDistribution,
    tensor: int,
    *,
    preempt: bool = True,
    restart: bool = False,
) -> Estimate:
    """The paged engine's time for one step's rollouts, simulated call by call for one group of
    `tensor` chips holding every (chips / tensor)-th row.

    Admission (vLLM's policy, on pages): a free slot takes the next row when the pool, after
    the coming call, holds every active row's pages with `WATERMARK` of it to spare; when the
    active rows would overflow it, the most recently admitted rows are preempted (their pages
    freed; they return to the head of the queue and, when readmitted, recompute their prompt and
    generated tokens in a prefill, at most `REFILL_ROWS` a call, as `sampling.Engine` does for
    the AIME recipes' chunks: readmissions are staggered). Slots: `num_slots`, else
    `SLOTS_PER_TARGET` target (target: the rows the budget holds at an average age of L / 2;
    at most the group's rows).

    `preempt=False`: a row is admitted only when the pool can still give it every page up to
    the cap on top of what the active rows have reserved, so nothing is ever preempted, and
    rows that end early return their reservation (`sampling.Engine` before it admitted by free
    pages). `restart=True` is `sampling.Engine(preemption="restart")`: a
    preempted row keeps no work and decodes its tokens again from token 1 (its prompt's pages
    stay held, so nothing is prefilled again) instead of recomputing them in a prefill. A call
    steps `batch_slots` of the active slots: matmul FLOPs and all-reduce bytes follow it.
    """
    c, chip = recipe.model, recipe.chip
    groups = recipe.chips // tensor
    # Decode steps of each row (its first token comes from the prefill).
    queue = list(distribution.lengths(recipe.max_new_tokens, recipe.rows)[::groups] - 1)
    full, sliding = kv_bytes_per_token(c, recipe.itemsize)
    page, p, k, w = recipe.page_size, recipe.prompt_tokens, recipe.steps_per_call, _window(c)
    budget = kv_budget(recipe, tensor)
    ring = (math.ceil(w / page) + 1) * page * sliding if sliding else 0

    def held(tokens):  # per-chip bytes of rows holding `tokens` tokens
        return (np.ceil(tokens / page) * page * full + ring) / tensor

    target = int(budget // held(p + recipe.max_new_tokens / 2))
    if target < 1:
        raise ValueError(f"no row fits the KV budget with tensor={tensor}")
    # More slots than rows would only cost FLOPs.
    slots = recipe.num_slots or min(math.ceil(SLOTS_PER_TARGET * target), len(queue))
    capped = held(p + recipe.max_new_tokens)  # a row's worst case, reserved without preemption
    block = _kernel_block_tokens(recipe)
    weights = recipe.weight_bytes / tensor
    # A call's batch runs the matmuls; attention FLOPs follow the filled keys.
    row_flops = _step_flops(c, 1, np.zeros(1))[0] / tensor
    ring_bw = ICI_RING_BYTES_PER_S.get(chip.name, HOST_RING_BYTES_PER_S)

    def comm(batch: int) -> float:  # attention and MLP outputs all-reduced in every layer
        if tensor == 1:
            return 0.0
        moved = 2 * (tensor - 1) / tensor * batch * c.hidden_size * recipe.itemsize
        return 2 * c.num_layers * (ALLREDUCE_LATENCY_S + moved / ring_bw)

    context = np.zeros(slots, np.int64)  # keys of each slot's next step
    remaining = np.zeros(slots, np.int64)  # tokens still to decode (0 = idle)
    order = np.zeros(slots, np.int64)  # admission count of each slot's row (latest = preempted)
    queue = [(int(n), 0) for n in queue]  # (tokens to decode, tokens decoded before preemption)
    seconds, steps, kept, admitted, preempted, stepped = 0.0, 0, 0, 0, 0, 0
    offsets = np.arange(k)[None, :]

    def after_call():  # per-chip bytes of every active row once the coming call ran
        return held(np.minimum(context + k, context + remaining)) * (remaining > 0)

    while queue or remaining.any():
        while after_call().sum() > budget:
            slot = int(np.argmax(np.where(remaining > 0, order, -1)))
            done = int(context[slot] - p - 1)
            queue.insert(
                0, (int(remaining[slot]) + done, 0) if restart else (int(remaining[slot]), done)
            )
            remaining[slot] = 0
            preempted += 1
        recompute, refills = 0, 0  # tokens prefilled this call: new prompts and preempted rows
        for slot in np.flatnonzero(remaining == 0):
            if not queue:
                break
            left, done = queue[0]
            if done and refills == REFILL_ROWS:
                break
            if not preempt:
                if ((remaining > 0).sum() + 1) * capped > budget:
                    break
            elif after_call().sum() + held(p + 1 + done + min(k, left)) > (1 - WATERMARK) * budget:
                break
            queue.pop(0)
            context[slot], remaining[slot], order[slot] = p + 1 + done, left, admitted
            if done:
                recompute += p + done
                refills += 1
            elif admitted % recipe.samples == 0:  # a prompt's first sample prefills it
                recompute += p
            admitted += 1
        if recompute:
            flops = model_flops.forward_flops(c, 1, recompute, head_positions=1)
            seconds += max(weights / chip.hbm_bandwidth, flops / (tensor * chip.peak_flops))
        active = remaining > 0
        # [slots, k] keys read per step: a row that ends inside the call stays at its last step.
        keys = np.minimum(context[:, None] + offsets, (context + remaining - 1)[:, None])
        read_full = np.ceil(keys / block) * block
        read_sliding = np.ceil(np.minimum(keys, w) / block) * block
        kv = (read_full * full + read_sliding * sliding) * active[:, None] / tensor
        attention = 4 * c.num_heads * c.head_dim * (keys * active[:, None]).sum(axis=0) / tensor
        batch = batch_slots(int(active.sum()), slots)
        step_s = np.maximum(
            (weights + kv.sum(axis=0)) / chip.hbm_bandwidth,
            (batch * row_flops + attention) / chip.peak_flops,
        )
        seconds += float(step_s.sum()) + k * comm(batch) + CALL_OVERHEAD_S
        kept += int(np.minimum(remaining, k).sum())
        stepped += batch * k
        steps += k
        context += k * active
        remaining = np.maximum(remaining - k, 0)
    wasted = 1 - kept / stepped
    return Estimate(seconds, tensor, slots, steps, budget, wasted, preempted)
