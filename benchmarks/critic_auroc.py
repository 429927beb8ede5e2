"""The warmed-up critic's step-0 D_U quality over seeds: what a `tempo` run evaluates before its
first TTT step (SFT, the critic warm-up, the step-0 evaluation), and nothing after it.

    python benchmarks/critic_auroc.py --config=configs/tiny_repro.py --seeds=0,1,2,3,4 \\
        --root=/tmp/critic_auroc [--set tempo.critic_warmup_steps=8 ...]

Each seed runs in ROOT/s<seed> (a rerun reuses its SFT: `sft/<steps>`; pass `--sft_root` to copy
`<sft_root>/sft-s<seed>/sft` from a `launch/sweep.py --share_sft` root instead). Prints, per seed,
`eval/unlabeled/critic/auroc_within_question` (the mean over questions with right and wrong
samples of the AUROC of V_last among that question's samples), the pooled AUROC, D_U mean@8 and
the CPU seconds of the run, then the mean ± standard error over seeds. The numbers are the same
as the step-0 record of `tempo-jax train` with the same config and seed.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import shutil
import sys
import time

import numpy as np
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from tempo_jax.tempo.loop import Trainer
from tempo_jax.train.metric_writers import JsonlWriter

KEYS = {
    "within": "eval/unlabeled/critic/auroc_within_question",
    "pooled": "eval/unlabeled/critic/auroc",
    "mean@8": "eval/unlabeled/mean@8",
    "pass@8": "eval/unlabeled/pass@8",
}


def load_config(spec: str, overrides: list[str]):
    """`path[:variant]` with `key=value` overrides (values read as Python literals, else as
    strings), set as the CLI's --config.key=value would."""
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=values)
    values(["critic_auroc", f"--config={spec}"])
    config = values.config
    for override in overrides:
        key, text = override.split("=", 1)
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


def step0(config, workdir: str) -> dict[str, float]:
    """SFT (or its saved result), the critic warm-up and the step-0 evaluation of `config`."""
    trainer = Trainer(config, workdir)
    try:
        state = trainer._fresh_state()
        if trainer.method.uses_critic:
            writer = JsonlWriter(os.path.join(workdir, "warmup_metrics.jsonl"))
            state = trainer._warmup(state, writer)
        return trainer._evaluate(state, 0)
    finally:
        trainer.close()


def mean_se(values: list[float]) -> tuple[float, float]:
    x = np.asarray([v for v in values if not math.isnan(v)], np.float64)
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan
    return float(x.mean()), se


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="path[:variant], as tempo-jax's")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--root", required=True)
    parser.add_argument("--sft_root", default="", help="a sweep root holding sft-s<seed>/sft")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE config override")
    args = parser.parse_args(argv)
    absl_logging.set_verbosity(absl_logging.WARNING)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        config = load_config(args.config, [f"seed={seed}", *args.set])
        config.method = "tempo"
        config.progress_bar = False
        workdir = os.path.join(args.root, f"s{seed}")
        source = os.path.join(args.sft_root, f"sft-s{seed}", "sft")
        if args.sft_root and not os.path.exists(os.path.join(workdir, "sft")):
            shutil.copytree(source, os.path.join(workdir, "sft"))
        start = time.process_time()
        out = step0(config, workdir)
        row = {"seed": seed, **{k: float(out[v]) for k, v in KEYS.items()}}
        row["cpu_s"] = time.process_time() - start
        rows.append(row)
        print(json.dumps(row), flush=True)
    for key in ("within", "pooled", "mean@8", "pass@8"):
        m, se = mean_se([r[key] for r in rows])
        print(f"{KEYS[key]}: {m:.3f} ± {se:.3f} (n = {len(rows)} seeds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
