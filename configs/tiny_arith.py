"""CPU default: SFT -> critic warm-up -> TEMPO on the built-in arithmetic task, a ~1.7M-parameter
Qwen3-shaped model, in a few minutes on 2 cores.

Difficulty: single-digit operands; D_L and the labeled holdout have 2-3 steps, D_U (the
test-time questions) 3-4. Measured by the main-job command in the README (2 cores, 4.5 min in
all): after 400 SFT steps the policy solves 66% of the holdout greedily (mean@8 0.61, 64
problems) but 33% of D_U (mean@8 0.31, pass@8 0.52): the middling regime where test-time
training can move. The 16
TEMPO steps at policy learning rate 1e-5 are a smoke test of the whole loop; they leave the eval
numbers within noise (see the README for what larger learning rates do).

`configs/tiny_arith.py:rlvr` is RL with true rewards from the same SFT policy at its documented
learning rate, 1e-4, with 16 prompts x 8 samples a step (README, "Why RL did not learn here").
Its gain is small and not reliably reproduced. On all 256 holdout problems x 8 samples, one run
(seed 0, 2026-12-06) went from mean@8 0.668 to 0.686 to 0.700 at steps 0 / 24 / 48. Scored again
by `tempo-jax eval --workdir=DIR --step=0|48 --split=holdout` (`--baseline=DIR/eval/step_0` for
step 48), which gives the same numbers, the change is +0.031 ± 0.016 (paired s.e. over the 256
problems' per-problem means, z = 2.0). Each mean has a binomial s.e. of 0.010 and a per-problem
s.e. of 0.021 (0.022 at step 48). Greedy went 0.75 -> 0.79, and pass@8 fell 0.934 -> 0.910. An
earlier run on the same 256 problems measured 0.675 -> 0.676 (issue 22), and the first report,
0.663 -> 0.707, came from yet another run. So the gain is between about 0 and 0.03: sharpening,
not a reliable improvement.
With 8 prompts x 4 samples it does not move (0.626 -> 0.619 in 32 steps); at lr 3e-4 it
degrades (-> 0.41).
"""

import ml_collections

from tempo_jax.config import defaults


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """The CPU default; `variant` "rlvr" gives the documented RLVR run (module docstring)."""
    if variant not in ("", "rlvr"):
        raise ValueError(f"configs/tiny_arith.py: unknown variant {variant!r}; use '' or 'rlvr'")
    c = defaults.get_config()
    c.method = "tempo"
    c.total_steps = 16
    c.eval_every = 8
    c.save_every = 8

    c.model.preset = "tiny"
    c.model.overrides = ml_collections.ConfigDict(
        {
            "hidden_size": 192,
            "intermediate_size": 512,
            "num_layers": 4,
            "num_heads": 6,
            "num_kv_heads": 2,
            "head_dim": 32,
            "tie_word_embeddings": True,
        }
    )
    # The task's defaults are this config's calibrated difficulty (tempo_jax/data/arithmetic.py):
    # single-digit operands, D_L and the holdout 2-3 steps, D_U 3-4 steps.
    c.data.max_prompt_length = 24
    c.data.prompts_per_step = 8
    c.rollout.n = 4
    c.rollout.max_new_tokens = 56
    # Evaluation samples 64 problems x 8 in calls of 8 prompts (64 rows), as training-sized
    # batches did before chunking; training's 8 x 4 rows fit one call.
    c.rollout.max_rows_per_chunk = 64

    c.sft.steps = 400
    c.sft.batch_size = 32
    c.sft.learning_rate = 3e-3

    c.tempo.critic_warmup_steps = 8
    c.tempo.critic_updates = 2
    c.tempo.recalibrate_every = 4
    # A tiny model moves at larger learning rates than the authors' 1e-6 for 8B-14B models.
    c.train.policy_optimizer.learning_rate = 1e-5
    c.train.critic_optimizer.learning_rate = 1e-4

    c.eval.n = 8
    c.eval.num_problems = 64
    if variant == "rlvr":
        c.method = "rlvr"
        c.train.policy_optimizer.learning_rate = 1e-4
        c.data.prompts_per_step = 16
        c.rollout.n = 8
        c.total_steps = 48
        c.eval_every = 24
        c.eval.num_problems = 256
    return c
