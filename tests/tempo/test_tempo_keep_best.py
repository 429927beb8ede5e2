"""`checkpoint.keep_best` in the loop: every evaluated step is saved with its eval, and the one
with the best value survives keep-N; a metric the run does not report fails naming the field."""

import json
import os

import pytest
from tempo_micro import micro_config

from tempo_jax.tempo.loop import Trainer
from tempo_jax.train.checkpointing import Checkpointer

METRIC = "eval/unlabeled/critic/brier"  # continuous, so no ties between steps
CHANGES = {
    "total_steps": 2,
    "eval_every": 1,
    "eval.greedy": False,
    "checkpoint.keep": 1,
    "checkpoint.keep_best": METRIC,
    "checkpoint.keep_best_mode": "max",
}


def test_the_best_eval_checkpoint_survives_keep_n(tmp_path):
    workdir = str(tmp_path / "run")
    trainer = Trainer(micro_config(str(tmp_path / "data"), **CHANGES), workdir)
    try:
        trainer.train()
    finally:
        trainer.close()
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        values = {r["step"]: r[METRIC] for r in map(json.loads, f) if METRIC in r}
    assert sorted(values) == [0, 1, 2]
    best = max(values, key=values.get)
    with Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True, keep_best=METRIC) as c:
        assert c.all_steps() == sorted({best, 2})
        assert c.best_step() == best


def test_a_metric_the_run_does_not_report_is_refused(tmp_path):
    changes = {
        **CHANGES,
        "checkpoint.keep_best": "eval/unlabeled/mean@99",
        "tempo.critic_warmup_steps": 0,
    }
    trainer = Trainer(micro_config(str(tmp_path / "data"), **changes), str(tmp_path / "run"))
    try:
        with pytest.raises(ValueError, match=r"checkpoint.keep_best='eval/unlabeled/mean@99'"):
            trainer.train()
    finally:
        trainer.close()
