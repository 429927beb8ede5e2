"""The `parallel` config section: mesh sizes, logical-axis rules, multi-host settings."""

from __future__ import annotations

import ml_collections

from tempo_jax.parallel.rules import DEFAULT_RULES


def _rule_string(axes: tuple[str, ...]) -> str:
    return ",".join(axes)


def get_config() -> ml_collections.ConfigDict:
    """Defaults for `config.parallel`; every field is overridable from the command line."""
    cfg = ml_collections.ConfigDict()
    # Device mesh; one axis may be -1 = all remaining devices. FSDP by default (ZeRO-3 style).
    cfg.mesh = ml_collections.ConfigDict()
    cfg.mesh.data = 1  # pure data parallelism (parameters replicated over it)
    cfg.mesh.fsdp = -1  # data parallelism with parameters / optimizer state sharded over it
    cfg.mesh.tensor = 1  # tensor (Megatron) parallelism over heads / mlp / vocab
    # Logical axis name -> comma-separated mesh axes ('' = replicated), e.g. 'data,fsdp'.
    cfg.rules = ml_collections.ConfigDict(
        {name: _rule_string(axes) for name, axes in DEFAULT_RULES.items()}
    )
    # What to do when a dimension is not divisible by its mesh axes: 'error' or 'replicate'.
    cfg.on_indivisible = "error"
    # jax.distributed; unset fields fall back to JAX_* environment variables.
    cfg.distributed = ml_collections.ConfigDict()
    cfg.distributed.coordinator_address = ""  # 'host:port' of process 0; '' = env / auto
    cfg.distributed.num_processes = 0  # 0 = env JAX_NUM_PROCESSES, else single process
    cfg.distributed.process_id = -1  # -1 = env JAX_PROCESS_ID
    cfg.distributed.local_device_ids = ""  # e.g. '0,1'; '' = all local devices
    cfg.distributed.cluster_detection = False  # True on Cloud TPU pods / Slurm: JAX detects all
    cfg.distributed.initialization_timeout_s = 300  # seconds to wait for the other processes
    cfg.distributed.cpu_collectives = ""  # 'gloo' / 'mpi' for multi-process CPU; '' = default
    return cfg
