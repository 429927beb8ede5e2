"""`Sampler`: the rollout engine's entry point, one compiled executable per shape, reused.

    sampler = Sampler(policy, max_new_tokens=256, max_prompt_length=512, eos_ids=(eos,))
    rollouts = sampler.generate(state, prompt_tokens, prompt_mask, n=8,
                                sampling=SamplingParams(temperature=1.0, top_p=0.95), seed=step)

`state` is the policy's parameter `nnx.State` (e.g. `nnx.state(policy)` or a trainer's current
params); it is an argument of the compiled function, so new parameter values never recompile,
and neither do new sampling-parameter values or seeds (they are arrays too). What does compile
is a new shape: (number of prompts B, samples per prompt n, prompt bucket P, parameter shapes /
dtypes). Prompts are left-padded on the host to one of `buckets`, so a run with fixed B and n
compiles at most len(buckets) times; `num_compilations` counts them and each executable is
built ahead of time (`jit(...).lower(...).compile()`), so a shape or sharding mismatch can only
fail loudly, never recompile silently.

Memory: with `max_rows_per_chunk` a call samples its rows in chunks of at most that many rows
(whole prompt groups), one compiled call each, so the KV cache [L, rows, P + L - 1, K, Dh] is
allocated for one chunk at a time; the tokens equal those of one unchunked call (`generate`).

Sharding: with a `mesh` (from `tempo_jax.parallel.make_mesh`) the parameters come in with the
training shardings of their `logical_axes` under `rules` and are laid out once per call, after
the cast to the compute dtype, by `parallel.inference_rules(rules)`: no parameter is split over
the batch's mesh axes, so no decode step all-gathers a weight. The rows (prompts, per-row
sampling parameters, every output array, the KV cache) are split over the `batch` rule's mesh
axes, the cache's kv heads over `tensor`, and activations are constrained by their logical axes
(the splash attention kernel of prefill runs per shard of that layout). `generate` pads a
chunk's prompts (by repeating the last one, whose rows are dropped) to a count whose rows divide
over the batch axes, so nothing is ever silently replicated; `compile` of a shape the mesh
does not divide is an error naming the numbers. B prompts that do not divide while N does are
prefilled row by row (`DecodeSpec.shared_prefill`).

Ahead-of-time: `compile(state, num_prompts, n, bucket)` builds (and keeps) the executable that
`generate` would run for that chunk shape (`chunk_prompts` gives it); `state` may be abstract
(`jax.ShapeDtypeStruct`s), which is how `tempo-jax compile` measures a sampler without
allocating anything.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from tempo_jax import parallel
from tempo_jax.models import Policy
from tempo_jax.parallel import compile_cache
from tempo_jax.sampling.buckets import (
    check_buckets,
    choose_bucket,
    default_buckets,
    left_pad_to,
    prompt_lengths,
)
from tempo_jax.sampling.decode import DecodeSpec, generate_rollouts
from tempo_jax.sampling.params import RowSamplingParams, SamplingParams
from tempo_jax.sampling.rollouts import Rollouts
from tempo_jax.sampling.stopping import StopArrays, StopCriteria

_ROLLOUT_FIELDS = (
    "prompt_tokens",
    "prompt_mask",
    "tokens",
    "response_mask",
    "lengths",
    "finish_reason",
    "logprobs",
    "sampling_logprobs",
    "group_ids",
)


def divisible_prompts(num_prompts: int, n: int, row_shards: int) -> int:
    """The smallest prompt count >= num_prompts whose num_prompts x n rows divide over
    `row_shards` batch shards."""
    step = row_shards // math.gcd(row_shards, n)
    return -(-num_prompts // step) * step


def chunk_prompts(
    num_prompts: int, n: int, row_shards: int = 1, max_rows_per_chunk: int | None = None
) -> int:
    """Prompts per compiled call when B = num_prompts prompts with n samples each are sampled
    over `row_shards` batch shards in chunks of at most `max_rows_per_chunk` rows: the B
    prompts padded to divide (`divisible_prompts`), or the most whole prompt groups a chunk
    holds whose rows divide, whichever is smaller. What `Sampler.generate` compiles and
    `tempo_jax.tempo.functions.planned_calls` plans.

    Raises:
      ValueError: naming rollout.max_rows_per_chunk when a chunk cannot hold n samples, or
        not even the smallest prompt count whose rows divide over the shards.
    """
    whole = divisible_prompts(num_prompts, n, row_shards)
    if max_rows_per_chunk is None:
        return whole
    if n > max_rows_per_chunk:
        raise ValueError(
            f"n={n} samples per prompt do not fit in max_rows_per_chunk="
            f"{max_rows_per_chunk} rows (rollout.max_rows_per_chunk)"
        )
    step = divisible_prompts(1, n, row_shards)
    most = max_rows_per_chunk // n // step * step
    if most == 0:
        raise ValueError(
            f"max_rows_per_chunk={max_rows_per_chunk} rows hold {max_rows_per_chunk // n} "
            f"prompts of n={n} samples, fewer than the {step} whose rows divide over the "
            f"{row_shards} batch shards (rollout.max_rows_per_chunk: use a multiple of "
            f"{step * n})"
        )
    return min(whole, most)


class ChunkLog(Protocol):
    """Where `Sampler.generate` keeps the chunks of one call, so that a call interrupted between
    chunks (a preemption) continues with the chunks it already sampled."""

    def chunk(self, index: int, sample: Callable[[], Rollouts]) -> Rollouts:
        """Chunk `index` (0-based) of the call: kept from before, or `sample()` (host arrays, the
        chunk's real rows with call-wide group ids) run now and kept. May raise to stop."""


class Sampler:
    """Compiles and runs `generate_rollouts` for one policy architecture.

    Attributes:
      buckets: the prompt widths prompts are padded to.
      stop: the EOS ids and stop sequences.
      max_new_tokens, max_top_k, pad_id: as given.
      num_compilations: executables built so far (one per distinct shape key).
    """

    def __init__(
        self,
        policy: Policy,
        *,
        max_new_tokens: int,
        max_prompt_length: int | None = None,
        prompt_buckets: Sequence[int] | None = None,
        eos_ids: int | Sequence[int] | None = None,
        stop_sequences: Sequence[Sequence[int]] = (),
        pad_id: int = 0,
        max_top_k: int = 64,
        mesh: jax.sharding.Mesh | None = None,
        rules: Any = None,
        max_rows_per_chunk: int | None = None,
    ):
        """Args:
        policy: a `tempo_jax.models.Policy` (only its structure and config are kept; an
          abstract one from `nnx.eval_shape` will do).
        max_new_tokens: L, response slots per row (static).
        max_prompt_length: the largest prompt; default buckets are powers of two up to it.
        prompt_buckets: explicit bucket widths instead (the largest is the longest prompt).
        eos_ids: ids that end a response; None takes the model config's eos_token_id.
        stop_sequences: token sequences that end a response.
        pad_id: fills prompt padding and response slots after the end.
        max_top_k: static candidate cap of top-k / top-p rows (the sort width).
        mesh: shard over this mesh (see the module docstring); None = one device.
        rules: the training logical-axis rules for `tempo_jax.parallel` (default rules when
          None): the parameters' layout on entry; decoding uses `inference_rules(rules)`.
        max_rows_per_chunk: sample at most this many rows (prompts x n) per compiled call, so
          the KV cache holds at most this many rows; None = every row in one call. See
          `generate`.
        """
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        if max_top_k < 1:
            raise ValueError(f"max_top_k must be >= 1, got {max_top_k}")
        if max_rows_per_chunk is not None and max_rows_per_chunk < 1:
            raise ValueError(f"max_rows_per_chunk must be >= 1 or None, got {max_rows_per_chunk}")
        if prompt_buckets is not None:
            self.buckets = check_buckets(prompt_buckets)
        elif max_prompt_length is not None:
            self.buckets = default_buckets(max_prompt_length)
        else:
            raise ValueError("give max_prompt_length or prompt_buckets")
        self.config = policy.config
        vocab = self.config.vocab_size
        if not 0 <= pad_id < vocab:
            raise ValueError(f"pad_id={pad_id} is outside [0, vocab_size={vocab})")
        if eos_ids is None:
            eos_ids = self.config.eos_token_id
        self.stop = StopCriteria.create(eos_ids, stop_sequences, vocab_size=vocab)
        self.max_new_tokens = max_new_tokens
        self.max_rows_per_chunk = max_rows_per_chunk
        self.max_top_k = min(max_top_k, vocab)
        self.pad_id = pad_id
        self.mesh = mesh
        self.rules = parallel.make_rules(rules) if mesh is not None else None
        self.inference_rules = parallel.inference_rules(self.rules) if mesh is not None else None
        self._graphdef = nnx.split(policy)[0]
        self._executables: dict[tuple, Any] = {}
        self._state_shardings: dict[tuple, Any] = {}

    @property
    def num_compilations(self) -> int:
        return len(self._executables)

    @property
    def compiled_shapes(self) -> tuple[tuple[int, int, int], ...]:
        """(B, n, bucket) of every executable built so far."""
        return tuple(key[:3] for key in self._executables)

    def generate(
        self,
        state: nnx.State,
        prompt_tokens: np.ndarray,
        prompt_mask: np.ndarray,
        *,
        n: int = 1,
        sampling: SamplingParams | None = None,
        seed: int = 0,
        stop: StopCriteria | None = None,
        chunk_log: ChunkLog | None = None,
    ) -> Rollouts:
        """Samples n responses to each prompt.

        Args:
          state: the policy's parameters (`nnx.State`), any values.
          prompt_tokens: [B, T] int prompts, left-padded (any width; re-padded to a bucket).
          prompt_mask: [B, T] 0/1, left padding then prompt tokens; no empty prompt.
          n: samples per prompt; all n share one prefill.
          sampling: per-row sampling parameters (default: temperature 1, no top-k / top-p).
          seed: uint32; the same seed, prompts and parameters give the same tokens.
          stop: EOS ids and stop sequences for this call instead of the sampler's own (from
            `StopCriteria.create`); the same counts and longest length reuse the executable.
          chunk_log: where each chunk goes once sampled, and where chunks an interrupted call
            already sampled come from (see `ChunkLog`); chunks are then sampled and fetched one
            at a time, so that each is on the host before the next starts.

        Returns:
          Rollouts with N = B * n rows, row p * n + j the j-th sample of prompt p.

        Chunks: the prompts go in chunks of `prompts_per_chunk(B, n)` (all n samples of a
        prompt share a chunk and its prefill; with `max_rows_per_chunk` R at most R rows), each
        one compiled call whose decode loop ends when its own rows have stopped; the last (or
        only) chunk is padded by repeating its last prompt (the repeats' rows are dropped), also
        so that its rows divide over the mesh. Every chunk uses the bucket of the call's longest
        prompt and row keys by row index in the whole batch, so the tokens are those of one
        unchunked call. A padded or chunked call (or one with a `chunk_log`) returns host
        (numpy) arrays; a single chunk of exactly B prompts returns the executable's arrays.

        Raises:
          ValueError: bad prompts (row named), n, seed or sampling parameters, before any
            compile; n larger than `max_rows_per_chunk`.
        """
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n (samples per prompt) must be an int >= 1, got {n!r}")
        n = int(n)
        if not 0 <= int(seed) < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}")
        tokens = np.asarray(prompt_tokens)
        mask = np.asarray(prompt_mask)
        lengths = prompt_lengths(tokens, mask, self.config.vocab_size)
        bucket = choose_bucket(int(lengths.max()), self.buckets)
        tokens, mask = left_pad_to(tokens, mask, bucket, self.pad_id)
        batch = tokens.shape[0]
        rows = (sampling or SamplingParams()).rows(batch, n, self.max_top_k)
        stop_arrays = (stop or self.stop).arrays()
        per_chunk = self.prompts_per_chunk(batch, n)
        if per_chunk == batch and chunk_log is None:
            return self._call(state, tokens, mask, rows, seed, 0, stop_arrays, n, bucket)
        starts = range(0, batch, per_chunk)

        def dispatch(start: int) -> Rollouts:
            pick = np.minimum(np.arange(start, start + per_chunk), batch - 1)
            row_pick = (pick[:, None] * n + np.arange(n)[None, :]).reshape(-1)
            chunk_rows = jax.tree.map(lambda x, i=row_pick: x[i], rows)
            real = min(per_chunk, batch - start)
            return self._call(
                state, tokens[pick], mask[pick], chunk_rows, seed, start * n, stop_arrays, n,
                bucket, real_prompts=real,
            )  # fmt: skip

        def fetch(out: Rollouts, start: int) -> Rollouts:
            real_rows = min(per_chunk, batch - start) * n
            out = jax.tree.map(lambda x: x[:real_rows], parallel.host_from_global(out))
            return out.replace(group_ids=out.group_ids + start)

        if chunk_log is None:
            # Fetched after every chunk is dispatched, so host copies overlap the next decode.
            dispatched = [(dispatch(start), start) for start in starts]
            host = [fetch(out, start) for out, start in dispatched]
        else:
            host = [
                chunk_log.chunk(i, lambda s=start: fetch(dispatch(s), s))
                for i, start in enumerate(starts)
            ]
        return jax.tree.map(lambda *xs: np.concatenate(xs), *host)

    def prompts_per_chunk(self, batch: int, n: int) -> int:
        """Prompts per compiled call for a batch of `batch` prompts with n samples each
        (`chunk_prompts` on this sampler's mesh and `max_rows_per_chunk`)."""
        return chunk_prompts(batch, n, self.row_shards, self.max_rows_per_chunk)

    def _call(
        self, state, tokens, mask, rows, seed, first_row, stop_arrays, n, bucket, real_prompts=None
    ):
        """One compiled call on prompts [b, bucket] (b prompts, their b * n rows). The first
        `real_prompts` are real, the rest repeats that `generate` drops (sampled anyway here: the
        executable's shape is fixed; the paged `Engine` skips them)."""
        batch = tokens.shape[0]
        args = (state, tokens, mask, rows, np.uint32(seed), np.uint32(first_row), stop_arrays)
        if self.mesh is not None:
            args = jax.device_put(args, self._in_shardings(state, batch, n, stop_arrays))
        return self._executable(state, batch, n, bucket, stop_arrays)(*args)

    @property
    def row_shards(self) -> int:
        """How many ways the mesh's batch axes split rows (1 without a mesh)."""
        return 1 if self.mesh is None else self._shards()

    def shares_prefill(self, num_prompts: int) -> bool:
        """Whether B prompts are prefilled once for their n samples (else row by row)."""
        return self.mesh is None or self._divides(num_prompts)

    def compile(
        self,
        state: nnx.State,
        num_prompts: int,
        n: int,
        bucket: int,
        stop: StopCriteria | None = None,
    ) -> jax.stages.Compiled:
        """The executable `generate` runs for B = num_prompts prompts of width `bucket` and n
        samples each, built now (and reused by later `generate` calls of that shape).

        Args:
          state: the policy's parameters, concrete or abstract (`jax.ShapeDtypeStruct`s).
          num_prompts: B.
          n: samples per prompt.
          bucket: the prompt width P (any width; `generate` uses one of `buckets`).
          stop: stop criteria whose array shapes to compile for (default: the sampler's).

        Raises:
          ValueError: when B * n rows do not divide over the mesh's batch axes.
        """
        stop_arrays = (stop or self.stop).arrays()
        return self._executable(state, num_prompts, n, bucket, stop_arrays)

    def _executable(self, state, batch: int, n: int, bucket: int, stop: StopArrays):
        signature = tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(state))
        stop_shapes = (stop.eos_ids.shape, stop.table.shape)
        key = (batch, n, bucket, stop_shapes, jax.tree.structure(state), signature)
        if key not in self._executables:
            spec = DecodeSpec(
                n=n,
                max_new_tokens=self.max_new_tokens,
                max_top_k=self.max_top_k,
                pad_id=self.pad_id,
                shared_prefill=self.shares_prefill(batch),
            )
            # Shared with the other Samplers of the process over the same policy graph and
            # mesh (parallel.compile_cache).
            rules = parallel.rules_key(self.rules), parallel.rules_key(self.inference_rules)
            shared = (key, spec, self._graphdef, self.mesh, rules)
            self._executables[key] = compile_cache.shared(
                shared, lambda: self._compile(state, batch, n, bucket, stop, spec)
            )
        return self._executables[key]

    def _compile(self, state, batch: int, n: int, bucket: int, stop: StopArrays, spec):
        args = self._abstract_args(state, batch, n, bucket, stop)
        if self.mesh is None:
            return (
                jax.jit(functools.partial(generate_rollouts, self._graphdef, spec=spec))
                .lower(*args)
                .compile()
            )
        weights = parallel.state_shardings(state, self.mesh, self.inference_rules)
        fn = functools.partial(
            generate_rollouts,
            self._graphdef,
            spec=spec,
            place_weights=functools.partial(_place, shardings=weights),
        )
        jitted = jax.jit(
            _under(fn, self.mesh, self.inference_rules),
            in_shardings=self._in_shardings(state, batch, n, stop),
            out_shardings=self._out_shardings(batch * n, n),
        )
        return jitted.lower(*args).compile()

    def _abstract_args(self, state, batch: int, n: int, bucket: int, stop: StopArrays) -> tuple:
        def like(shape, dtype):
            return jax.ShapeDtypeStruct(shape, dtype)

        rows = batch * n
        row_params = RowSamplingParams(
            temperature=like((rows,), np.float32),
            top_k=like((rows,), np.int32),
            top_p=like((rows,), np.float32),
            greedy=like((rows,), np.bool_),
        )
        abstract_state = jax.tree.map(lambda x: like(x.shape, x.dtype), state)
        stop = jax.tree.map(lambda x: like(x.shape, x.dtype), stop)
        prompts = like((batch, bucket), np.int32)
        seed = like((), np.uint32)
        return (abstract_state, prompts, prompts, row_params, seed, seed, stop)

    # --- sharding -----------------------------------------------------------------------------

    def _shards(self) -> int:
        """How many ways the batch's mesh axes split rows."""
        (axes,) = parallel.mesh_axes_for(("batch",), self.rules)
        return int(np.prod([self.mesh.shape[a] for a in axes], dtype=np.int64))

    def _divides(self, rows: int) -> bool:
        return rows % self._shards() == 0

    def _rows_sharding(self, rows: int, what: str) -> NamedSharding:
        """Batch sharding for leading dim `rows`; raises when the batch axes do not divide it."""
        if not self._divides(rows):
            raise ValueError(
                f"sampler: {what} ({rows}) do not divide over the {self._shards()} batch shards "
                f"of mesh {dict(self.mesh.shape)}; they would be replicated on every device. "
                "Use a number of prompts x samples that is a multiple of the batch shards."
            )
        return parallel.batch_sharding(self.mesh, self.rules)

    def _in_shardings(self, state: nnx.State, batch: int, n: int, stop: StopArrays) -> tuple:
        key = jax.tree.structure(state), tuple(x.shape for x in jax.tree.leaves(state))
        if key not in self._state_shardings:
            self._state_shardings[key] = parallel.state_shardings(state, self.mesh, self.rules)
        per_row = self._rows_sharding(batch * n, f"{batch} prompts x {n} samples = rows")
        replicated = NamedSharding(self.mesh, PartitionSpec())
        # Prompts that do not divide are tiny int arrays; they are spread to rows in the jit.
        prompts = per_row if self._divides(batch) else replicated
        row_params = RowSamplingParams(
            temperature=per_row, top_k=per_row, top_p=per_row, greedy=per_row
        )
        stop_shardings = jax.tree.map(lambda _: replicated, stop)
        return (
            self._state_shardings[key],
            prompts,
            prompts,
            row_params,
            replicated,
            replicated,
            stop_shardings,
        )

    def _out_shardings(self, rows: int, n: int) -> Rollouts:
        sharding = self._rows_sharding(rows, "rows")
        return Rollouts(**{name: sharding for name in _ROLLOUT_FIELDS}, samples_per_prompt=n)


def _place(state: nnx.State, shardings: Any) -> nnx.State:
    """The state constrained to `shardings` (a tree of the same structure)."""
    return jax.tree.map(jax.lax.with_sharding_constraint, state, shardings)


def _under(fn, mesh: jax.sharding.Mesh, rules: Any):
    """`fn` traced with activation constraints over `mesh` by `rules`."""

    def traced(*args):
        with parallel.activation_sharding(mesh, rules):
            return fn(*args)

    return traced
