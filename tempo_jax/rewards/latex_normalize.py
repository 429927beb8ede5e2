"""Hendrycks-MATH style normalisation of an extracted answer to a canonical string.

`normalize_answer` maps surface variants of one answer to one string: `\\dfrac12`, `\\frac{1}{2}`
and `1/2` all become `\\frac{1}{2}`; `90^\\circ`, `10\\%`, `\\$5`, `5\\text{ cm}`, `x = 3`,
`\\text{(A)}`, `1,000`, `2.50` lose their decoration. Equal normalised strings count as the same
answer; the parser-based checks (equivalence.py) work on these strings too.

Runs in the training process on untrusted text, so every step is a single pass or a regex without
nested quantifiers; strings longer than `MAX_NORMALIZE_CHARS` only lose their whitespace.
"""

import re

from tempo_jax.rewards.braces import brace_depths, match_braced

MAX_NORMALIZE_CHARS = 4000
# Deeper brace nesting than this is left as is: no real answer nests 100 levels.
_MAX_FIX_DEPTH = 100
# Units decorate short answers; the unit regexes backtrack quadratically in the worst case.
_MAX_UNIT_CHARS = 200

_UNICODE = {
    "\u2212": "-",  # minus sign
    "\u2013": "-",
    "\u00d7": "\\times ",
    "\u00b7": "\\cdot ",
    "\u03c0": "\\pi ",
    "\u221e": "\\infty ",
    "\u221a": "\\sqrt",
    "\u2264": "\\le ",
    "\u2265": "\\ge ",
    "\u2260": "\\ne ",
    "\u00b0": "",  # degree sign
    "\u00a0": " ",
}
_COMMAND_ALIASES = [
    (re.compile(r"\\[dtc]frac(?![A-Za-z])"), r"\\frac"),
    (re.compile(r"\\[dt]binom(?![A-Za-z])"), r"\\binom"),
    (re.compile(r"\\(?:leq|leqslant)(?![A-Za-z])"), r"\\le"),
    (re.compile(r"\\(?:geq|geqslant)(?![A-Za-z])"), r"\\ge"),
    (re.compile(r"\\neq(?![A-Za-z])"), r"\\ne"),
    (re.compile(r"\\(?:left|right|[bB]ig{1,2}[lr]?)(?:\.|(?![A-Za-z]))"), ""),
    (re.compile(r"\\(?:displaystyle|textstyle)(?![A-Za-z])"), ""),
]
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])|\\degree(?![A-Za-z])")
_THIN_SPACES = re.compile(r"\\[,;: ]|~|\\quad(?![A-Za-z])|\\qquad(?![A-Za-z])")
_TEXT_COMMANDS = (
    "text",
    "textbf",
    "textit",
    "textrm",
    "textnormal",
    "mbox",
    "mathrm",
    "mathbf",
    "mathit",
    "boldsymbol",
    "operatorname",
)
_TEXT_COMMAND = re.compile(r"\\(" + "|".join(_TEXT_COMMANDS) + r")\s*\{")
# A trailing `\text{ cm}` / `\mbox{square feet}^2` after something else is a unit.
_TRAILING_TEXT_UNIT = re.compile(
    r"\\(?:text|textrm|textnormal|mbox|mathrm)\s*\{\s*([A-Za-z][A-Za-z .]*)\}"
    r"\s*(?:\^\s*\{?\s*[23]\s*\}?)?\s*\.?\s*$"
)
_SINGLE_LETTER_UNITS = frozenset("mgsLhKNJWV")
# A plain number followed by unit words: `5 cm`, `12 square feet`, `3 dollars`.
_TRAILING_WORD_UNIT = re.compile(
    r"^([-+]?[\d.,]*\d(?:\s*/\s*\d+)?)\s*([A-Za-z]{2,}(?:\s+[A-Za-z]+)*)"
    r"(?:\s*\^\s*\{?\s*[23]\s*\}?)?\s*\.?$"
)
_NOT_UNITS = frozenset({"pi", "sqrt", "infty", "and", "or"})
_COMMAND_THEN_LETTER = re.compile(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])")
_WHITESPACE = re.compile(r"\s+")
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_ASSIGNED_VARIABLE = re.compile(r"^(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?[A-Za-z0-9]+\}?)?$")
_CHOICE = re.compile(r"^\(([A-Z])\)$")
_INT_SLASH_INT = re.compile(r"^(-?)(\d+)/(\d+)$")
_DECIMAL = re.compile(r"(?<![\d.])(\d*)\.(\d+)(?![\d.])")
_COMMAND_NAME = re.compile(r"\\([A-Za-z]+|.)")


def _replace_text_commands(s: str) -> str:
    """`\\text{abc}` -> `abc` for every text-like command, braces matched."""
    for _ in range(len(s)):  # each round removes one command; bounded by the string length
        m = _TEXT_COMMAND.search(s)
        if m is None:
            return s
        open_index = m.end() - 1
        end = match_braced(s, open_index)
        if end is None:
            return s
        s = s[: m.start()] + s[open_index + 1 : end - 1] + s[end:]
    return s


def _strip_trailing_units(s: str) -> str:
    if len(s) > _MAX_UNIT_CHARS:
        return s
    m = _TRAILING_TEXT_UNIT.search(s)
    if m is not None and s[: m.start()].strip():
        word = m.group(1).strip()
        letters = sum(c.isalpha() for c in word)
        if letters >= 2 or word in _SINGLE_LETTER_UNITS:
            s = s[: m.start()].rstrip()
    m = _TRAILING_WORD_UNIT.match(s)
    if m is not None and m.group(2).split()[0].lower() not in _NOT_UNITS:
        s = m.group(1)
    return s


def _take_token(s: str, i: int) -> tuple[str, int]:
    """One LaTeX token at `s[i]`: a `\\command` name or a single character."""
    if s[i] == "\\":
        m = _COMMAND_NAME.match(s, i)
        if m is not None:
            return m.group(0), m.end()
    return s[i], i + 1


_ARG_COUNTS = {"frac": 2, "binom": 2, "sqrt": 1}


def _brace_arguments(s: str, depth: int = 0) -> str:
    """Braces around every argument of `\\frac`, `\\binom`, `\\sqrt`, `^`, `_`.

    `\\frac12` -> `\\frac{1}{2}`, `\\sqrt2` -> `\\sqrt{2}`, `x^2` -> `x^{2}`; braced arguments are
    normalised recursively. Unbalanced input is returned as far as it could be read.
    """
    if depth > _MAX_FIX_DEPTH:
        return s
    out: list[str] = []
    i = 0
    n = len(s)
    while i < n:
        ch = s[i]
        if ch == "\\":
            token, i = _take_token(s, i)
            out.append(token)
            nargs = _ARG_COUNTS.get(token[1:], 0)
            if token == "\\sqrt" and i < n and s[i] == "[":
                close = s.find("]", i)
                if close < 0:
                    out.append(s[i:])
                    return "".join(out)
                out.append("[" + _brace_arguments(s[i + 1 : close], depth + 1) + "]")
                i = close + 1
        elif ch in "^_":
            out.append(ch)
            i += 1
            nargs = 1
        else:
            out.append(ch)
            i += 1
            continue
        for _ in range(nargs):
            if i >= n:
                break
            if s[i] == "{":
                end = match_braced(s, i)
                if end is None:
                    out.append(s[i:])
                    return "".join(out)
                out.append("{" + _brace_arguments(s[i + 1 : end - 1], depth + 1) + "}")
                i = end
            else:
                token, i = _take_token(s, i)
                out.append("{" + token + "}")
    return "".join(out)


def _canonical_decimal(m: re.Match) -> str:
    whole, frac = m.group(1), m.group(2).rstrip("0")
    whole = whole or "0"
    return f"{whole}.{frac}" if frac else whole


def strip_outer_braces(s: str) -> str:
    """`{{5}}` -> `5`: braces that wrap the whole string carry no meaning. One pass."""
    n = len(s)
    k = min(n - len(s.lstrip("{")), n - len(s.rstrip("}")), n // 2)
    if k == 0:
        return s
    depth = 0
    lowest = k
    for i, depth in brace_depths(s):
        if k <= i < n - k:
            lowest = min(lowest, depth)
    if depth != 0:
        return s
    return s[lowest : n - lowest] if lowest > 0 else s


def normalize_answer(answer: str) -> str:
    """Canonical string for an extracted answer (Hendrycks-MATH normalisation, extended).

    Args:
      answer: the content of a box or a ground-truth answer, without the box.

    Returns:
      The normalised string; `""` for an empty answer.
    """
    s = answer.replace("\x00", "").strip()
    if len(s) > MAX_NORMALIZE_CHARS:
        return _WHITESPACE.sub("", s)
    for old, new in _UNICODE.items():
        s = s.replace(old, new)
    s = s.replace("\\!", "").replace("{,}", ",")
    for pattern, new in _COMMAND_ALIASES:
        s = pattern.sub(new, s)
    s = _DEGREES.sub("", s)
    s = _THIN_SPACES.sub(" ", s)
    s = _strip_trailing_units(s)
    s = _replace_text_commands(s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = _strip_trailing_units(s.strip())
    # Spaces are noise except between a command name and a following letter (`\pi r`).
    s = _COMMAND_THEN_LETTER.sub("\\1\x00", s)
    s = _WHITESPACE.sub("", s).replace("\x00", " ")
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    if s.count("=") == 1:
        lhs, rhs = s.split("=")
        if _ASSIGNED_VARIABLE.match(lhs.strip()) and rhs.strip():
            s = rhs.strip()
    if len(s) > 1 and s.endswith(".") and not s.endswith("\\."):
        s = s[:-1]
    s = s.lstrip("+") if len(s) > 1 else s
    s = strip_outer_braces(s)
    m = _CHOICE.match(s)
    if m is not None:
        s = m.group(1)
    s = _brace_arguments(s)
    s = _DECIMAL.sub(_canonical_decimal, s)
    m = _INT_SLASH_INT.match(s)
    if m is not None:
        s = f"{m.group(1)}\\frac{{{m.group(2)}}}{{{m.group(3)}}}"
    return strip_outer_braces(s)


def after_last_equals(answer: str) -> str | None:
    """The text after the last top-level `=` (`f(2) = 5` -> `5`), or None when there is none."""
    index = answer.rfind("=")
    if index < 0:
        return None
    rhs = answer[index + 1 :].strip()
    return rhs or None
