"""Chat templates: the Jinja source shipped with a checkpoint, rendered in a sandbox.

A checkpoint's template is untrusted code, so it runs in jinja2's ImmutableSandboxedEnvironment
(no attribute access to Python internals, no mutation of the values passed in). The environment
mirrors what HF checkpoints are written against: `trim_blocks`/`lstrip_blocks`, loop controls,
a `tojson` that keeps non-ASCII text as is, `raise_exception`, `strftime_now`, and a `generation`
block tag (used by some templates to mark assistant text; here it only renders its body).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: renders the body unchanged."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller) -> str:
        return caller()


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # Jinja's own tojson escapes HTML characters (<, >, &), which would change prompts.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


class ChatTemplate:
    """A compiled chat template.

    Args:
      source: the Jinja source (the `chat_template` of tokenizer_config.json or
        chat_template.jinja).
      origin: where the source came from, for error messages.
    """

    def __init__(self, source: str, origin: str = "<chat template>"):
        if not isinstance(source, str) or not source.strip():
            raise ValueError(f"{origin}: chat template is empty or not a string")
        self.source = source
        self.origin = origin
        try:
            self._template = _environment().from_string(source)
        except jinja2.exceptions.TemplateSyntaxError as e:
            raise ValueError(f"{origin}: chat template does not parse: {e}") from e

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        special_tokens: Mapping[str, str] | None = None,
        **variables: Any,
    ) -> str:
        """Renders a conversation.

        Args:
          messages: [{"role": ..., "content": ...}, ...].
          add_generation_prompt: end with the header that opens the assistant's turn.
          special_tokens: bos_token, eos_token, ... as the template expects them (text).
          **variables: extra template variables (e.g. enable_thinking=False for Qwen3).

        Returns:
          The prompt text, special tokens written out as text.
        """
        context = dict(special_tokens or {})
        context.update(variables)
        context["messages"] = [dict(m) for m in messages]
        context["add_generation_prompt"] = add_generation_prompt
        context.setdefault("tools", None)
        context.setdefault("documents", None)
        try:
            return self._template.render(**context)
        except jinja2.exceptions.TemplateError as e:
            raise ValueError(f"{self.origin}: chat template failed to render: {e}") from e
