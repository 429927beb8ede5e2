"""The `tempo_oracle` controls' reward: D_U's hidden-answer score, flipped per row with a known
probability, and what that reward measures.

A reward whose rows are flipped independently with probability p has, in expectation, a
within-question AUROC of exactly 1 - p against the true outcome: in a question with right and
wrong answers, a right one outranks a wrong one with probability (1 - p)^2 and ties with it with
probability 2p(1 - p) (counted 1/2), which sums to 1 - p. So sweeping p gives rewards of known
quality for the critic-quality curve (README, "Controls"); the loop logs the measured value.

The flips are a function of (seed, row index) only, so a resumed run draws the same flips, and
the flips at a larger p include those at a smaller one (one uniform per row, compared with p).
"""

from __future__ import annotations

import numpy as np

from tempo_jax.rewards import eval_metrics

# Separates the flip stream from the sampler's, which draws from the same per-phase seed.
_FLIP_STREAM = 0x0F11


def flip_mask(seed: int, num_rows: int, prob: float) -> np.ndarray:
    """[num_rows] bool: which rows' rewards flip, each independently with probability `prob`.

    Args:
      seed: a per-(run seed, step, phase, attempt) integer (`phases.step_seed`).
      num_rows: N rows of the batch; row i's flip depends only on (seed, i).
      prob: flip probability in [0, 1].
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"flip probability must be in [0, 1], got {prob}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _FLIP_STREAM]))
    return rng.random(num_rows) < prob


def flipped_rewards(
    rewards: np.ndarray, rows: np.ndarray, seed: int, prob: float
) -> tuple[np.ndarray, np.ndarray]:
    """±1 `rewards` [N] with the rows selected by `rows` [N] bool flipped with probability `prob`
    (other rows unchanged). Returns (rewards, flipped [N] bool)."""
    flipped = flip_mask(seed, len(rewards), prob) & np.asarray(rows, bool)
    out = np.where(flipped, -np.asarray(rewards), rewards).astype(np.float32)
    return out, flipped


def reward_metrics(
    prefix: str,
    rewards: np.ndarray,
    correct: np.ndarray,
    group_ids: np.ndarray,
    flipped: np.ndarray,
) -> dict[str, float]:
    """What the reward the policy saw measures against the truth, over D_U rows [M]:
    `<prefix>/reward_auroc_within_question` (NaN when no question has both outcomes),
    `<prefix>/reward_auroc` (pooled) and `<prefix>/reward_flipped_fraction`."""
    return {
        f"{prefix}/reward_auroc_within_question": eval_metrics.within_group_auroc(
            rewards, correct, group_ids
        ),
        f"{prefix}/reward_auroc": eval_metrics.auroc(rewards, correct),
        f"{prefix}/reward_flipped_fraction": float(np.mean(flipped)) if len(flipped) else 0.0,
    }
