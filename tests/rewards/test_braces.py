"""The one brace scanner that extraction and normalisation share."""

from tempo_jax.rewards.braces import brace_depths, match_braced


def test_match_braced_skips_escaped_braces_and_line_breaks():
    text = r"x{a\{b\}c{d}\\}tail"
    assert match_braced(text, 1) == text.index("tail")
    assert match_braced("{{}", 0) is None
    assert match_braced(r"{\}", 0) is None


def test_brace_depths_yields_unescaped_characters_only():
    assert list(brace_depths(r"{\{}")) == [(0, 1), (3, 0)]
    deep = "{" * 100_000 + "}" * 100_000
    assert match_braced(deep, 0) == len(deep)
