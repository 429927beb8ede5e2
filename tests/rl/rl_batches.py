"""Random RL batches for the tempo_jax.rl tests, plus the padding helper.

Batches have prefix response masks with lengths 1..L, uneven prompt groups (always at least one
singleton) with non-contiguous ids in [0, N), random labeled flags and random keep masks. Masked
positions hold garbage (inf, NaN, huge numbers): a result that read them would not match the
references, which only ever look at response tokens.
"""

import dataclasses

import numpy as np

GARBAGE = np.array([np.inf, -np.inf, np.nan, 1e30, -1e30, 7.5], np.float32)


@dataclasses.dataclass
class Batch:
    values: np.ndarray  # [N, L] float32
    old_values: np.ndarray  # [N, L] float32
    returns: np.ndarray  # [N, L] float32
    logprobs: np.ndarray  # [N, L] float32
    old_logprobs: np.ndarray  # [N, L] float32 (GSPO scale: within ~1e-3 of logprobs)
    ppo_old_logprobs: np.ndarray  # [N, L] float32 (PPO scale: within ~0.5)
    advantages: np.ndarray  # [N, L] float32
    mask: np.ndarray  # [N, L] bool
    scores: np.ndarray  # [N] float32 in {-1, +1}
    is_labeled: np.ndarray  # [N] bool
    group_ids: np.ndarray  # [N] int32
    keep: np.ndarray  # [N] bool

    @property
    def lengths(self) -> np.ndarray:
        return self.mask.sum(-1)


def group_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uneven groups of 1..4 rows (the first a singleton), ids scattered in [0, n), shuffled."""
    sizes = [1]
    while sum(sizes) < n:
        sizes.append(int(rng.integers(1, 5)))
    sizes[-1] -= sum(sizes) - n
    ids = rng.choice(n, size=len(sizes), replace=False)
    out = np.repeat(ids, sizes).astype(np.int32)
    rng.shuffle(out)
    return out


def make_batch(seed: int, n: int = 12, length: int = 7) -> Batch:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, length + 1, n)
    lengths[0] = 1  # always one single-token response
    mask = np.arange(length)[None, :] < lengths[:, None]

    def tokens(x):
        x = np.asarray(x, np.float32)
        return np.where(mask, x, rng.choice(GARBAGE, size=x.shape)).astype(np.float32)

    logprobs = -np.abs(rng.normal(1.0, 0.5, (n, length)))
    return Batch(
        values=tokens(rng.normal(0.0, 1.2, (n, length))),
        old_values=tokens(rng.normal(0.0, 1.2, (n, length))),
        returns=tokens(rng.choice([-1.0, 1.0], n)[:, None] * np.ones((n, length))),
        logprobs=tokens(logprobs),
        old_logprobs=tokens(logprobs + rng.normal(0.0, 8e-4, (n, length))),
        ppo_old_logprobs=tokens(logprobs + rng.normal(0.0, 0.3, (n, length))),
        advantages=tokens(rng.normal(0.0, 1.0, (n, length))),
        mask=mask,
        scores=rng.choice([-1.0, 1.0], n).astype(np.float32),
        is_labeled=rng.random(n) < 0.5,
        group_ids=group_ids(rng, n),
        keep=rng.random(n) < 0.8,
    )


def pad(x: np.ndarray, extra: int, seed: int = 0) -> np.ndarray:
    """Appends `extra` positions of garbage (or False, for masks) along the last axis."""
    rng = np.random.default_rng(seed)
    if x.dtype == bool:
        return np.concatenate([x, np.zeros(x.shape[:-1] + (extra,), bool)], axis=-1)
    filler = rng.choice(GARBAGE, size=x.shape[:-1] + (extra,)).astype(x.dtype)
    return np.concatenate([x, filler], axis=-1)
