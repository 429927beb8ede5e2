"""TEMPO on AIME with OLMo-3-7B, the authors' recipe (256 prompts per step, 64 per update, n=8,
16k-token responses, AdamW 1e-6; see tempo_jax/config/aime_recipe.py for paths and fields). The
second command runs a baseline (any registered method name).

    tempo-jax train --config=configs/olmo3_7b_aime.py --workdir=runs/olmo3_7b_aime
    tempo-jax train --config=configs/olmo3_7b_aime.py:ttrl --workdir=runs/olmo3_7b_aime_ttrl

Checkpoint: $TEMPO_ROOT/checkpoints/Olmo-3-7B-Think (override with --config.model.hf_path=DIR).
"""

import ml_collections

from tempo_jax.config.aime_recipe import aime_config


def get_config(method: str = "") -> ml_collections.ConfigDict:
    """`method` is the config-file argument (configs/olmo3_7b_aime.py:METHOD; '' = tempo)."""
    return aime_config(
        checkpoint="Olmo-3-7B-Think",
        preset="olmo3_7b",
        method=method,
        prompts_per_step=256,
        prompts_per_update=64,
        # (policy, critic) parameters: with AdamW states a checkpoint is 170 GB, so its
        # async save timeout is 1702 s at 100 MB/s -> 1800 s (tempo_jax/config/aime_recipe.py)
        params=(7.30e9, 6.89e9),
        # 64 rows x 9.0 GiB of KV cache (32 KV heads) = 576 GiB a chunk (36 GiB a chip on 16)
        max_rows_per_chunk=64,
    )
