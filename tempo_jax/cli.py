"""`tempo-jax`: the command line.

    tempo-jax train  --config=configs/tiny_arith.py --workdir=DIR [--config.key=value ...]
    tempo-jax sft    --config=configs/tiny_arith.py --workdir=DIR
    tempo-jax export --workdir=DIR [--step=N] --out=HF_DIR
    tempo-jax compile --config=configs/X.py --topology=v5p:2x2x4|cpu [--out=F.json] [--hbm_gib=N]

`train` runs SFT (if `sft.steps > 0`), the critic warm-up and test-time training, writing
DIR/metrics.jsonl, DIR/tensorboard/, DIR/checkpoints/, DIR/summary.txt and DIR/eval_curves.png;
rerunning the same command resumes. DIR may be a bucket (`gs://bucket/runs/x`; needs the `.[gcs]`
extra unless TensorFlow is installed), and so may HF_DIR. SIGTERM / SIGINT finish the current step,
save and exit 0.
`sft` runs only the fine-tuning stage (DIR/sft/). `export` writes checkpoint N (default: the
newest good one) as Hugging Face checkpoints HF_DIR/policy (and HF_DIR/critic when the method has
a critic) that `transformers` loads. `compile` compiles every function the run would execute
for a TPU topology (needs the `tpu` extra, no TPU) or the local devices, prints per-chip memory
against HBM (and writes it as JSON with --out) and exits 1 naming any function that does not fit.

Multi-process runs (a TPU pod, several GPU hosts): start the same command on every host with
`config.parallel.distributed` (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) set;
every process runs the whole loop on the same data, only process 0 writes metrics and reports,
and all of them write the checkpoints together (the workdir must be shared: a bucket, or a
filesystem every host mounts).

Errors the user can act on (an unwritable or full workdir, a run halted by non-finite updates, no
usable checkpoint to resume or export) end the process with exit code 1 and a one-line message,
not a traceback.
"""

from __future__ import annotations

import logging
import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics, checkpoints and plots.")
_STEP = flags.DEFINE_integer("step", None, "export: checkpoint step (default: the newest good).")
_OUT = flags.DEFINE_string(
    "out", None, "export: output directory of the HF checkpoints; compile: report JSON file."
)
_TOPOLOGY = flags.DEFINE_string(
    "topology", "cpu", "compile: a TPU topology (v5p:2x2x4, v6e:4x8, ...) or cpu (local devices)."
)
_HBM_GIB = flags.DEFINE_float("hbm_gib", None, "compile: memory per chip in GiB (default: spec).")
_ONLY = flags.DEFINE_list("only", [], "compile: only these functions (names or keys).")

COMMANDS = ("train", "sft", "export", "compile")


def _fail(message: str) -> None:
    raise SystemExit(f"tempo-jax: error: {message}")


def _export() -> None:
    if not _WORKDIR.value or not _OUT.value:
        raise app.UsageError("usage: tempo-jax export --workdir=DIR [--step=N] --out=HF_DIR")
    from tempo_jax.tempo.export import export_hf
    from tempo_jax.train import storage
    from tempo_jax.train.checkpointing import CheckpointError

    try:
        written = export_hf(
            storage.absolute(_WORKDIR.value), storage.absolute(_OUT.value), _STEP.value
        )
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        _fail(str(e))
    for role, path in written.items():
        print(f"{role}: {path}")


def _compile(config) -> None:
    import jax

    if _TOPOLOGY.value != "cpu":  # an abstract TPU topology compiles on the host backend
        jax.config.update("jax_platforms", "cpu")
    from tempo_jax.tempo.compile_report import compile_report

    try:
        report = compile_report(
            config,
            _TOPOLOGY.value,
            config_name=config_flags.get_config_filename(flags.FLAGS["config"]),
            hbm_gib=_HBM_GIB.value,
            only=tuple(_ONLY.value),
        )
    except ValueError as e:
        _fail(str(e))
    print(report.table())
    if _OUT.value:
        with open(_OUT.value, "w", encoding="utf-8") as f:
            f.write(report.to_json() + "\n")
        print(f"report: {_OUT.value}")
    failed = report.failures()
    if failed:
        _fail("does not fit: " + "; ".join(f"{f.name} ({f.status}: {f.message})" for f in failed))


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(
            f"usage: tempo-jax {{{'|'.join(COMMANDS)}}} --config=... --workdir=..."
        )
    logging.getLogger("absl").setLevel(logging.WARNING)
    if argv[1] == "export":
        _export()
        return
    from tempo_jax.tempo.config_validation import ConfigError, check_paths, validate

    if argv[1] == "compile":
        if _CONFIG.value is None:
            raise app.UsageError("--config is required")
        try:  # no paths are read: weights, data and tokenizer are not needed
            validate(_CONFIG.value)
        except ConfigError as e:
            _fail(str(e))
        _compile(_CONFIG.value)
        return
    if _CONFIG.value is None or not _WORKDIR.value:
        raise app.UsageError("--config and --workdir are required")
    from tempo_jax.train.checkpointing import (
        CheckpointDirectoryError,
        CheckpointError,
        check_writable,
    )

    config = _CONFIG.value
    try:  # before anything is built or compiled
        validate(config)
        check_paths(config)
    except ConfigError as e:
        _fail(str(e))
    from tempo_jax import parallel

    try:  # before anything touches a JAX backend
        parallel.initialize_distributed(config.parallel.distributed)
    except ValueError as e:
        _fail(f"parallel.{e}")
    from tempo_jax.train import storage

    workdir = storage.absolute(_WORKDIR.value)  # a local directory or a bucket (gs://...)
    try:  # before any data is built: an unwritable or full disk fails here
        check_writable(workdir, min_free_bytes=config.checkpoint.min_free_mb << 20)
    except CheckpointDirectoryError as e:
        _fail(f"workdir: {e}")
    if argv[1] == "train":
        from tempo_jax.tempo.loop import TrainingHalted, train_and_evaluate

        try:
            train_and_evaluate(config, workdir)
        except (TrainingHalted, CheckpointDirectoryError, CheckpointError) as e:
            _fail(str(e))
    else:
        from tempo_jax.tempo.build import build_run
        from tempo_jax.tempo.sft import run_sft

        run, policy = build_run(config, workdir)
        try:
            run_sft(run, policy, os.path.join(workdir, "sft"))
        finally:
            run.pool.close()


def run() -> None:
    """Console-script entry point."""
    app.run(main)


if __name__ == "__main__":
    run()
