"""tempo_jax.sampling: the rollout engine (jitted KV-cache prefill + decode, n samples per prompt).

Public API (B prompts, n samples each, N = B * n rows, P prompt bucket, L = max_new_tokens):

  Sampler(policy, max_new_tokens=L, max_prompt_length=..., eos_ids=..., stop_sequences=...,
          pad_id=0, max_top_k=64, mesh=None, rules=None,
          max_rows_per_chunk=None)                                              (sampler.py)
    .generate(state, prompt_tokens [B, T], prompt_mask [B, T], n=1, sampling=SamplingParams(),
              seed=0, stop=None, chunk_log=None) -> Rollouts
    .compile(state, num_prompts, n, bucket) -> the executable generate runs (state may be
        abstract); .num_compilations, .compiled_shapes, .buckets, .row_shards,
        .prompts_per_chunk(B, n): the prompts of each compiled call (B padded so its rows
        split over the mesh, at most max_rows_per_chunk rows)
  Engine(policy, page_size=16, num_slots=0, num_pages=0, steps_per_call=16, mesh=None,
         rules=None, decode_tensor=1, preemption="recompute", **Sampler's):
      the same interface and tokens by continuous batching over a paged KV cache, sharded over
      the mesh (engine.py; engine_layout.py, engine_host.py, paged_decode.py,
      paged_attention.py, page_allocator.py); .last_stats, .layout
  chunk_prompts(B, n, row_shards, max_rows_per_chunk): the same without a Sampler  (sampler.py)
  ChunkLog: generate's record of finished chunks, so that an interrupted call resumes (sampler.py)
  SamplingParams(temperature, top_k, top_p, greedy): scalars or per-prompt [B] / per-row [N]
      arrays; changing values never recompiles                                 (params.py)
  Rollouts: prompt_tokens / prompt_mask [N, P], tokens / response_mask / logprobs (untempered) /
      sampling_logprobs [N, L], lengths / finish_reason / group_ids [N]; .sequences()
      FINISH_EOS, FINISH_STOP, FINISH_LENGTH, FINISH_REASONS                  (rollouts.py)
  StopCriteria.create(eos_ids, stop_sequences) -> .arrays() StopArrays (jit args) (stopping.py)
  generate_rollouts(graphdef, state, tokens, mask, row_params, seed, first_row, stop_arrays,
                    spec=...):
      the pure function the Sampler compiles; cast_for_compute(state, dtype)  (decode.py)
  sample_tokens(logits [N, V], keys [N], row_params, max_top_k) -> tokens, logprobs,
      sampling_logprobs; candidate_logits(...)                           (token_sampling.py)
  default_buckets(max_prompt_length), left_pad_to(...)                         (buckets.py)

Conventions: EOS and stop-sequence tokens are part of the response (mask 1); row p * n + j is
sample j of prompt p (group_ids = p); a row's random draws depend only on (seed, row, step).
"""

from tempo_jax.sampling.buckets import choose_bucket, default_buckets, left_pad_to
from tempo_jax.sampling.decode import DecodeSpec, cast_for_compute, generate_rollouts
from tempo_jax.sampling.engine import Engine
from tempo_jax.sampling.params import RowSamplingParams, SamplingParams
from tempo_jax.sampling.rollouts import (
    FINISH_EOS,
    FINISH_LENGTH,
    FINISH_REASONS,
    FINISH_STOP,
    Rollouts,
)
from tempo_jax.sampling.sampler import ChunkLog, Sampler, chunk_prompts
from tempo_jax.sampling.stopping import StopArrays, StopCriteria
from tempo_jax.sampling.token_sampling import candidate_logits, sample_tokens

__all__ = [
    "ChunkLog",
    "FINISH_EOS",
    "FINISH_LENGTH",
    "FINISH_REASONS",
    "FINISH_STOP",
    "DecodeSpec",
    "Engine",
    "RowSamplingParams",
    "Rollouts",
    "Sampler",
    "SamplingParams",
    "StopArrays",
    "StopCriteria",
    "candidate_logits",
    "chunk_prompts",
    "cast_for_compute",
    "choose_bucket",
    "default_buckets",
    "generate_rollouts",
    "left_pad_to",
    "sample_tokens",
]
