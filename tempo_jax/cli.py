"""`tempo-jax`: the command line.

    tempo-jax train  --config=configs/tiny_arith.py --workdir=DIR [--config.key=value ...]
    tempo-jax sft    --config=configs/tiny_arith.py --workdir=DIR
    tempo-jax export --workdir=DIR [--step=N] --out=HF_DIR
    tempo-jax compile --config=configs/X.py --topology=v5p:2x2x4|cpu [--out=F.json] [--hbm_gib=N]
    tempo-jax eval   --config=configs/X.py (--workdir=DIR [--step=N] | --hf_path=HF_DIR --out=OUT)
                     [--split=LABEL,...] [--out=OUT] [--baseline=OTHER_OUT]
    tempo-jax data   --dataset=NAME --out=DIR [--source=FILE_OR_HF_URI] [--revision=REV]
    tempo-jax data   --model=Qwen/Qwen3-8B --out=DIR [--revision=REV]
    tempo-jax data   --list

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
`eval` scores checkpoint N of a workdir (default: the newest good one) or an HF checkpoint on the
config's eval splits with the trainer's evaluation and seeds
(tempo_jax/experiments/eval_command.py): it prints the metrics and writes OUT/report.json and
OUT/<split>.jsonl (default OUT: DIR/eval/step_N). `data` writes a dataset in the layout the recipes
read, from the Hugging Face Hub or a local copy (tempo_jax/data/hub_datasets.py), or downloads a
model's safetensors, config and tokenizer files (`--list` prints the known datasets, their Hub
repos, revisions and schemas).

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
_HF_PATH = flags.DEFINE_string(
    "hf_path", None, "eval: an HF checkpoint directory (or a `tempo-jax export` directory)."
)
_SPLIT = flags.DEFINE_list("split", [], "eval: eval split labels or dataset splits (default all).")
_PROGRESS = flags.DEFINE_bool("progress", True, "eval: show a progress bar.")
_BASELINE = flags.DEFINE_string(
    "baseline", None, "eval: another eval's output directory: adds the paired mean@n difference."
)
_DATASET = flags.DEFINE_string("dataset", None, "data: a dataset name (`tempo-jax data --list`).")
_SOURCE = flags.DEFINE_string(
    "source", None, "data: a local file or an hf:// URI to read instead of the Hub default."
)
_REVISION = flags.DEFINE_string("revision", None, "data: a Hub revision (default: recorded).")
_MODEL = flags.DEFINE_string("model", None, "data: a Hub model repo to download.")
_LIST = flags.DEFINE_bool("list", False, "data: print the known datasets.")
_QUESTION_FIELD, _ANSWER_FIELD, _NAME = (
    flags.DEFINE_string(name, None, f"data (jsonl / parquet passthrough): the {what}.")
    for name, what in (
        ("question_field", "question column"),
        ("answer_field", "answer column"),
        ("name", "output file's base name"),
    )
)

COMMANDS = ("train", "sft", "export", "compile", "eval", "data")


def _fail(message: str) -> None:
    raise SystemExit(f"tempo-jax: error: {message}")


def _export() -> None:
    if not _WORKDIR.value or not _OUT.value:
        raise app.UsageError("usage: tempo-jax export --workdir=DIR [--step=N] --out=HF_DIR")
    from tempo_jax.train import storage
    from tempo_jax.train.checkpointing import CheckpointError
    from tempo_jax.train.hf_export import export_hf

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
    from tempo_jax.aot.compile_report import compile_report

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


def _data() -> None:
    from tempo_jax.data import hub_datasets as hd

    if _LIST.value:
        print(hd.describe_registry())
        return
    if not _OUT.value or bool(_DATASET.value) == bool(_MODEL.value):
        raise app.UsageError(
            "usage: tempo-jax data (--dataset=NAME | --model=REPO) --out=DIR "
            "[--source=FILE_OR_HF_URI] [--revision=REV], or tempo-jax data --list"
        )
    try:
        if _MODEL.value:
            from tempo_jax.models.hub_download import download_model

            result = download_model(_MODEL.value, _OUT.value, revision=_REVISION.value)
            print(result.summary())
            return
        report = hd.prepare_dataset(
            _DATASET.value,
            _OUT.value,
            source=_SOURCE.value,
            revision=_REVISION.value,
            question_field=_QUESTION_FIELD.value,
            answer_field=_ANSWER_FIELD.value,
            output_name=_NAME.value,
        )
    except (hd.DatasetError, OSError) as e:
        _fail(str(e))
    print(report.summary())


def _eval(config) -> None:
    from tempo_jax.data.row_validation import DataError
    from tempo_jax.experiments.eval_command import EvalError, evaluate_checkpoint, summary_lines
    from tempo_jax.models.errors import CheckpointError as HFCheckpointError
    from tempo_jax.train.checkpointing import CheckpointError

    try:
        report = evaluate_checkpoint(
            config,
            workdir=_WORKDIR.value or "",
            hf_path=_HF_PATH.value or "",
            step=_STEP.value,
            splits=tuple(_SPLIT.value),
            out=_OUT.value or "",
            progress=_PROGRESS.value,
            baseline=_BASELINE.value or "",
        )
    except (EvalError, CheckpointError, HFCheckpointError, DataError, FileNotFoundError) as e:
        _fail(str(e))
    from tempo_jax import parallel

    if parallel.is_main_process():
        print("\n".join(summary_lines(report)))


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(
            f"usage: tempo-jax {{{'|'.join(COMMANDS)}}} --config=... --workdir=..."
        )
    logging.getLogger("absl").setLevel(logging.WARNING)
    if argv[1] == "export":
        _export()
        return
    if argv[1] == "data":
        _data()
        return
    from tempo_jax.config.validation import ConfigError, check_paths, validate

    if argv[1] == "compile":
        if _CONFIG.value is None:
            raise app.UsageError("--config is required")
        try:  # no paths are read: weights, data and tokenizer are not needed
            validate(_CONFIG.value)
        except ConfigError as e:
            _fail(str(e))
        _compile(_CONFIG.value)
        return
    if argv[1] == "eval":
        if _CONFIG.value is None or not (_WORKDIR.value or _HF_PATH.value):
            raise app.UsageError(
                "usage: tempo-jax eval --config=... (--workdir=DIR [--step=N] | "
                "--hf_path=HF_DIR --out=OUT) [--split=...] [--out=OUT]"
            )
        try:
            validate(_CONFIG.value)
        except ConfigError as e:
            _fail(str(e))
        from tempo_jax import parallel

        try:
            parallel.initialize_distributed(_CONFIG.value.parallel.distributed)
        except ValueError as e:
            _fail(f"parallel.{e}")
        _eval(_CONFIG.value)
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
        from tempo_jax.train.sft import run_sft

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
