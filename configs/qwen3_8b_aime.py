"""TEMPO on AIME with Qwen3-8B, the authors' recipe (256 prompts per step, 64 per update, n=8,
16k-token responses, AdamW 1e-6; see tempo_jax/tempo/aime_recipe.py for paths and fields). The
second command runs a baseline (any registered method name).

    tempo-jax train --config=configs/qwen3_8b_aime.py --workdir=runs/qwen3_8b_aime
    tempo-jax train --config=configs/qwen3_8b_aime.py:ttrl --workdir=runs/qwen3_8b_aime_ttrl

Checkpoint: $TEMPO_ROOT/checkpoints/Qwen3-8B (override with --config.model.hf_path=DIR).
"""

import ml_collections

from tempo_jax.tempo.aime_recipe import aime_config


def get_config(method: str = "") -> ml_collections.ConfigDict:
    """`method` is the config-file argument (configs/qwen3_8b_aime.py:METHOD; '' = tempo)."""
    return aime_config(
        checkpoint="Qwen3-8B",
        preset="qwen3_8b",
        method=method,
        prompts_per_step=256,
        prompts_per_update=64,
        # (policy, critic) parameters: with AdamW states a checkpoint is 189 GB, so its
        # async save timeout is 1891 s at 100 MB/s -> 2400 s (tempo_jax/tempo/aime_recipe.py)
        params=(8.19e9, 7.57e9),
        # 128 rows x 2.53 GiB of KV cache = 324 GiB a chunk (20.3 GiB a chip on 16)
        max_rows_per_chunk=128,
    )
