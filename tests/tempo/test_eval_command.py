"""`tempo-jax eval`: a finished tiny_arith run's checkpoints, and the same networks exported as HF
checkpoints, score exactly what the trainer logged at that step; finished splits are not redone."""

import json
import math
import pathlib
import sys

import pytest

from tempo_jax.config.validation import validate
from tempo_jax.experiments import eval_command
from tempo_jax.tempo.loop import Trainer
from tempo_jax.train.hf_export import export_hf

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
CONFIG = ROOT / "configs" / "tiny_arith.py"

# configs/tiny_arith.py made cheap: a 2-layer model, 100 SFT steps of 16 sequences (enough to
# answer some D_U questions, so mean@8 is not 0: 0.078 at step 1; a step of 32 cost 0.2 s CPU),
# one warm-up and one TEMPO step, evaluated at steps 0 and 1 on 8 problems x 8 samples. Training
# samples 8 prompts x 8 too: one sampler executable serves both.
OVERRIDES = {
    "model.overrides.hidden_size": 64,
    "model.overrides.intermediate_size": 128,
    "model.overrides.num_layers": 2,
    "model.overrides.num_heads": 2,
    "model.overrides.num_kv_heads": 2,
    "model.overrides.head_dim": 16,
    "sft.steps": 100,
    "sft.batch_size": 16,
    "total_steps": 1,
    "eval_every": 1,
    "save_every": 1,
    "tempo.critic_warmup_steps": 1,
    "tempo.critic_updates": 1,
    "eval.num_problems": 8,
    "rollout.max_new_tokens": 40,
    "rollout.n": 8,
    "data.num_labeled": 64,
    "data.num_unlabeled": 32,
    "data.num_eval": 16,
    "progress_bar": False,
    "checkpoint.async_save": False,
}


def tiny_config():
    sys.path.insert(0, str(CONFIG.parent))
    try:
        import tiny_arith
    finally:
        sys.path.pop(0)
    c = tiny_arith.get_config()
    for key, value in OVERRIDES.items():
        section, parts = c, key.split(".")
        for part in parts[:-1]:
            section = section[part]
        section[parts[-1]] = value
    validate(c)
    return c


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(workdir, {step: the trainer's logged eval/* metrics}) of a finished tiny run."""
    workdir = tmp_path_factory.mktemp("eval_run")
    trainer = Trainer(tiny_config(), str(workdir))
    try:
        trainer.train()
    finally:
        trainer.close()
    logged = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if any(k.startswith("eval/") for k in record):
            logged[record["step"]] = {
                k: v for k, v in record.items() if k.startswith("eval/") and "timing" not in k
            }
    return workdir, logged


def same_metrics(report_metrics: dict, logged: dict) -> None:
    """Every metric the trainer logged, equal (NaN: None in the report)."""
    for key, value in logged.items():
        ours = report_metrics[key]
        if isinstance(value, float) and math.isnan(value):
            assert ours is None, key
        else:
            assert ours == value, (key, ours, value)


def test_eval_step_0_and_rerun_redoes_only_unfinished_splits(finished, tmp_path, monkeypatch):
    workdir, logged = finished
    calls = []
    real = eval_command.evaluate_split

    def counted(run, split, label, *args, **kwargs):
        calls.append(label)
        return real(run, split, label, *args, **kwargs)

    monkeypatch.setattr(eval_command, "evaluate_split", counted)
    out = tmp_path / "step0"
    first = eval_command.evaluate_checkpoint(
        tiny_config(), workdir=str(workdir), step=0, out=str(out), progress=False
    )
    same_metrics(first["metrics"], logged[0])
    assert calls == ["holdout", "unlabeled"]  # eval.splits in ConfigDict (sorted) order
    # A kill after the holdout split was written: the rerun does the unlabeled split only.
    (out / "unlabeled.metrics.json").unlink()
    (out / "report.json").unlink()
    calls.clear()
    again = eval_command.evaluate_checkpoint(
        tiny_config(), workdir=str(workdir), step=0, out=str(out), progress=False
    )
    assert calls == ["unlabeled"] and again["metrics"] == first["metrics"]
    assert json.loads((out / "report.json").read_text())["metrics"] == first["metrics"]
    # --split picks labels or dataset split names; an unknown one is an error naming them.
    only = eval_command.select_splits(tiny_config(), ("eval",))
    assert only == {"holdout": "eval"}
    with pytest.raises(eval_command.EvalError, match="holdout \\(dataset split 'eval'\\)"):
        eval_command.select_splits(tiny_config(), ("test",))
    with pytest.raises(eval_command.EvalError, match="no finalized checkpoint for step 7"):
        eval_command.evaluate_checkpoint(tiny_config(), workdir=str(workdir), step=7)


def test_eval_arguments_fail_before_anything_is_built(tmp_path):
    with pytest.raises(eval_command.EvalError, match="has no checkpoints/ directory"):
        eval_command.evaluate_checkpoint(tiny_config(), workdir=str(tmp_path))
    with pytest.raises(eval_command.EvalError, match="exactly one of --workdir and --hf_path"):
        eval_command.evaluate_checkpoint(tiny_config(), workdir="a", hf_path="b")
    with pytest.raises(eval_command.EvalError, match="--hf_path needs --out"):
        eval_command.evaluate_checkpoint(tiny_config(), hf_path=str(tmp_path))
    with pytest.raises(eval_command.EvalError, match="neither .*config.json"):
        eval_command.evaluate_checkpoint(tiny_config(), hf_path=str(tmp_path), out="o")
    with pytest.raises(eval_command.EvalError, match="--baseline=.*no such directory"):
        eval_command.evaluate_checkpoint(
            tiny_config(), workdir=str(tmp_path), baseline=str(tmp_path / "none")
        )
    assert list(tmp_path.iterdir()) == []


def test_hf_path_of_the_exported_checkpoint_scores_the_same(finished, tmp_path):
    workdir, logged = finished
    export_hf(str(workdir), str(tmp_path / "hf"))
    report = eval_command.evaluate_checkpoint(
        tiny_config(),
        hf_path=str(tmp_path / "hf"),
        step=1,
        out=str(tmp_path / "o"),
        progress=False,
    )
    assert report["source"]["critic_hf_path"] == str(tmp_path / "hf" / "critic")
    same_metrics(report["metrics"], logged[1])
    policy_only = eval_command.evaluate_checkpoint(
        tiny_config(),
        hf_path=str(tmp_path / "hf" / "policy"),
        step=1,
        out=str(tmp_path / "p"),
        splits=("unlabeled",),
        progress=False,
    )
    assert "eval/unlabeled/critic/auroc" not in policy_only["metrics"]
    assert policy_only["metrics"]["eval/unlabeled/mean@8"] == logged[1]["eval/unlabeled/mean@8"]


def test_aime_recipe_evaluates_an_hf_checkpoint_with_its_own_eval_settings(tmp_path):
    sys.path.insert(0, str(CONFIG.parent))
    try:
        import qwen3_8b_aime
    finally:
        sys.path.pop(0)
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "config.json").write_text("{}")
    (tmp_path / "critic").mkdir()
    (tmp_path / "critic" / "config.json").write_text("{}")
    recipe = qwen3_8b_aime.get_config()
    config = eval_command._hf_config(recipe, str(tmp_path))
    validate(config)
    # the checkpoint and its tokenizer replace the recipe's; the n=16, T=1 evaluation does not
    assert config.model.hf_path == config.tokenizer.path == str(tmp_path / "policy")
    assert config.model.critic_hf_path == str(tmp_path / "critic")
    assert (config.eval.n, config.eval.temperature, tuple(config.eval.ks)) == (
        16,
        1.0,
        (1, 2, 4, 8, 16),
    )
    assert config.eval.to_dict() == recipe.eval.to_dict()
    assert config.data.to_dict() == recipe.data.to_dict()
    assert eval_command.select_splits(config, ()) == {"holdout": "eval", "unlabeled": "unlabeled"}


def test_paired_difference_against_a_baseline_evaluation(tmp_path):
    def records(correct_by_id):
        return [{"row_id": i, "correct": c} for i, c in correct_by_id.items()]

    base = records({"a": [1, 0], "b": [0, 0], "c": [1, 1], "gone": [1, 1]})
    new = records({"a": [1, 1], "b": [1, 0], "c": [1, 1], "new": [0, 0]})
    paired = eval_command.paired_difference(new, base)
    # differences 0.5, 0.5, 0 over the 3 common problems: mean 1/3, sd 0.2887, se 0.1667
    assert paired["problems"] == 3 and paired["delta"] == pytest.approx(1 / 3)
    assert paired["se"] == pytest.approx(0.5 / 3) and paired["z"] == pytest.approx(2.0)
    for name, rows in (("new", new), ("base", base)):
        (tmp_path / name).mkdir()
        text = "".join(json.dumps(r) + "\n" for r in rows)
        (tmp_path / name / "holdout.jsonl").write_text(text)
    compared = eval_command.compare_reports(
        str(tmp_path / "new"), str(tmp_path / "base"), ["holdout", "unlabeled"]
    )
    assert compared == {"holdout": paired}
    with pytest.raises(eval_command.EvalError, match="none of the splits"):
        eval_command.compare_reports(str(tmp_path / "new"), str(tmp_path / "base"), ["unlabeled"])


def test_eval_cli_in_two_processes_scores_as_the_trainer_did_and_only_process_0_writes(
    finished, tmp_path
):
    # The CLI end to end: flags, the default output directory, the printed summary, the records.
    # (Exact equality of every metric, both splits, is the in-process tests' above: the CLI runs
    # the same `evaluate_checkpoint`.)
    from two_processes import DISTRIBUTED_FLAGS, run_two_processes

    workdir, logged = finished
    command = [
        sys.executable, "-m", "tempo_jax.cli", "eval", f"--config={CONFIG}",
        f"--workdir={workdir}", "--split=unlabeled", "--progress=false",
        *(f"--config.{k}={v}" for k, v in OVERRIDES.items()), *DISTRIBUTED_FLAGS,
        # No greedy pass: one executable less to compile in each process (the two-process
        # trainer test, test_tempo_multihost.py, evaluates greedily across hosts).
        "--config.eval.greedy=false",
    ]  # fmt: skip
    outputs = run_two_processes(command, tmp_path)
    out = workdir / "eval" / "step_1"
    assert sorted(p.name for p in out.iterdir()) == [
        "report.json", "unlabeled.jsonl", "unlabeled.metrics.json"]  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["step"] == 1 and report["eval"]["n"] == 8
    metrics = report["metrics"]
    mean = metrics["eval/unlabeled/mean@8"]
    assert mean == logged[1]["eval/unlabeled/mean@8"] > 0
    assert f"unlabeled: mean@8={mean:.4g}" in outputs[0] and "unlabeled: mean@8=" not in outputs[1]
    assert report["trainer_logged"]["eval/unlabeled/mean@8"] == mean
    records = [json.loads(x) for x in (out / "unlabeled.jsonl").read_text().splitlines()]
    assert len(records) == 8
    assert all(len(r["answers"]) == len(r["correct"]) == 8 for r in records)
    assert sum(sum(r["correct"]) for r in records) / 64 == mean
    assert len(records[0]["critic_values"]) == 8 and records[0]["question"].startswith("What is")
    # Sampling and grading are exact across hosts; the sharded forwards (token entropy, critic
    # values) add partial sums in another order (float32 rounding, as in training).
    assert "eval/unlabeled/greedy_accuracy" not in metrics
    for key, value in logged[1].items():
        if not key.startswith("eval/unlabeled/") or key.endswith("greedy_accuracy"):
            continue
        if "/critic/" in key or key.endswith("token_entropy"):
            expected = None if math.isnan(value) else pytest.approx(value, rel=1e-5, abs=1e-6)
            assert metrics[key] == expected, key
        else:
            assert metrics[key] == value, key
