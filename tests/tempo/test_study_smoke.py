"""A smoke of the CPU study config (configs/tiny_repro.py): its full model and data for one step
of TEMPO with a token SFT, checking that it is the transductive regime it claims to be and that
a run reports what the comparison reads; and the sweep command the README gives, dry."""

import importlib.util
import pathlib
import shlex
import sys

from tempo_jax.tempo.loop import Trainer
from tempo_jax.train.metric_writers import read_jsonl

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(path: pathlib.Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_the_study_config_runs_and_reports_what_the_comparison_reads(tmp_path):
    config = _load(ROOT / "configs" / "tiny_repro.py", "tiny_repro").get_config()
    # The regime: D_U is small and is the (only) evaluated split.
    assert dict(config.eval.splits) == {"unlabeled": "unlabeled"}
    assert config.eval.num_problems == config.data.num_unlabeled <= 64
    assert config.total_steps * config.data.prompts_per_step >= 4 * config.data.num_unlabeled
    assert tuple(config.eval.ks) == tuple(range(1, config.eval.n + 1))
    # The critic reads its language model's likelihood (README, "What moved the critic's AUROC").
    assert config.train.critic_likelihood_weight == 0.1
    config.sft.steps = 2
    # Half a batch (4 prompts x 8 samples: 32 rows, still 4 per fake device), and evaluation on
    # one such prompt batch: the run checks the wiring, not accuracy, and its full model's
    # updates and rollouts take most of its time.
    config.data.prompts_per_step = 4
    config.eval.num_problems = 4
    config.tempo.critic_warmup_steps = 1
    # One step (the micro runs cover many): this one checks the study config's wiring, and each
    # step of its full model costs seconds.
    config.total_steps = 1
    config.eval_every = 1
    config.save_every = 0
    config.progress_bar = False
    config.grader.num_workers = 1
    trainer = Trainer(config, str(tmp_path))
    try:
        state = trainer.train()
    finally:
        trainer.close()
    assert state.step == 1
    records = read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in records] == [0, 1]
    for record in (records[0], records[-1]):
        assert record["eval/unlabeled/problems"] == 4
        for key in ("mean@8", "maj@8", "answer_entropy", "critic/auroc", "pass@1", "pass@8"):
            assert f"eval/unlabeled/{key}" in record
        # (NaN, like the pooled AUROC, where no question has both right and wrong samples.)
        assert "eval/unlabeled/critic/auroc_within_question" in record
        assert not any(k.startswith("eval/holdout/") for k in record)


def test_the_readme_sweep_command_lists_every_run(capsys):
    sweep = _load(ROOT / "launch" / "sweep.py", "sweep_for_smoke")
    readme = (ROOT / "README.md").read_text()
    start = readme.index("python launch/sweep.py --config=configs/tiny_repro.py")
    command = readme[start : readme.index("\n```", start)].replace("\\\n", " ")
    args = shlex.split(command)[2:]
    assert sweep.main([*args, "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # 3 seeds x (one SFT + oracle, tempo_frozen, ttrl, empo, intuitor, tempo x 4 cadences).
    assert len(lines) == 3 * (1 + 5 + 4)
    methods = {
        next(a for a in shlex.split(x) if a.startswith("--config.method=")) for x in lines[3:]
    }
    assert methods == {
        f"--config.method={m}"
        for m in ("oracle", "tempo", "tempo_frozen", "ttrl", "empo", "intuitor")
    }
