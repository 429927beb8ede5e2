"""The two roles built on the decoder: Policy (LM head -> logits) and Critic (value head -> values).

Both are pure in their inputs: `__call__` and the cache methods read parameters and return new
arrays, never mutate module state, so the usual pattern works under `jax.jit` / `jax.grad`:

    graphdef, state = nnx.split(policy)
    def logits_fn(state, tokens, mask):
        return nnx.merge(graphdef, state)(tokens, mask)

Policy API (shapes: B rows, T tokens, P prompt tokens, S_max cache slots, D width, V vocab):
  policy(tokens [B, T], attention_mask [B, T]) -> logits [B, T, V] float32
  policy.hidden_states(tokens, attention_mask) -> [B, T, D] final-normed, compute dtype
  policy.output_embedding() -> [V, D] output projection as stored (param dtype);
      logits = hidden @ output_embedding().T, what `policy.logits_from_hidden(hidden)` computes
      (float32 accumulation), so the trainer can take log-probs in vocabulary chunks.
  policy.init_cache(batch_size, max_length) -> KVCache
  policy.prefill(tokens [B, P], attention_mask [B, P], cache) -> (logits [B, V], cache)
      logits of the last prompt slot (P - 1).
  policy.decode_step(tokens [B], positions [B], key_mask [B, S_max], cache, index)
      -> (logits [B, V], cache); writes slot `index`.

Critic API:
  critic(tokens [B, T], attention_mask [B, T]) -> values [B, T] float32; values[b, t] reads the
      hidden state at t, i.e. V(prefix up to and including token t).
  critic.hidden_states(tokens, attention_mask) -> [B, T, D];
  critic.values_from_hidden(hidden [..., D]) -> [...] float32.
  critic_from_policy(policy, rngs=...) -> Critic with the policy's decoder weights (copied) and
      a fresh value head whose outputs are ~0.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from tempo_jax.models.config import ModelConfig, dtype_name
from tempo_jax.models.decoder import Decoder, KVCache, init_cache

# Value-head init scale (times 1 / sqrt(D)): fresh values are ~1e-2 * rms(hidden), close to 0 so
# a new critic does not start with a large, arbitrary baseline.
_VALUE_HEAD_INIT_SCALE = 1e-2


def _project(hidden: jax.Array, weight_vd: jax.Array, dtype: jnp.dtype) -> jax.Array:
    return jnp.einsum(
        "...d,vd->...v",
        hidden.astype(dtype),
        weight_vd.astype(dtype),
        preferred_element_type=jnp.float32,
    )


class Policy(nnx.Module):
    """Decoder + output projection (tied to the embedding or a separate [V, D] `lm_head`).

    Attributes:
      config: ModelConfig (static).
      model: the Decoder (named like transformers' `model.` prefix).
      lm_head: [V, D] Param with logical axes ("vocab", "embed"), or None when tied.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.model = Decoder(config, rngs=rngs)
        if config.tie_word_embeddings:
            self.lm_head = None
        else:
            init = nnx.initializers.normal(config.initializer_range)
            self.lm_head = nnx.Param(
                init(rngs.params(), (config.vocab_size, config.hidden_size), config.weight_dtype),
                logical_axes=("vocab", "embed"),
            )

    def __call__(self, tokens: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """Logits [B, T, V] float32 for a left-padded batch tokens [B, T], mask [B, T]."""
        return self.logits_from_hidden(self.hidden_states(tokens, attention_mask))

    def hidden_states(self, tokens: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """Final-normed hidden states [B, T, D] (compute dtype); logits are these @ W.T."""
        return self.model(tokens, attention_mask)

    def output_embedding(self) -> jax.Array:
        """The output projection W [V, D] in the param dtype (the embedding when tied)."""
        if self.lm_head is None:
            return self.model.embed_tokens[...]
        return self.lm_head[...]

    def logits_from_hidden(self, hidden: jax.Array) -> jax.Array:
        """hidden [..., D] -> logits [..., V] float32 (matmul in the compute dtype)."""
        return _project(hidden, self.output_embedding(), self.config.compute_dtype)

    def init_cache(self, batch_size: int, max_length: int) -> KVCache:
        """An empty KV cache [L, B, S_max, K, Dh] in the compute dtype."""
        return init_cache(self.config, batch_size, max_length)

    def prefill(
        self, tokens: jax.Array, attention_mask: jax.Array, cache: KVCache
    ) -> tuple[jax.Array, KVCache]:
        """Writes a left-padded prompt [B, P] into cache slots [0, P).

        Returns:
          logits [B, V] float32 at the last prompt slot (the next-token distribution) and the
          cache. Continue with `decode_step(..., index=P)`, positions sum(attention_mask, -1)
          and key_mask = attention_mask padded with False to S_max.
        """
        hidden, cache = self.model.prefill(tokens, attention_mask, cache)
        return self.logits_from_hidden(hidden[:, -1]), cache

    def decode_step(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        key_mask: jax.Array,
        cache: KVCache,
        index: jax.Array | int,
    ) -> tuple[jax.Array, KVCache]:
        """One token per row at cache slot `index`.

        Args:
          tokens: [B] ids fed at this step.
          positions: [B] int rotary positions of those tokens.
          key_mask: [B, S_max] bool, True on slots holding real tokens; slot `index` is always
            attended (it holds the token fed now).
          cache: from `prefill` or a previous `decode_step`.
          index: int32 scalar slot, the same for all rows.

        Returns:
          logits [B, V] float32 for the next token, updated cache.
        """
        hidden, cache = self.model.decode(
            tokens[:, None], positions[:, None], key_mask, cache, index
        )
        return self.logits_from_hidden(hidden[:, 0]), cache


class Critic(nnx.Module):
    """Decoder + scalar value head (transformers' *ForTokenClassification, num_labels=1).

    Attributes:
      config: ModelConfig (static).
      model: the Decoder.
      score_kernel: [D] Param, logical axes ("embed",) (transformers' `score.weight[0]`).
      score_bias: [] Param, logical axes () (transformers' `score.bias[0]`).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.model = Decoder(config, rngs=rngs)
        std = _VALUE_HEAD_INIT_SCALE / config.hidden_size**0.5
        self.score_kernel = nnx.Param(
            nnx.initializers.normal(std)(rngs.params(), (config.hidden_size,), config.weight_dtype),
            logical_axes=("embed",),
        )
        self.score_bias = nnx.Param(jnp.zeros((), config.weight_dtype), logical_axes=())

    def __call__(self, tokens: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """Values [B, T] float32 for a left-padded batch tokens [B, T], mask [B, T]."""
        return self.values_from_hidden(self.hidden_states(tokens, attention_mask))

    def hidden_states(self, tokens: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """Final-normed hidden states [B, T, D] (compute dtype) that the value head reads."""
        return self.model(tokens, attention_mask)

    def values_from_hidden(self, hidden: jax.Array) -> jax.Array:
        """hidden [..., D] -> values [...] float32."""
        values = jnp.einsum(
            "...d,d->...",
            hidden.astype(self.config.compute_dtype),
            self.score_kernel[...].astype(self.config.compute_dtype),
            preferred_element_type=jnp.float32,
        )
        return values + self.score_bias[...].astype(jnp.float32)


def critic_from_policy(policy: Policy, *, rngs: nnx.Rngs | None = None) -> Critic:
    """A Critic whose decoder is a copy of the policy's and whose value head outputs ~0.

    The copy shares no buffers with the policy, so training one never moves the other. The
    policy's output projection is not used.

    Args:
      policy: the source model.
      rngs: for the value-head init; defaults to nnx.Rngs(0).
    """
    rngs = nnx.Rngs(0) if rngs is None else rngs
    abstract = nnx.eval_shape(lambda: Critic(policy.config, rngs=nnx.Rngs(0)))
    head_key = rngs.params()
    graphdef, state = nnx.split(abstract)
    decoder_state = jax.tree.map(jnp.copy, nnx.state(policy.model))
    critic = nnx.merge(graphdef, state)
    nnx.update(critic.model, decoder_state)
    c = policy.config
    std = _VALUE_HEAD_INIT_SCALE / c.hidden_size**0.5
    # set_value, not [...] =: the abstract leaves are ShapeDtypeStructs until replaced here.
    critic.score_kernel.set_value(
        nnx.initializers.normal(std)(head_key, (c.hidden_size,), c.weight_dtype)
    )
    critic.score_bias.set_value(jnp.zeros((), c.weight_dtype))
    return critic


def with_dtypes(model: Policy | Critic, *, dtype=None, param_dtype=None) -> Policy | Critic:
    """The same model with another compute dtype and/or parameter dtype (a new object).

    Args:
      model: a Policy or Critic.
      dtype: new compute dtype ("float32" / "bfloat16"); None keeps it.
      param_dtype: new parameter dtype; None keeps it. Parameters are cast (copied).
    """
    changes = {}
    if dtype is not None:
        changes["dtype"] = dtype_name(dtype)
    if param_dtype is not None:
        changes["param_dtype"] = dtype_name(param_dtype)
    config = dataclasses.replace(model.config, **changes)
    state = jax.tree.map(lambda x: x.astype(config.weight_dtype), nnx.state(model))
    return _rebuilt(model, config, state)


def with_attention(
    model: Policy | Critic, implementation: str, block_size: int | None = None
) -> Policy | Critic:
    """The same model (the same parameter arrays) with another attention implementation.

    Args:
      model: a Policy or Critic.
      implementation: one of `tempo_jax.models.attention.IMPLEMENTATIONS`.
      block_size: keys per block of the blockwise implementation; None keeps it.
    """
    changes = {"attention": implementation}
    if block_size is not None:
        changes["attention_block_size"] = block_size
    return _rebuilt(model, dataclasses.replace(model.config, **changes), nnx.state(model))


def _rebuilt(model: Policy | Critic, config: ModelConfig, state: nnx.State) -> Policy | Critic:
    """A model of `model`'s role with `config` (built abstractly) and the given parameters."""
    abstract = nnx.eval_shape(lambda: type(model)(config, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract)
    return nnx.merge(graphdef, state)
