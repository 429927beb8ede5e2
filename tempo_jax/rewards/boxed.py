"""Extraction of the final answer box from a model response.

Linear-time scans only: this runs in the training process on untrusted model text, so a 100 kB
response or 10^5 nested braces must cost a single pass and no recursion.
"""

import collections
import re

from tempo_jax.rewards.braces import match_braced

# `\boxed` / `\fbox` as whole command names (not `\fboxsep`, `\boxedanswer`).
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _box_content(text: str, command_end: int) -> str | None:
    """Content of the box whose command name ends at `command_end`."""
    i = command_end
    n = len(text)
    while i < n and text[i] in " \t":
        i += 1
    if i < n and text[i] == "{":
        end = match_braced(text, i)
        if end is None:
            return None
        return text[i + 1 : end - 1]
    if i == command_end:
        # `\boxed5` is not LaTeX for a box; `\boxed` glued to anything but `{` is malformed.
        return None
    # `\boxed 5`: some models write a single unbraced token; it runs to the next whitespace or `$`.
    start = i
    while i < n and not text[i].isspace() and text[i] != "$":
        i += 1
    return text[start:i] if i > start else None


def extract_boxed(text: str) -> str | None:
    """Content of the LAST `\\boxed{...}` or `\\fbox{...}` in `text`, nested braces matched.

    Also accepts `\\boxed 42` (the command, spaces, then one token up to the next whitespace or
    `$`), a form some models emit. Returns None when there is no box or when the last box is
    malformed (unbalanced braces, nothing after the command); an earlier well-formed box does not
    rescue a malformed last one, because the last box is the model's final answer.
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_boxed expects str, got {type(text).__name__}")
    last = collections.deque(_BOX_COMMAND.finditer(text), maxlen=1)
    last = last[0] if last else None
    if last is None:
        return None
    return _box_content(text, last.end())


def unbox_ground_truth(ground_truth: str) -> str:
    """The ground truth with a surrounding box removed (datasets store both `42` and `\\boxed{42}`).

    A ground truth that contains a well-formed box is replaced by the box's content; otherwise it
    is returned stripped, unchanged.
    """
    if "\\boxed" in ground_truth or "\\fbox" in ground_truth:
        content = extract_boxed(ground_truth)
        if content is not None:
            return content.strip()
    return ground_truth.strip()
