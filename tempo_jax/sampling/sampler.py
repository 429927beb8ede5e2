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

Sharding: with a `mesh` (from `tempo_jax.parallel.make_mesh`) the parameters take the shardings
of their `logical_axes` under `rules`, the prompt batch, per-row parameters and every output
array are split along the batch over the rules' `batch` axes (data, fsdp by default), and the
KV cache is constrained to `KV_CACHE_LOGICAL_AXES` (batch over data / fsdp, kv heads over
tensor). An array whose batch does not divide over those axes is replicated instead.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from tempo_jax import parallel
from tempo_jax.models import Policy
from tempo_jax.models.attention import resolve as resolve_attention
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
        rules: logical-axis rules for `tempo_jax.parallel` (default rules when None).
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

        Returns:
          Rollouts with N = B * n rows, row p * n + j the j-th sample of prompt p.

        Chunks: with `max_rows_per_chunk` R, the prompts go in chunks of
        min(B, R // n) (all n samples of a prompt share a chunk and its prefill), each one
        compiled call whose decode loop ends when its own rows have stopped; the last chunk is
        padded by repeating its last prompt (the repeats' rows are dropped). Every chunk uses
        the bucket of the call's longest prompt and row keys by row index in the whole batch,
        so the tokens are those of one unchunked call. Several chunks return host (numpy)
        arrays; one chunk returns the executable's arrays as they are.

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
        if per_chunk == batch:
            return self._call(state, tokens, mask, rows, seed, 0, stop_arrays, n, bucket)
        parts = []
        for start in range(0, batch, per_chunk):
            real = min(per_chunk, batch - start)
            pick = np.minimum(np.arange(start, start + per_chunk), batch - 1)
            row_pick = (pick[:, None] * n + np.arange(n)[None, :]).reshape(-1)
            chunk_rows = jax.tree.map(lambda x, i=row_pick: x[i], rows)
            out = self._call(
                state, tokens[pick], mask[pick], chunk_rows, seed, start * n, stop_arrays, n, bucket
            )
            parts.append((out, real * n, start))
        # Fetched after every chunk is dispatched, so host copies overlap the next decode.
        host = []
        for out, real_rows, start in parts:
            out = jax.tree.map(lambda x, k=real_rows: x[:k], parallel.host_from_global(out))
            host.append(out.replace(group_ids=out.group_ids + start))
        return jax.tree.map(lambda *xs: np.concatenate(xs), *host)

    def prompts_per_chunk(self, batch: int, n: int) -> int:
        """Prompts per compiled call for a batch of `batch` prompts with n samples each."""
        if self.max_rows_per_chunk is None:
            return batch
        if n > self.max_rows_per_chunk:
            raise ValueError(
                f"n={n} samples per prompt do not fit in max_rows_per_chunk="
                f"{self.max_rows_per_chunk} rows (rollout.max_rows_per_chunk)"
            )
        return min(batch, self.max_rows_per_chunk // n)

    def _call(self, state, tokens, mask, rows, seed, first_row, stop_arrays, n, bucket):
        """One compiled call on prompts [b, bucket] (b prompts, their b * n rows)."""
        batch = tokens.shape[0]
        args = (state, tokens, mask, rows, np.uint32(seed), np.uint32(first_row), stop_arrays)
        if self.mesh is not None:
            args = jax.device_put(args, self._in_shardings(state, batch, n, stop_arrays))
        return self._executable(args, batch, n, bucket)(*args)

    def _executable(self, args: tuple, batch: int, n: int, bucket: int):
        state, stop = args[0], args[-1]
        signature = tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(state))
        stop_shapes = (stop.eos_ids.shape, stop.table.shape)
        key = (batch, n, bucket, stop_shapes, jax.tree.structure(state), signature)
        if key not in self._executables:
            spec = DecodeSpec(
                n=n,
                max_new_tokens=self.max_new_tokens,
                max_top_k=self.max_top_k,
                pad_id=self.pad_id,
            )
            fn = functools.partial(
                generate_rollouts, self._graphdef, spec=spec, constrain=self._constrain
            )
            if self.mesh is None:
                jitted = jax.jit(fn)
            else:
                jitted = jax.jit(
                    fn,
                    in_shardings=self._in_shardings(state, batch, n, stop),
                    out_shardings=self._out_shardings(batch * n, n),
                )
            # A Pallas attention kernel runs per shard under the mesh context (see
            # tempo_jax.models.attention.splash_attention).
            kernel_mesh = self.mesh is not None and "splash" == resolve_attention(
                self.config.attention, self.mesh.devices.flat[0].platform, self.config.dtype
            )
            with jax.set_mesh(self.mesh) if kernel_mesh else contextlib.nullcontext():
                self._executables[key] = jitted.lower(*args).compile()
        return self._executables[key]

    # --- sharding -----------------------------------------------------------------------------

    def _constrain(self, x: jax.Array, names: Sequence[str | None]) -> jax.Array:
        if self.mesh is None:
            return x
        return parallel.with_logical_constraint(x, names, self.mesh, self.rules)

    def _rows_sharding(self, rows: int) -> NamedSharding:
        """Batch sharding for leading dim `rows`, or replicated when it does not divide."""
        sharding = parallel.batch_sharding(self.mesh, self.rules)
        axes = sharding.spec[0]
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        shards = int(np.prod([self.mesh.shape[a] for a in axes], dtype=np.int64))
        if rows % shards:
            return NamedSharding(self.mesh, PartitionSpec())
        return sharding

    def _in_shardings(self, state: nnx.State, batch: int, n: int, stop: StopArrays) -> tuple:
        key = jax.tree.structure(state), tuple(x.shape for x in jax.tree.leaves(state))
        if key not in self._state_shardings:
            self._state_shardings[key] = parallel.state_shardings(state, self.mesh, self.rules)
        prompts = self._rows_sharding(batch)
        per_row = self._rows_sharding(batch * n)
        row_params = RowSamplingParams(
            temperature=per_row, top_k=per_row, top_p=per_row, greedy=per_row
        )
        replicated = NamedSharding(self.mesh, PartitionSpec())
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
        sharding = self._rows_sharding(rows)
        return Rollouts(**{name: sharding for name in _ROLLOUT_FIELDS}, samples_per_prompt=n)
