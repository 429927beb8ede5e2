"""Batch layout of the RL steps: full sequences plus per-response-token arrays.

Each of the N rows is one sampled sequence of S = P + L tokens: the prompt left-padded to P slots,
then the response right-padded to L slots (`tokens[i, :P]` prompt, `tokens[i, P:]` response).

    slot s:          0 ........ P-2   P-1  |  P     P+1   ...   P+L-1
    tokens:          pad..pad x x x   x    |  y_0   y_1   ...   y_{L-1}
    response t:                            |  0     1     ...   L-1

Alignment (TEMPO_ALGORITHM.md §2). Response token t of row i sits at slot P + t and is predicted
from the hidden state at slot P + t - 1, so the log-probs of the response use the policy's hidden
states at slots P - 1 .. P + L - 2 (`response_hidden`). The critic reads the value before each
token, `V[i, t] = V_phi(x, y_<t)`; the critic's output at slot s is the value of the prefix up to
and including slot s, so `V[i, t]` is its output at slot P - 1 + t: `V[i, 0]` at the last prompt
token is the value of the bare prompt. Both are "slots P - 1 .. P + L - 2", one shift left of the
response tokens. `response_mask[i, t]` marks real response tokens (a prefix of the L slots
when the response ended early); `attention_mask` marks real tokens of the whole sequence.

`Sequences` is what the forward-only functions need (right after sampling); `RLBatch` adds what the
losses need. Filtered rows stay in the arrays (static shapes) with `keep = False` and contribute
nothing to any loss, count or metric.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


class _SlotLayout:
    """P and L of a batch whose `tokens` are [N, P + L] and `response_mask` [N, L]."""

    tokens: jax.Array
    response_mask: jax.Array

    @property
    def response_length(self) -> int:
        return self.response_mask.shape[-1]

    @property
    def prompt_length(self) -> int:
        return self.tokens.shape[-1] - self.response_mask.shape[-1]


@flax.struct.dataclass
class Sequences(_SlotLayout):
    """Sampled sequences. Shapes: N rows, S = P + L slots, L response slots.

    Attributes:
      tokens: [N, S] int32: left-padded prompt then right-padded response.
      attention_mask: [N, S] bool/int: 1 on real tokens (prompt and response).
      response_mask: [N, L] bool/int: 1 on real response tokens, aligned to the last L slots.
    """

    tokens: jax.Array
    attention_mask: jax.Array
    response_mask: jax.Array


@flax.struct.dataclass
class RLBatch(_SlotLayout):
    """One policy / critic update batch (see the module docstring for the slot layout).

    Attributes:
      tokens, attention_mask, response_mask: as in `Sequences`.
      old_logprobs: [N, L] float32 log pi_old(y_t) of the sampling policy.
      advantages: [N, L] float32 (e.g. `rl.em_token_advantage`).
      returns: [N, L] float32 critic targets G.
      old_values: [N, L] float32 critic values before the update (the value clip's anchor).
      is_labeled: [N] bool: the critic trains on labeled rows only.
      keep: [N] bool: False for rows dropped by a group filter (they contribute nothing).
    """

    tokens: jax.Array
    attention_mask: jax.Array
    response_mask: jax.Array
    old_logprobs: jax.Array
    advantages: jax.Array
    returns: jax.Array
    old_values: jax.Array
    is_labeled: jax.Array
    keep: jax.Array

    def sequences(self) -> Sequences:
        return Sequences(self.tokens, self.attention_mask, self.response_mask)


_TOKEN_FIELDS = ("old_logprobs", "advantages", "returns", "old_values")
_ROW_FIELDS = ("is_labeled", "keep")


def check_batch(batch: Sequences | RLBatch, where: str = "batch") -> None:
    """Shape checks in Python (before any trace), naming the field.

    Raises:
      ValueError: when a field's shape disagrees with `tokens` [N, S] / `response_mask` [N, L],
        the prompt has no slot (P < 1: nothing would predict the first response token), or
        `tokens` is not an integer array.
    """
    tokens = np.shape(batch.tokens)
    if len(tokens) != 2:
        raise ValueError(f"{where}.tokens must be [N, S], got shape {tokens}")
    if not np.issubdtype(np.dtype(batch.tokens.dtype), np.integer):
        raise ValueError(f"{where}.tokens must be integer token ids, got {batch.tokens.dtype}")
    n, s = tokens
    mask = np.shape(batch.attention_mask)
    if mask != tokens:
        raise ValueError(f"{where}.attention_mask must be [N, S] = {tokens}, got {mask}")
    response = np.shape(batch.response_mask)
    if len(response) != 2 or response[0] != n or not 1 <= response[1] < s:
        raise ValueError(
            f"{where}.response_mask must be [N={n}, L] with 1 <= L < S={s} (at least one prompt "
            f"slot), got {response}"
        )
    if isinstance(batch, RLBatch):
        for name in _TOKEN_FIELDS:
            if np.shape(getattr(batch, name)) != response:
                raise ValueError(
                    f"{where}.{name} must be [N, L] = {response}, got "
                    f"{np.shape(getattr(batch, name))}"
                )
        for name in _ROW_FIELDS:
            if np.shape(getattr(batch, name)) != (n,):
                raise ValueError(
                    f"{where}.{name} must be [N] = ({n},), got {np.shape(getattr(batch, name))}"
                )


def response_slots(x: jax.Array, response_length: int) -> jax.Array:
    """x [N, S, ...] at slots P - 1 .. P + L - 2 (those that predict / value each response token).

    Returns:
      [N, L, ...]: element t is slot P - 1 + t.
    """
    total = x.shape[1]
    return jax.lax.slice_in_dim(x, total - response_length - 1, total - 1, axis=1)


def response_tokens(tokens: jax.Array, response_length: int) -> jax.Array:
    """tokens [N, S] -> the response [N, L] (slots P .. P + L - 1)."""
    return tokens[:, tokens.shape[1] - response_length :]


def split_micro_batches(tree, num_micro_batches: int):
    """[N, ...] leaves -> [k, N / k, ...]; micro-batch j holds rows j, j + k, j + 2k, ...

    Strided rather than contiguous: with the batch sharded in contiguous blocks over devices,
    every micro-batch then takes N / (k D) rows from each of the D batch shards, so each device
    works on every micro-batch and the split needs no communication (contiguous micro-batches
    would each live on a fraction of the devices).
    """
    k = num_micro_batches

    def split(x):
        x = x.reshape((x.shape[0] // k, k) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, tree)
