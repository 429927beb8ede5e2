"""Prompt-length buckets: a few fixed prompt widths, so the sampler compiles a known few times.

A call's prompts are left-padded (on the host, in numpy) to the smallest bucket that holds its
longest prompt; every call with the same (prompts, n, bucket) shape reuses one executable. The
default buckets are the powers of two from `min_bucket` up to, and ending with,
`max_prompt_length` (e.g. 16, 32, 64, 100 for 100): at most 2x prefill padding, log2 compiles.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def default_buckets(max_prompt_length: int, min_bucket: int = 16) -> tuple[int, ...]:
    """Powers of two >= min_bucket below max_prompt_length, then max_prompt_length itself."""
    if max_prompt_length < 1:
        raise ValueError(f"max_prompt_length must be >= 1, got {max_prompt_length}")
    buckets = []
    size = min_bucket
    while size < max_prompt_length:
        buckets.append(size)
        size *= 2
    buckets.append(max_prompt_length)
    return tuple(buckets)


def check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    """Sorted, de-duplicated positive bucket sizes; raises ValueError otherwise."""
    out = tuple(sorted({int(b) for b in buckets}))
    if not out or out[0] < 1:
        raise ValueError(f"prompt_buckets must be positive ints, got {tuple(buckets)}")
    return out


def choose_bucket(longest: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= longest (buckets sorted)."""
    for size in buckets:
        if size >= longest:
            return size
    raise ValueError(
        f"a prompt has {longest} tokens, more than the largest prompt bucket {buckets[-1]} "
        "(max_prompt_length); truncate prompts before sampling"
    )


def prompt_lengths(prompt_tokens: np.ndarray, prompt_mask: np.ndarray, vocab_size: int):
    """Validates a left-padded prompt batch and returns its lengths [B].

    Raises:
      ValueError: naming the first bad row: shapes differ, a mask that is not 0...0 1...1
        (left padding), an empty prompt, or a token id outside [0, vocab_size) under the mask.
    """
    if prompt_tokens.ndim != 2 or prompt_tokens.shape != prompt_mask.shape:
        raise ValueError(
            f"prompt_tokens {prompt_tokens.shape} and prompt_mask {prompt_mask.shape} must be "
            "equal [B, T] shapes"
        )
    if prompt_tokens.shape[0] == 0:
        raise ValueError("no prompts (B = 0)")
    mask = prompt_mask.astype(bool)
    lengths = mask.sum(axis=1)
    not_left_padded = np.any(mask[:, :-1] & ~mask[:, 1:], axis=1)
    if np.any(not_left_padded):
        row = int(np.argmax(not_left_padded))
        raise ValueError(
            f"prompt row {row}: prompt_mask {prompt_mask[row].tolist()} is not left-padded "
            "(all padding must come before the first prompt token)"
        )
    if np.any(lengths == 0):
        raise ValueError(f"prompt row {int(np.argmin(lengths))}: empty prompt (mask all 0)")
    bad_ids = mask & ((prompt_tokens < 0) | (prompt_tokens >= vocab_size))
    if np.any(bad_ids):
        row, col = (int(i) for i in np.argwhere(bad_ids)[0])
        raise ValueError(
            f"prompt row {row}, column {col}: token id {prompt_tokens[row, col]} is outside "
            f"[0, vocab_size={vocab_size})"
        )
    return lengths


def left_pad_to(
    prompt_tokens: np.ndarray, prompt_mask: np.ndarray, width: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-pads a validated left-padded batch [B, T] to [B, width] (every prompt fits in width).

    Returns:
      tokens [B, width] int32 (pad_id on padding) and mask [B, width] int32.
    """
    batch, current = prompt_tokens.shape
    tokens = np.full((batch, width), pad_id, np.int32)
    mask = np.zeros((batch, width), np.int32)
    keep = min(width, current)
    tokens[:, width - keep :] = prompt_tokens[:, current - keep :]
    mask[:, width - keep :] = prompt_mask[:, current - keep :]
    tokens[mask == 0] = pad_id
    return tokens, mask
