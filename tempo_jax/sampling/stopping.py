"""When a row stops: any of several EOS ids, or any of several multi-token stop sequences.

Stop sequences are matched on generated tokens only (never across the prompt boundary), by
keeping each row's last M generated tokens in a [N, M] window (M = the longest stop sequence)
and comparing it with a [S, M] table whose shorter sequences are right-aligned behind a
wildcard. Both EOS and stop-sequence tokens stay in the response (see `rollouts`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

# Window fill before M tokens were generated; never equal to a real token id.
_EMPTY = -1
# Table fill left of a shorter stop sequence; matches anything.
_WILDCARD = -2


@dataclasses.dataclass(frozen=True)
class StopCriteria:
    """What ends a response (besides max_new_tokens).

    Attributes:
      eos_ids: token ids that end a response with FINISH_EOS.
      stop_sequences: token-id sequences (each of length >= 1) that end a response with
        FINISH_STOP once the generated tokens end with one of them.
    """

    eos_ids: tuple[int, ...] = ()
    stop_sequences: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def create(
        cls,
        eos_ids: int | Sequence[int] | None = None,
        stop_sequences: Sequence[Sequence[int]] = (),
        vocab_size: int | None = None,
    ) -> StopCriteria:
        """Validated criteria; `vocab_size`, when given, bounds every id.

        Raises:
          ValueError: naming the bad entry (empty sequence, negative or out-of-vocabulary id).
        """
        if eos_ids is None:
            eos = ()
        elif isinstance(eos_ids, (int, np.integer)):
            eos = (int(eos_ids),)
        else:
            eos = tuple(int(t) for t in eos_ids)
        seqs = tuple(tuple(int(t) for t in seq) for seq in stop_sequences)
        limit = f" < vocab_size={vocab_size}" if vocab_size is not None else ""

        def bad(token: int) -> bool:
            return token < 0 or (vocab_size is not None and token >= vocab_size)

        for i, token in enumerate(eos):
            if bad(token):
                raise ValueError(f"eos_ids[{i}] = {token}: token ids must be >= 0{limit}")
        for i, seq in enumerate(seqs):
            if not seq:
                raise ValueError(f"stop_sequences[{i}] is empty")
            for j, token in enumerate(seq):
                if bad(token):
                    raise ValueError(
                        f"stop_sequences[{i}][{j}] = {token}: token ids must be >= 0{limit}"
                    )
        return cls(eos_ids=eos, stop_sequences=seqs)

    @property
    def window(self) -> int:
        """M: how many trailing generated tokens a row keeps for matching (0 without sequences)."""
        return max((len(s) for s in self.stop_sequences), default=0)

    def arrays(self) -> StopArrays:
        """The criteria as arrays: eos_ids [E] and the right-aligned stop table [S, M]."""
        table = np.full((len(self.stop_sequences), self.window), _WILDCARD, np.int32)
        for i, seq in enumerate(self.stop_sequences):
            table[i, self.window - len(seq) :] = seq
        return StopArrays(eos_ids=np.asarray(self.eos_ids, np.int32).reshape(-1), table=table)


@flax.struct.dataclass
class StopArrays:
    """Stop criteria as jit arguments: new ids of the same counts never recompile.

    Attributes:
      eos_ids: [E] int32.
      table: [S, M] int32 stop sequences, right-aligned behind a wildcard.
    """

    eos_ids: jax.Array
    table: jax.Array

    @property
    def window(self) -> int:
        return self.table.shape[1]

    def initial_window(self, num_rows: int) -> jax.Array:
        """[N, M] int32 window of a row that has generated nothing yet."""
        return jnp.full((num_rows, self.window), _EMPTY, jnp.int32)

    def update(
        self, window: jax.Array, tokens: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Appends this step's tokens and tests both criteria.

        Args:
          window: [N, M] last generated tokens (oldest first).
          tokens: [N] tokens generated now.

        Returns:
          new window [N, M]; is_eos [N] bool; ends_with_stop_sequence [N] bool.
        """
        is_eos = jnp.any(tokens[:, None] == self.eos_ids[None, :], axis=-1)
        if self.window == 0:
            return window, is_eos, jnp.zeros(tokens.shape, bool)
        window = jnp.concatenate([window[:, 1:], tokens[:, None]], axis=1)
        table = self.table[None, :, :]
        equal = (window[:, None, :] == table) | (table == _WILDCARD)
        return window, is_eos, jnp.any(jnp.all(equal, axis=-1), axis=-1)
