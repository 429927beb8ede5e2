"""TEMPO on AIME with Qwen3-8B, the authors' recipe (256 prompts per step, 64 per update, n=8,
16k-token responses, AdamW 1e-6; see tempo_jax/config/aime_recipe.py for paths and fields). The
config-file argument picks a baseline (any registered method name) and/or the v6e layout:

    tempo-jax train --config=configs/qwen3_8b_aime.py --workdir=runs/qwen3_8b_aime
    tempo-jax train --config=configs/qwen3_8b_aime.py:ttrl --workdir=runs/qwen3_8b_aime_ttrl
    tempo-jax train --config=configs/qwen3_8b_aime.py:v6e --workdir=...      # 32 x v6e (32 GiB)
    tempo-jax train --config=configs/qwen3_8b_aime.py:ttrl,v6e --workdir=...

The default layout is for 16 TPU v5p chips (v5p:2x2x4, 95 GiB); `v6e` changes memory settings
only, not the math (`tempo-jax compile`: every function of both below 90% of HBM at full
length, v6e 68% at most; README).

Checkpoint: $TEMPO_ROOT/checkpoints/Qwen3-8B (override with --config.model.hf_path=DIR).
"""

import ml_collections

from tempo_jax.config.aime_recipe import aime_config

# 32 TPU v6e chips (v6e:4x8): heads / MLP / vocabulary over 4 chips (fsdp 8), so the sampler's
# whole-per-batch-shard bfloat16 weights take 3.8 GiB a chip instead of 15.3, and one 18k-token
# row per batch shard per micro-batch (8 rows over fsdp 8).
V6E = {"tensor": 4, "micro_batch_rows": 8}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """`arg` is the config-file argument: METHOD, v6e or METHOD,v6e ('' = tempo on v5p)."""
    parts = arg.split(",")
    v6e = parts[-1] == "v6e"
    method = ",".join(parts[:-1] if v6e else parts)
    c = aime_config(
        checkpoint="Qwen3-8B",
        preset="qwen3_8b",
        method=method,
        prompts_per_step=256,
        prompts_per_update=64,
        # (policy, critic) parameters: with AdamW states a checkpoint is 189 GB, so its
        # async save timeout is 1891 s at 100 MB/s -> 2400 s (tempo_jax/config/aime_recipe.py)
        params=(8.19e9, 7.57e9),
        # 128 rows x 2.53 GiB of KV cache = 324 GiB a chunk (20.3 GiB a chip on 16 v5p, 10.1 on
        # 32 v6e)
        max_rows_per_chunk=128,
        micro_batch_rows=V6E["micro_batch_rows"] if v6e else 32,
    )
    if v6e:
        c.parallel.mesh.tensor = V6E["tensor"]
    return c
