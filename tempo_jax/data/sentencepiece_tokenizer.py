"""SentencePiece tokenizers: load a `.model`, or train a small one for the built-in task."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from tempo_jax.data.chat_template import ChatTemplate

# Ids of a model trained here. pad is 0 so that zero-filled arrays are padding.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
_BYTE_PIECES = 256


class SentencePieceTokenizer:
    """A SentencePiece model behind the `Tokenizer` interface.

    Args:
      model_proto: the serialized model (the bytes of a `.model` file).
      origin: where it came from, for error messages.
      chat_template: optional chat template (SentencePiece models ship none).
    """

    def __init__(
        self,
        model_proto: bytes,
        origin: str = "<sentencepiece model>",
        chat_template: ChatTemplate | None = None,
    ):
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError) as e:
            raise ValueError(f"{origin}: not a SentencePiece model: {e}") from e
        self.model_proto = bytes(model_proto)
        self.origin = origin
        self.chat_template = chat_template
        self.vocab_size = int(self._sp.get_piece_size())
        eos = self._sp.eos_id()
        if eos < 0:
            raise ValueError(f"{origin}: the model defines no end-of-sequence piece")
        self.eos_id = int(eos)
        self.eos_ids = (self.eos_id,)
        bos = self._sp.bos_id()
        self.bos_id = int(bos) if bos >= 0 else None
        pad = self._sp.pad_id()
        # Many released models have no pad piece; padding is masked out, so eos serves.
        self.pad_id = int(pad) if pad >= 0 else self.eos_id
        self._is_special = np.zeros(self.vocab_size, bool)
        self._is_special[[i for i in (self.bos_id, self.eos_id, self.pad_id) if i is not None]] = (
            True
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> SentencePieceTokenizer:
        """Loads a `.model` file."""
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                proto = f.read()
        except OSError as e:
            raise ValueError(f"cannot read SentencePiece model {path}: {e}") from e
        return cls(proto, origin=path)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the model as a `.model` file."""
        with open(path, "wb") as f:
            f.write(self.model_proto)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""
        return list(self._sp.encode(text, out_type=int))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; pad / bos / eos are left out."""
        return self.decode_batch([ids])[0]

    def decode_batch(self, rows: Sequence[Sequence[int]]) -> list[str]:
        """`decode` of each row; SentencePiece decodes the batch in one call."""
        kept = []
        for row in rows:
            ids = np.asarray(row, np.int64).reshape(-1)
            outside = (ids < 0) | (ids >= self.vocab_size)
            if outside.any():
                raise ValueError(
                    f"{self.origin}: token id {ids[outside][0]} outside [0, {self.vocab_size})"
                )
            kept.append(ids[~self._is_special[ids]].tolist())
        return self._sp.decode(kept) if kept else []

    def id_to_piece(self, i: int) -> str:
        """The piece of id `i` (for debugging and tests)."""
        return self._sp.id_to_piece(int(i))

    def special_tokens(self) -> dict[str, str]:
        """bos_token / eos_token / pad_token as piece text, for chat templates."""
        out = {
            "eos_token": self.id_to_piece(self.eos_id),
            "pad_token": self.id_to_piece(self.pad_id),
        }
        if self.bos_id is not None:
            out["bos_token"] = self.id_to_piece(self.bos_id)
        return out


def train_sentencepiece(
    lines: Iterable[str],
    *,
    vocab_size: int = 320,
    model_type: str = "bpe",
    user_defined_symbols: Sequence[str] = (),
) -> SentencePieceTokenizer:
    """Trains a small SentencePiece model in memory.

    Settings chosen for reasoning text: digits are always split into single pieces (so arithmetic
    is learnable digit by digit), unknown characters fall back to UTF-8 bytes (so any text
    round-trips), normalisation is the identity and whitespace is kept as is (LaTeX and newlines
    survive), no dummy prefix (so encode(a) + encode(b) == encode(a + b) at a line start), and
    pad=0, unk=1, bos=2, eos=3.

    Args:
      lines: the training text, one sentence per item (items may contain newlines).
      vocab_size: the target vocabulary size; at least 256 byte pieces + 4 specials + the corpus
        characters. A small corpus may stop short of it (the size is then what the corpus allows).
      model_type: "bpe" or "unigram".
      user_defined_symbols: strings always kept as one piece.

    Returns:
      The trained tokenizer.
    """
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    minimum = _BYTE_PIECES + 4 + len(user_defined_symbols)
    if vocab_size <= minimum:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: byte fallback alone needs {_BYTE_PIECES} "
            "pieces "
            f"+ 4 special ids{' + user symbols' if user_defined_symbols else ''} (> {minimum})"
        )
    sentences = [line for line in lines if line]
    if not sentences:
        raise ValueError("train_sentencepiece: the corpus is empty")
    out = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=out,
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,
            split_digits=True,
            character_coverage=1.0,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            hard_vocab_limit=False,
            user_defined_symbols=list(user_defined_symbols),
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise ValueError(f"SentencePiece training failed: {e}") from e
    return SentencePieceTokenizer(out.getvalue(), origin="<trained in memory>")
