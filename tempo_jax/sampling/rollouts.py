"""The sampler's output: a frozen pytree of rollouts, plus the finish-reason codes.

Row layout: prompt p's j-th sample is row i = p * n + j, so `group_ids[i] = p` and the rows of one
prompt are contiguous (what group-relative advantages and group filters expect).

Response convention (the usual RL one): the token that ends a response is part of it. An EOS token
is a response token with `response_mask` 1, a log-prob and a slot counted in `lengths`, so the
policy is trained to stop; likewise every token of a matched stop sequence. Slots after the end
hold `pad_id`, mask 0 and log-probs 0.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

# finish_reason codes. 0 is never returned: the sampler uses it for rows still running.
FINISH_EOS = 1  # sampled one of the EOS ids (included in the response)
FINISH_STOP = 2  # the response ends with one of the stop sequences (included)
FINISH_LENGTH = 3  # reached max_new_tokens without EOS or stop sequence
FINISH_REASONS = {FINISH_EOS: "eos", FINISH_STOP: "stop", FINISH_LENGTH: "length"}


@flax.struct.dataclass  # frozen
class Rollouts:
    """N = B * n sampled responses to B prompts (n per prompt), padded to L = max_new_tokens.

    Attributes:
      prompt_tokens: [N, P] int32 prompts as the sampler fed them: left-padded to the prompt
        bucket P, row i holding prompt group_ids[i].
      prompt_mask: [N, P] int32, 1 on prompt tokens.
      tokens: [N, L] int32 response tokens; `pad_id` after the end.
      response_mask: [N, L] int32, 1 on response tokens (EOS / stop tokens included), 0 after.
      lengths: [N] int32 response lengths, sum of response_mask.
      finish_reason: [N] int32, FINISH_EOS / FINISH_STOP / FINISH_LENGTH.
      logprobs: [N, L] float32 log pi(token | prefix) under the UNTEMPERED policy (a log_softmax
        of the raw logits over the whole vocabulary, no temperature / top-k / top-p): the
        "old policy" log-probs that training's importance ratios compare against. 0 after the
        end.
      sampling_logprobs: [N, L] float32 log-probs under the distribution actually sampled from
        (logits / temperature restricted to the top-k and top-p set, renormalised); 0 on greedy
        rows (a point mass) and after the end.
      group_ids: [N] int32 prompt index of each row (row i = p * n + j -> p).
      samples_per_prompt: n (static).
    """

    prompt_tokens: jax.Array
    prompt_mask: jax.Array
    tokens: jax.Array
    response_mask: jax.Array
    lengths: jax.Array
    finish_reason: jax.Array
    logprobs: jax.Array
    sampling_logprobs: jax.Array
    group_ids: jax.Array
    samples_per_prompt: int = flax.struct.field(pytree_node=False, default=1)

    @property
    def num_rows(self) -> int:
        return self.tokens.shape[0]

    @property
    def max_new_tokens(self) -> int:
        return self.tokens.shape[1]

    def sequences(self) -> tuple[jax.Array, jax.Array]:
        """Prompt + response as one left-padded batch, for a teacher-forced forward pass.

        Returns:
          tokens [N, P + L] int32 and attention_mask [N, P + L] int32 (prompt_mask then
          response_mask). The response token t of row i sits at column P + t, and the logits
          that predict it are at column P + t - 1.
        """
        tokens = jnp.concatenate([self.prompt_tokens, self.tokens], axis=1)
        mask = jnp.concatenate([self.prompt_mask, self.response_mask], axis=1)
        return tokens, mask
