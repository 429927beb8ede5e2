"""TEMPO on AIME with Qwen3-14B, the authors' recipe (128 prompts per step, 32 per update, n=8,
16k-token responses, AdamW 1e-6; see tempo_jax/tempo/aime_recipe.py for paths and fields). The
second command runs a baseline (any registered method name).

    tempo-jax train --config=configs/qwen3_14b_aime.py --workdir=runs/qwen3_14b_aime
    tempo-jax train --config=configs/qwen3_14b_aime.py:ttrl --workdir=runs/qwen3_14b_aime_ttrl

Checkpoint: $TEMPO_ROOT/checkpoints/Qwen3-14B (override with --config.model.hf_path=DIR).
"""

import ml_collections

from tempo_jax.tempo.aime_recipe import aime_config


def get_config(method: str = "") -> ml_collections.ConfigDict:
    """`method` is the config-file argument (configs/qwen3_14b_aime.py:METHOD; '' = tempo)."""
    return aime_config(
        checkpoint="Qwen3-14B",
        preset="qwen3_14b",
        method=method,
        prompts_per_step=128,
        prompts_per_update=32,
    )
