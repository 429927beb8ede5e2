"""`tempo-jax`: the command line.

    tempo-jax train --config=configs/tiny_arith.py --workdir=DIR [--config.key=value ...]
    tempo-jax sft   --config=configs/tiny_arith.py --workdir=DIR

`train` runs SFT (if `sft.steps > 0`), the critic warm-up and test-time training, writing
DIR/metrics.jsonl, DIR/tensorboard/, DIR/checkpoints/, DIR/summary.txt and DIR/eval_curves.png;
rerunning the same command resumes. `sft` runs only the fine-tuning stage (DIR/sft/).
"""

from __future__ import annotations

import logging
import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics, checkpoints and plots.")

COMMANDS = ("train", "sft")


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(
            f"usage: tempo-jax {{{'|'.join(COMMANDS)}}} --config=... --workdir=..."
        )
    if _CONFIG.value is None or not _WORKDIR.value:
        raise app.UsageError("--config and --workdir are required")
    logging.getLogger("absl").setLevel(logging.WARNING)
    from tempo_jax.tempo.config_validation import validate

    config = _CONFIG.value
    validate(config)  # before anything is built or compiled
    workdir = os.path.abspath(_WORKDIR.value)
    os.makedirs(workdir, exist_ok=True)
    if argv[1] == "train":
        from tempo_jax.tempo.loop import train_and_evaluate

        train_and_evaluate(config, workdir)
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
