"""The pure rollout function: one prefill per prompt, a KV-cache decode `lax.while_loop`.

    generate_rollouts(graphdef, state, prompt_tokens [B, P], prompt_mask [B, P],
                      params: RowSamplingParams [N], seed, first_row, stop, *,
                      spec: DecodeSpec) -> Rollouts

Everything is a pure function of (graphdef, state) and arrays, ready for `jax.jit`; the `Sampler`
compiles it once per shape. Steps, for L = max_new_tokens and N = B * n rows:

1. Cast once: matmul weights and embeddings are cast to the compute dtype before anything
   runs, so no per-step (or per-layer) convert of a weight-sized array can sit inside the loop
   (the model's own `.astype` calls then are no-ops). Norm scales keep their dtype: the model
   reads them in float32, so casting them would change the numbers.
2. Prefill the B prompts once into a [L_layers, B, P] cache, then repeat every cache row and the
   next-token logits n times along the batch (row i = p * n + j) and pad the cache to
   S = P + L - 1 slots: n samples share one prefill. The repeat is a broadcast and a reshape
   that merges (prompt, sample) with the prompt major, so with the prompts split by rows over
   the batch shards every shard spreads its own prompts locally (no gather of the cache).
   When B does not divide over the batch shards (but N does) the sampler asks for
   `DecodeSpec.shared_prefill=False`: the prompts are spread first and every row is prefilled,
   n times the prefill FLOPs but nothing replicated.
3. Sample token 0 from the prefill logits; then `lax.while_loop` over t = 1 .. L - 1 feeds token
   t - 1 at cache slot P + t - 1 (position prompt_length + t - 1) and samples token t, until t
   reaches L or every row is finished (early exit). The last sampled token is never fed, so the
   cache needs P + L - 1 slots. The loop body is `layer_decode.decode_step`: the model's blocks
   unrolled over per-layer weights sliced before the loop and per-layer caches updated in
   place (see that module for why not `Policy.decode_step`'s scan).

Randomness: row i's key at step t is fold_in(fold_in(key(seed), first_row + i), t). A row's
draw depends only on the seed, its row index in the whole batch and its own logits, not on the
other rows; in particular sampling B prompts with n samples each gives the same tokens as
sampling the B * n repeated prompts with n = 1, or the B prompts in chunks (each with its
`first_row`), up to the float error of a different prefill batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from tempo_jax.models import KV_CACHE_LOGICAL_AXES
from tempo_jax.parallel.activations import constrain
from tempo_jax.sampling.layer_decode import (
    LAYER_CACHE_LOGICAL_AXES,
    LayerCaches,
    decode_step,
    decode_weights,
    split_cache,
)
from tempo_jax.sampling.params import RowSamplingParams
from tempo_jax.sampling.rollouts import FINISH_EOS, FINISH_LENGTH, FINISH_STOP, Rollouts
from tempo_jax.sampling.stopping import StopArrays
from tempo_jax.sampling.token_sampling import sample_tokens

# Parameters the model multiplies in the compute dtype (it casts them itself on every use):
# casting them once up front is numerically identical and keeps converts out of the loop.
_MATMUL_WEIGHTS = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
     "embed_tokens", "lm_head"}
)  # fmt: skip

# Lays the (cast) parameters out for decoding: state -> state. The identity when unsharded.
PlaceWeights = Callable[[nnx.State], nnx.State]


def _unchanged(state: nnx.State) -> nnx.State:
    return state


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """The static part of a rollout computation (hashable; one executable per spec and shape).

    Attributes:
      n: samples per prompt.
      max_new_tokens: L, response slots.
      max_top_k: candidate cap of rows that use top-k / top-p.
      pad_id: written after the end of each response (and in prompt padding).
      shared_prefill: prefill each prompt once and spread its cache to the n samples (True),
        or spread the prompts and prefill every row (False; see the module docstring).
    """

    n: int
    max_new_tokens: int
    max_top_k: int
    pad_id: int
    shared_prefill: bool = True


def _param_name(path) -> str:
    """The parameter name in a state path (its last dict key; `.value` attributes skipped)."""
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return str(names[-1]) if names else ""


def cast_for_compute(state: nnx.State, compute_dtype: jnp.dtype) -> nnx.State:
    """The state with its matmul weights and embeddings in the compute dtype (a pure function)."""

    def cast(path, x):
        if _param_name(path) in _MATMUL_WEIGHTS and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(compute_dtype)
        return x

    return jax.tree_util.tree_map_with_path(cast, state)


@flax.struct.dataclass
class _Loop:
    """The while-loop carry. t is the step whose token is sampled next."""

    t: jax.Array  # int32 scalar
    caches: LayerCaches
    last_tokens: jax.Array  # [N] token sampled at step t - 1 (fed at step t)
    done: jax.Array  # [N] bool
    window: jax.Array  # [N, M] trailing generated tokens for stop sequences
    tokens: jax.Array  # [N, L]
    logprobs: jax.Array  # [N, L]
    sampling_logprobs: jax.Array  # [N, L]
    lengths: jax.Array  # [N]
    finish_reason: jax.Array  # [N]


def step_outcome(
    logits: jax.Array,
    step_keys: jax.Array,
    params: RowSamplingParams,
    stop: StopArrays,
    window: jax.Array,
    active: jax.Array,
    last_step: jax.Array,
    max_top_k: int,
) -> tuple[jax.Array, ...]:
    """One sampling step of N rows and its stop tests (shared with the paged engine).

    Args:
      logits: [N, V]; step_keys: [N] keys of this step; window: [N, M] stop window.
      active: [N] bool rows still running; last_step: bool ([N] or scalar), the step samples
        the row's last response slot.

    Returns:
      tokens, logprobs, sampling_logprobs [N]; the new window [N, M]; finishing [N] bool
      (active rows that end now) and the finish reason [N] int32 they would end with.
    """
    tokens, logprobs, sampling_lp = sample_tokens(logits, step_keys, params, max_top_k)
    window, is_eos, is_stop = stop.update(window, tokens)
    finishing = active & (is_eos | is_stop | last_step)
    reason = jnp.where(is_eos, FINISH_EOS, jnp.where(is_stop, FINISH_STOP, FINISH_LENGTH))
    return tokens, logprobs, sampling_lp, window, finishing, reason


def _record(
    spec: DecodeSpec,
    loop: _Loop,
    logits: jax.Array,
    row_keys: jax.Array,
    params: RowSamplingParams,
    stop: StopArrays,
) -> _Loop:
    """Samples step t's tokens from logits [N, V] and writes them into the carry."""
    t = loop.t
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, t)
    active = ~loop.done
    tokens, logprobs, sampling_lp, window, finishing, reason = step_outcome(
        logits, step_keys, params, stop, loop.window, active, t == spec.max_new_tokens - 1,
        spec.max_top_k,
    )  # fmt: skip

    def column(buffer, values, fill):
        values = jnp.where(active, values, fill).astype(buffer.dtype)
        return jax.lax.dynamic_update_slice(buffer, values[:, None], (0, t))

    return loop.replace(
        last_tokens=tokens,
        done=loop.done | finishing,
        window=window,
        tokens=column(loop.tokens, tokens, spec.pad_id),
        logprobs=column(loop.logprobs, logprobs, 0.0),
        sampling_logprobs=column(loop.sampling_logprobs, sampling_lp, 0.0),
        lengths=loop.lengths + active.astype(jnp.int32),
        finish_reason=jnp.where(finishing, reason, loop.finish_reason).astype(jnp.int32),
    )


def _spread(x: jax.Array, n: int, axis: int) -> jax.Array:
    """[.., B, ..] -> [.., B * n, ..], row p * n + j <- p: a broadcast and a reshape merging
    (prompt, sample) with the prompt major, which a partitioner splitting B keeps local."""
    x = jnp.expand_dims(x, axis + 1)
    x = jnp.broadcast_to(x, x.shape[: axis + 1] + (n,) + x.shape[axis + 2 :])
    return x.reshape(x.shape[:axis] + (x.shape[axis] * n,) + x.shape[axis + 2 :])


def generate_rollouts(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    prompt_tokens: jax.Array,
    prompt_mask: jax.Array,
    params: RowSamplingParams,
    seed: jax.Array,
    first_row: jax.Array,
    stop: StopArrays,
    *,
    spec: DecodeSpec,
    place_weights: PlaceWeights = _unchanged,
) -> Rollouts:
    """Samples n responses to each of B prompts. Pure; see the module docstring.

    Activations and the KV cache are constrained by logical axes when traced inside
    `tempo_jax.parallel.activation_sharding` (the `Sampler` does that with its mesh).

    Args:
      graphdef: from `nnx.split(policy)` (a `tempo_jax.models.Policy`).
      state: the policy's parameter state (any dtypes; cast here once).
      prompt_tokens: [B, P] int32 prompts, left-padded; every row non-empty.
      prompt_mask: [B, P] int32, 1 on prompt tokens.
      params: per-row sampling parameters, fields [N = B * n].
      seed: uint32 scalar.
      first_row: uint32 scalar, the index of this call's row 0 in the whole rollout batch (row
        keys are per row index, so a batch sampled in chunks draws what one call would).
      stop: EOS ids [E] and stop-sequence table [S, M] (`StopCriteria.arrays()`).
      spec: static settings (n, max_new_tokens, max_top_k, pad_id, shared_prefill).
      place_weights: lays the cast parameters out for decoding (the sampler's inference
        shardings); applied once, before the prefill.

    Returns:
      Rollouts with N rows and L = spec.max_new_tokens response slots.
    """
    n, max_new = spec.n, spec.max_new_tokens
    batch, prompt_width = prompt_tokens.shape
    num_rows = batch * n
    slots = prompt_width + max_new - 1

    policy = nnx.merge(graphdef, state)
    # Cast first, then re-lay out: the layout change moves compute-dtype weights, once.
    state = place_weights(cast_for_compute(state, policy.config.compute_dtype))
    policy = nnx.merge(graphdef, state)

    def rows(x: jax.Array) -> jax.Array:  # [N or B, ...] split by rows
        return constrain(x, ("batch",) + (None,) * (x.ndim - 1))

    prompt_mask = prompt_mask.astype(jnp.int32)
    row_prompt_tokens = rows(_spread(prompt_tokens, n, 0))
    row_prompt_mask = rows(_spread(prompt_mask, n, 0))
    if spec.shared_prefill:
        prefill_tokens, prefill_mask, copies = prompt_tokens, prompt_mask, n
    else:
        prefill_tokens, prefill_mask, copies = row_prompt_tokens, row_prompt_mask, 1
    cache = policy.init_cache(prefill_tokens.shape[0], prompt_width)
    cache = jax.tree.map(lambda x: constrain(x, KV_CACHE_LOGICAL_AXES), cache)
    logits, cache = policy.prefill(rows(prefill_tokens), rows(prefill_mask), cache)

    def grow(x):  # one layer [B, P, K, Dh] -> [N, S, K, Dh], empty slots after the prompt
        x = constrain(x, LAYER_CACHE_LOGICAL_AXES)
        x = jnp.pad(_spread(x, copies, 0), ((0, 0), (0, slots - prompt_width), (0, 0), (0, 0)))
        return constrain(x, LAYER_CACHE_LOGICAL_AXES)

    # Split the (short) prefill cache per layer first, so no stacked full-length cache exists.
    caches = jax.tree.map(grow, split_cache(cache))
    weights = decode_weights(policy)
    logits = rows(_spread(logits, copies, 0))
    prompt_lengths = jnp.sum(row_prompt_mask, axis=1)
    prompt_slots = jnp.pad(row_prompt_mask.astype(bool), ((0, 0), (0, slots - prompt_width)))
    slot_ids = jnp.arange(slots, dtype=jnp.int32)

    base_key = jax.random.key(seed)
    row_ids = first_row.astype(jnp.uint32) + jnp.arange(num_rows, dtype=jnp.uint32)
    row_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base_key, row_ids)

    def buffer(dtype, fill):
        return rows(jnp.full((num_rows, max_new), fill, dtype))

    loop = _Loop(
        t=jnp.zeros((), jnp.int32),
        caches=caches,
        last_tokens=jnp.zeros((num_rows,), jnp.int32),
        done=jnp.zeros((num_rows,), bool),
        window=stop.initial_window(num_rows),
        tokens=buffer(jnp.int32, spec.pad_id),
        logprobs=buffer(jnp.float32, 0.0),
        sampling_logprobs=buffer(jnp.float32, 0.0),
        lengths=jnp.zeros((num_rows,), jnp.int32),
        finish_reason=jnp.zeros((num_rows,), jnp.int32),
    )
    loop = _record(spec, loop, logits, row_keys, params, stop)
    loop = loop.replace(t=loop.t + 1)

    def keep_going(loop: _Loop) -> jax.Array:
        return (loop.t < max_new) & ~jnp.all(loop.done)

    def step(loop: _Loop) -> _Loop:
        index = prompt_width + loop.t - 1  # the slot of the token fed now
        # Generated slots before this one are real tokens; this one is marked by the model.
        key_mask = prompt_slots | ((slot_ids >= prompt_width) & (slot_ids < index))[None, :]
        logits, caches = decode_step(
            policy,
            weights,
            loop.last_tokens,
            prompt_lengths + loop.t - 1,
            key_mask,
            loop.caches,
            index,
        )
        caches = jax.tree.map(lambda x: constrain(x, LAYER_CACHE_LOGICAL_AXES), caches)
        loop = _record(spec, loop.replace(caches=caches), logits, row_keys, params, stop)
        return loop.replace(t=loop.t + 1)

    loop = jax.lax.while_loop(keep_going, step, loop)
    response_mask = (jnp.arange(max_new)[None, :] < loop.lengths[:, None]).astype(jnp.int32)
    return Rollouts(
        prompt_tokens=row_prompt_tokens,
        prompt_mask=row_prompt_mask,
        tokens=loop.tokens,
        response_mask=response_mask,
        lengths=loop.lengths,
        finish_reason=loop.finish_reason,
        logprobs=loop.logprobs,
        sampling_logprobs=loop.sampling_logprobs,
        group_ids=jnp.arange(num_rows, dtype=jnp.int32) // n,
        samples_per_prompt=n,
    )
