"""HF checkpoint tokenizers (Qwen3, OLMo3): tokenizer.json through the `tokenizers` package.

A checkpoint directory holds `tokenizer.json` (required), `tokenizer_config.json` (special tokens,
chat template), optionally `chat_template.jinja` (the newer place for the template; it wins over
the config entry, as in transformers) and `generation_config.json` (the ids generation stops on).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tokenizers

from tempo_jax.data.chat_template import ChatTemplate


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable JSON: {e}") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")  # noqa: TRY004
    return value


def _token_text(value: Any, path: str, field: str) -> str | None:
    """A special token as written in tokenizer_config.json: a string or an AddedToken dict."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str) or not value:
        raise ValueError(f"{path}: field {field!r} is not a token string: {value!r}")
    return value


def _id_list(value: Any, path: str, field: str) -> list[int]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"{path}: field {field!r} must be a token id or a list of ids: {value!r}")
    return list(values)


def _chat_template_source(directory: str, config: dict[str, Any]) -> tuple[str, str] | None:
    jinja_path = os.path.join(directory, "chat_template.jinja")
    if os.path.exists(jinja_path):
        with open(jinja_path, encoding="utf-8") as f:
            return f.read(), jinja_path
    config_path = os.path.join(directory, "tokenizer_config.json")
    template = config.get("chat_template")
    if template is None:
        return None
    if isinstance(template, list):  # several named templates: use "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if "default" not in named:
            raise ValueError(
                f"{config_path}: 'chat_template' lists templates {sorted(map(str, named))} "
                "but none is named 'default'"
            )
        template = named["default"]
    if not isinstance(template, str):
        raise ValueError(f"{config_path}: 'chat_template' must be a string")  # noqa: TRY004
    return template, config_path


class HFTokenizer:
    """A checkpoint's tokenizer behind the `Tokenizer` interface.

    Build with `HFTokenizer.from_directory(path)`.

    Attributes:
      chat_template: the checkpoint's template (None if it ships none).
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        eos_token: str | None,
        bos_token: str | None,
        pad_token: str | None,
        generation_eos_ids: Sequence[int] = (),
        generation_pad_id: int | None = None,
        chat_template: ChatTemplate | None = None,
        origin: str = "<tokenizer.json>",
    ):
        self._tok = tokenizer
        self.origin = origin
        self.chat_template = chat_template
        self.vocab_size = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1

        def token_id(text: str | None, field: str) -> int | None:
            if text is None:
                return None
            i = tokenizer.token_to_id(text)
            if i is None:
                raise ValueError(f"{origin}: {field} {text!r} is not in the vocabulary")
            return int(i)

        eos_ids = []
        config_eos = token_id(eos_token, "eos_token")
        for i in ([config_eos] if config_eos is not None else []) + list(generation_eos_ids):
            if i not in eos_ids:
                eos_ids.append(int(i))
        if not eos_ids:
            raise ValueError(
                f"{origin}: no end-of-sequence token (eos_token in tokenizer_config.json or "
                "eos_token_id in generation_config.json)"
            )
        for i in eos_ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"{origin}: eos id {i} outside [0, {self.vocab_size})")
        self.eos_ids = tuple(eos_ids)
        self.eos_id = self.eos_ids[0]
        self.bos_id = token_id(bos_token, "bos_token")
        pad = token_id(pad_token, "pad_token")
        if pad is None:
            pad = generation_pad_id
        self.pad_id = int(pad) if pad is not None else self.eos_id
        # As transformers does: the template sees the tokens the config names, nothing inferred.
        self._special_text = {
            "bos_token": bos_token,
            "eos_token": eos_token,
            "pad_token": pad_token,
        }

    @classmethod
    def from_directory(cls, directory: str | os.PathLike) -> HFTokenizer:
        """Loads tokenizer.json, tokenizer_config.json, chat template and generation config."""
        directory = os.fspath(directory)
        tok_path = os.path.join(directory, "tokenizer.json")
        if not os.path.exists(tok_path):
            raise ValueError(
                f"{directory}: no tokenizer.json (only tokenizer.json checkpoints load)"
            )
        try:
            tok = tokenizers.Tokenizer.from_file(tok_path)
        except Exception as e:  # the Rust side raises its own exception type
            raise ValueError(f"{tok_path}: cannot load: {e}") from e
        cfg_path = os.path.join(directory, "tokenizer_config.json")
        gen_path = os.path.join(directory, "generation_config.json")
        config = _read_json(cfg_path)
        generation = _read_json(gen_path)
        model_config = _read_json(os.path.join(directory, "config.json"))
        generation_eos = _id_list(generation.get("eos_token_id"), gen_path, "eos_token_id")
        if not generation_eos:  # older checkpoints keep it only in config.json
            generation_eos = _id_list(model_config.get("eos_token_id"), directory, "eos_token_id")
        generation_pad = _id_list(generation.get("pad_token_id"), gen_path, "pad_token_id")
        source = _chat_template_source(directory, config)
        return cls(
            tok,
            eos_token=_token_text(config.get("eos_token"), cfg_path, "eos_token"),
            bos_token=_token_text(config.get("bos_token"), cfg_path, "bos_token"),
            pad_token=_token_text(config.get("pad_token"), cfg_path, "pad_token"),
            generation_eos_ids=generation_eos,
            generation_pad_id=generation_pad[0] if generation_pad else None,
            chat_template=ChatTemplate(*source) if source else None,
            origin=directory,
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens (the post-processor is not applied)."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, special tokens skipped."""
        return self.decode_batch([ids])[0]

    def decode_batch(self, rows: Sequence[Sequence[int]]) -> list[str]:
        """`decode` of each row, in one call into the (Rust, multi-threaded) tokenizers library."""
        rows = [np.asarray(row, np.int64).reshape(-1).tolist() for row in rows]
        return self._tok.decode_batch(rows, skip_special_tokens=True)

    def special_tokens(self) -> dict[str, str]:
        """bos_token / eos_token / pad_token named by tokenizer_config.json, for chat templates."""
        return {k: v for k, v in self._special_text.items() if v is not None}
