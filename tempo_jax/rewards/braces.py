"""One brace scanner for LaTeX answers: grouping depth with backslash escapes, in one pass.

A backslash escapes the next character, so `\\{` and `\\}` (literal braces in a set) do not
count as grouping, while `\\\\` (a LaTeX line break) consumes both backslashes. The scan is
linear and iterative: it runs on untrusted model text (100 kB, 10^5 nested braces).
"""

from collections.abc import Iterator


def brace_depths(text: str, start: int = 0) -> Iterator[tuple[int, int]]:
    """Yields (index, depth after that character) for every unescaped character from `start`.

    Backslashes and the characters they escape are skipped (not yielded).
    """
    depth = 0
    i = start
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        yield i, depth
        i += 1


def match_braced(text: str, open_index: int) -> int | None:
    """Index just past the `}` closing the `{` at `open_index`, or None if unbalanced."""
    for i, depth in brace_depths(text, open_index):
        if depth == 0:
            return i + 1
    return None
