"""tempo_jax.models: Qwen3 / OLMo3 decoders in Flax NNX (policy and critic), HF import / export.

Public API (shapes: B rows, T tokens, P prompt tokens, S_max cache slots, D width, V vocab):

  ModelConfig, RopeConfig, PRESETS, get_preset(name, **overrides)      (config.py)
  Policy(config, rngs=nnx.Rngs(0))                                      (roles.py)
    policy(tokens [B, T], attention_mask [B, T]) -> logits [B, T, V] float32
    policy.hidden_states(tokens, attention_mask) -> [B, T, D] final-normed (compute dtype)
    policy.output_embedding() -> W [V, D] (param dtype); logits = hidden @ W.T
    policy.logits_from_hidden(hidden [..., D]) -> [..., V] float32
    policy.init_cache(batch_size, max_length) -> KVCache
    policy.prefill(tokens [B, P], attention_mask [B, P], cache) -> (logits [B, V], cache)
    policy.decode_step(tokens [B], positions [B], key_mask [B, S_max], cache, index)
        -> (logits [B, V], cache)
  Critic(config, rngs=...); critic(tokens, attention_mask) -> values [B, T] float32
    critic.hidden_states(tokens, attention_mask) -> [B, T, D]; critic.values_from_hidden(h)
  critic_from_policy(policy, rngs=None) -> Critic (decoder copied, value head ~0)
  with_dtypes(model, dtype=None, param_dtype=None) -> same model, other dtypes
  with_attention(model, implementation, block_size=None) -> same parameters, other attention
  KVCache(k, v) [L, B, S_max, K, Dh]; init_cache(config, batch_size, max_length);
  KV_CACHE_LOGICAL_AXES; positions_from_mask(attention_mask) -> [B, T]   (decoder.py)
  load_hf(path, role="policy"|"critic", dtype="float32", param_dtype=None)  (hf_io.py)
  save_hf(model, path, max_shard_bytes=5 GiB)
  read_hf_config(path, role, dtype, param_dtype) -> (ModelConfig, extras); no weights read
  CheckpointError                                                        (errors.py)

Batches are left-padded; positions are cumsum(attention_mask) - 1. Everything is pure over
(graphdef, state): `nnx.merge(graphdef, state)(tokens, mask)` inside jax.jit / jax.grad.
"""

from tempo_jax.models.config import PRESETS, ModelConfig, RopeConfig, get_preset
from tempo_jax.models.decoder import (
    KV_CACHE_LOGICAL_AXES,
    Decoder,
    KVCache,
    init_cache,
    positions_from_mask,
)
from tempo_jax.models.errors import CheckpointError
from tempo_jax.models.hf_io import load_hf, read_hf_config, save_hf
from tempo_jax.models.roles import (
    Critic,
    Policy,
    critic_from_policy,
    with_attention,
    with_dtypes,
)

__all__ = [
    "KV_CACHE_LOGICAL_AXES",
    "PRESETS",
    "CheckpointError",
    "Critic",
    "Decoder",
    "KVCache",
    "ModelConfig",
    "Policy",
    "RopeConfig",
    "critic_from_policy",
    "get_preset",
    "init_cache",
    "load_hf",
    "positions_from_mask",
    "read_hf_config",
    "save_hf",
    "with_attention",
    "with_dtypes",
]
