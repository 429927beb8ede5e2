"""`checkpoint.keep_best` in the loop: every evaluated step is saved with its eval, and the one
with the best value survives keep-N; a metric the run does not report fails naming the field."""

import json
import os

import pytest
from tempo_micro import micro_config

from tempo_jax.config.validation import ConfigError
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


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"checkpoint.keep_best": "policy/loss"}, "checkpoint.keep_best must name an eval metric"),
        ({"checkpoint.keep_best": METRIC, "eval_every": 0}, "needs eval_every > 0"),
        ({"checkpoint.keep_best_mode": "best"}, "checkpoint.keep_best_mode must be"),
        ({"checkpoint.async_timeout_s": 0}, "checkpoint.async_timeout_s must be an int >= 1"),
    ],
)
def test_bad_checkpoint_fields_fail_before_anything_runs(changes, message):
    with pytest.raises(ConfigError, match=message):
        micro_config(**changes)
