"""The authors' AIME recipe as a config (TEMPO_ALGORITHM.md §4), shared by configs/*_aime.py.

D_L is DAPO-Math-17k (labeled), D_U the AIME problems the policy is refined on (their answers are
read by evaluation only), and the labeled holdout another AIME year. Every path sits under one
root, `$TEMPO_ROOT` (default `~/tempo`), laid out as

    $TEMPO_ROOT/checkpoints/<model>/             HF checkpoint: config.json, safetensors, tokenizer
    $TEMPO_ROOT/data/dapo-math-17k.parquet       D_L, the processed release (prompt / solution:
                                                 the plain question and the answer; the original
                                                 asks for an `Answer:` line, not a box)
    $TEMPO_ROOT/data/aime-2024.jsonl             D_U (problem / answer)
    $TEMPO_ROOT/data/aime-2025.jsonl             holdout (problem / answer)

and any of them can be overridden on the command line (`--config.model.hf_path=...`). The method
is the config-file argument: `--config=configs/qwen3_14b_aime.py:ttrl`.
"""

from __future__ import annotations

import math
import os

import ml_collections

from tempo_jax.config import defaults
from tempo_jax.config.methods import METHODS

# Appended to every question: the grader reads the last \boxed{} (TEMPO_ALGORITHM.md §5).
PROMPT_TEMPLATE = (
    "{question}\n\nPlease reason step by step, and put your final answer within \\boxed{}."
)


# Sizing `checkpoint.async_timeout_s`: a checkpoint holds both networks' float32 parameters and
# their AdamW moments (4 + 8 bytes per parameter). The floor assumed for the write is 100 MB/s
# (one host's sustained writes to a bucket; a pod's hosts write their shards in parallel and are
# faster), and the timeout is that write time rounded up to whole 10 minutes.
CHECKPOINT_BYTES_PER_PARAM = 12
MIN_WRITE_BYTES_PER_S = 100e6


def checkpoint_timeout_s(policy_params: float, critic_params: float) -> int:
    """Orbax's async save timeout (seconds) for a checkpoint of the two networks."""
    seconds = (policy_params + critic_params) * CHECKPOINT_BYTES_PER_PARAM / MIN_WRITE_BYTES_PER_S
    return int(math.ceil(seconds / 600) * 600)


def root() -> str:
    """Where checkpoints and data live: `$TEMPO_ROOT`, default `~/tempo`."""
    return os.path.expanduser(os.environ.get("TEMPO_ROOT", "~/tempo"))


def aime_config(
    *,
    checkpoint: str,
    preset: str,
    method: str,
    prompts_per_step: int,
    prompts_per_update: int,
    params: tuple[float, float],
    max_rows_per_chunk: int,
    micro_batch_rows: int = 32,
) -> ml_collections.ConfigDict:
    """The authors' hyperparameters for one model.

    Args:
      checkpoint: directory name under `$TEMPO_ROOT/checkpoints` (e.g. "Qwen3-14B").
      preset: the matching `tempo_jax.models` preset (documents the architecture; the
        checkpoint's config.json is what is loaded).
      method: a registry method ('' = tempo).
      prompts_per_step: prompts per rollout batch (authors: 128 for 14B, 256 for 8B / 7B).
      prompts_per_update: prompts per policy optimizer update (authors: 32 / 64, one epoch).
      params: (policy, critic) parameter counts, for sizing the checkpoint save timeout.
      max_rows_per_chunk: rollout rows whose KV cache is held at once (memory, not math: the
        tokens are those of one call). A row's cache is 2 x layers x kv_heads x head_dim x
        2 bytes x (2048 + 16384 - 1) slots; pick a multiple of the batch shards.
      micro_batch_rows: rows per gradient-accumulation micro-batch of every step and forward
        (memory, not math): 32 is 2 rows per chip on 16 chips, 1 on 32 (`tempo-jax compile`).
    """
    method = method or "tempo"
    if method not in METHODS:
        raise ValueError(
            f"config argument: method must be one of {sorted(METHODS)}, got {method!r}"
        )
    base, data = root(), os.path.join(root(), "data")
    model_dir = os.path.join(base, "checkpoints", checkpoint)
    c = defaults.get_config()
    c.method = method
    c.total_steps = 200
    c.eval_every = 4  # the authors validate every 4 steps
    c.save_every = 4

    c.model.preset = preset
    c.model.hf_path = model_dir
    c.model.param_dtype = "float32"  # AdamW moments and master weights in float32
    c.model.compute_dtype = "bfloat16"

    c.tokenizer.kind = "hf"
    c.tokenizer.path = model_dir
    c.tokenizer.chat = True
    c.tokenizer.prompt_template = PROMPT_TEMPLATE

    c.data.source = "files"
    c.data.labeled_files = os.path.join(data, "dapo-math-17k.parquet")
    c.data.unlabeled_files = os.path.join(data, "aime-2024.jsonl")
    c.data.eval_files = os.path.join(data, "aime-2025.jsonl")
    c.data.question_field = "problem"
    c.data.answer_field = "answer"
    c.data.labeled_question_field = "prompt"
    c.data.labeled_answer_field = "solution"
    c.data.max_prompt_length = 2048  # left-truncated, as the authors
    c.data.overlong = "truncate"
    c.data.prompts_per_step = prompts_per_step
    c.data.prompts_per_update = prompts_per_update
    c.data.labeled_fraction = 0.5  # tempo_mixed

    c.rollout.n = 8
    c.rollout.temperature = 1.0
    c.rollout.top_p = 1.0
    c.rollout.max_new_tokens = 16384
    c.rollout.max_rows_per_chunk = max_rows_per_chunk

    c.tempo.critic_warmup_steps = 16  # no published value model: fit one on D_L first
    c.tempo.recalibrate_every = 4
    c.tempo.critic_updates = 2

    c.train.policy_optimizer.learning_rate = 1e-6
    c.train.policy_optimizer.weight_decay = 0.0
    c.train.critic_optimizer.learning_rate = 1e-6
    c.train.critic_optimizer.weight_decay = 0.01
    c.train.value_clip = 0.1
    c.train.micro_batch_rows = micro_batch_rows
    c.train.remat = True  # 16k-token responses: recompute activations in the backward pass
    # Update / log-prob / value passes on the smallest of these response lengths (or 16384)
    # holding the batch: early steps' shorter responses cost a fraction of the full length.
    c.train.length_buckets = (4096, 8192, 12288)
    c.model.attention = "auto"  # splash on TPU, cuDNN on GPU: no [T, S] scores at 18k tokens

    c.eval.n = 16
    c.eval.ks = (1, 2, 4, 8, 16)
    c.eval.temperature = 1.0
    c.eval.num_problems = 30  # one AIME year
    c.grader.num_workers = 16
    c.grader.timeout_s = 10.0
    c.checkpoint.keep = 3
    c.checkpoint.async_timeout_s = checkpoint_timeout_s(*params)
    return c
