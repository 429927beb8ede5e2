"""TEMPO on AIME with Qwen3-14B, the authors' recipe (128 prompts per step, 32 per update, n=8,
16k-token responses, AdamW 1e-6; see tempo_jax/config/aime_recipe.py for paths and fields). The
second command runs a baseline (any registered method name).

    tempo-jax train --config=configs/qwen3_14b_aime.py --workdir=runs/qwen3_14b_aime
    tempo-jax train --config=configs/qwen3_14b_aime.py:ttrl --workdir=runs/qwen3_14b_aime_ttrl

Checkpoint: $TEMPO_ROOT/checkpoints/Qwen3-14B (override with --config.model.hf_path=DIR).
"""

import ml_collections

from tempo_jax.config.aime_recipe import aime_config


def get_config(method: str = "") -> ml_collections.ConfigDict:
    """`method` is the config-file argument (configs/qwen3_14b_aime.py:METHOD; '' = tempo)."""
    return aime_config(
        checkpoint="Qwen3-14B",
        preset="qwen3_14b",
        method=method,
        prompts_per_step=128,
        prompts_per_update=32,
        # (policy, critic) parameters: with AdamW states a checkpoint is 345 GB, so its
        # async save timeout is 3451 s at 100 MB/s -> 3600 s (tempo_jax/config/aime_recipe.py)
        params=(14.77e9, 13.99e9),
        # 256 rows x 2.81 GiB of KV cache = 720 GiB a chunk (22.5 GiB a chip on 32, v5p:2x4x4)
        max_rows_per_chunk=256,
    )
