"""The tokenizer interface every part of tempo_jax codes against."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from tempo_jax.data.chat_template import ChatTemplate


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids.

    `encode` never adds special tokens: a caller that wants a BOS adds `bos_id` itself (plain
    prompts), and chat templates write their own special tokens as text.

    Attributes:
      vocab_size: number of ids the tokenizer can produce (ids are in [0, vocab_size)).
      bos_id: beginning-of-sequence id, or None where the tokenizer has none (Qwen3).
      eos_id: the id a generated response ends with (the first of `eos_ids`).
      eos_ids: every id that ends generation (a chat model stops on end-of-turn and end-of-text).
      pad_id: the id used for padding; never attended to.
      chat_template: the checkpoint's chat template, or None.
    """

    vocab_size: int
    bos_id: int | None
    eos_id: int
    eos_ids: tuple[int, ...]
    pad_id: int
    chat_template: ChatTemplate | None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; special tokens (pad, bos, eos) are left out."""
        ...

    def decode_batch(self, rows: Sequence[Sequence[int]]) -> list[str]:
        """`decode` of each row, in one call into the tokenizer library."""
        ...

    def special_tokens(self) -> dict[str, str]:
        """Jinja variables for chat templates: bos_token, eos_token, pad_token as text.

        A token the tokenizer does not have is left out (undefined in the template), as in HF.
        """
        ...
