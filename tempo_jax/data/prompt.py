"""Prompt templates: how a question becomes the token ids the policy is conditioned on."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from tempo_jax.data.chat_template import ChatTemplate
from tempo_jax.data.tokenizer import Tokenizer

_PLACEHOLDER = "{question}"


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """How prompts are written.

    Attributes:
      kind: "plain" (the template is the whole prompt) or "chat" (the template is the user message,
        rendered through a chat template with the generation prompt appended).
      template: text with `{question}`, substituted literally (no other braces are interpreted, so
        LaTeX such as `\\boxed{}` needs no escaping).
      system: chat only: a system message ('' = none).
      add_bos: plain only: start with the tokenizer's BOS when it has one.
      chat_template: chat only: Jinja source that replaces the tokenizer's template ('' = use the
        tokenizer's).
      chat_template_kwargs: chat only: extra template variables (e.g. {"enable_thinking": False}).
    """

    kind: str = "plain"
    template: str = "{question}\n"
    system: str = ""
    add_bos: bool = True
    chat_template: str = ""
    chat_template_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in ("plain", "chat"):
            raise ValueError(f"PromptConfig.kind must be 'plain' or 'chat', got {self.kind!r}")
        if _PLACEHOLDER not in self.template:
            raise ValueError(
                f"PromptConfig.template must contain {_PLACEHOLDER}, got {self.template!r}"
            )


class PromptFormatter:
    """Renders and encodes prompts for one tokenizer.

    Args:
      tokenizer: the policy's tokenizer.
      config: the prompt config.
    """

    def __init__(self, tokenizer: Tokenizer, config: PromptConfig):
        self.tokenizer = tokenizer
        self.config = config
        self._chat: ChatTemplate | None = None
        if config.kind == "chat":
            if config.chat_template:
                self._chat = ChatTemplate(config.chat_template, origin="PromptConfig.chat_template")
            elif tokenizer.chat_template is not None:
                self._chat = tokenizer.chat_template
            else:
                raise ValueError(
                    "PromptConfig.kind='chat' but the tokenizer has no chat template and "
                    "PromptConfig.chat_template is empty"
                )

    def text(self, question: str) -> str:
        """The prompt as text (special tokens of a chat template written out)."""
        user = self.config.template.replace(_PLACEHOLDER, question)
        if self._chat is None:
            return user
        messages = []
        if self.config.system:
            messages.append({"role": "system", "content": self.config.system})
        messages.append({"role": "user", "content": user})
        return self._chat.render(
            messages,
            add_generation_prompt=True,
            special_tokens=self.tokenizer.special_tokens(),
            **dict(self.config.chat_template_kwargs),
        )

    def encode(self, question: str) -> list[int]:
        """Prompt token ids: BOS (plain prompts, if configured) + the encoded text."""
        ids = self.tokenizer.encode(self.text(question))
        if self._chat is None and self.config.add_bos and self.tokenizer.bos_id is not None:
            ids = [self.tokenizer.bos_id, *ids]
        return ids
