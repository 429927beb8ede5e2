"""launch/sweep.py: the grid, its commands, a real two-run sweep on the micro config, and the
comparison's numbers checked against a hand computation."""

import importlib.util
import json
import math
import os
import pathlib
import shlex
import statistics
import sys

import pytest

from tempo_jax.experiments import compare, grid

ROOT = pathlib.Path(__file__).resolve().parents[2]
MICRO = ROOT / "tests" / "tempo" / "tempo_micro.py"


def load_sweep():
    spec = importlib.util.spec_from_file_location("sweep", ROOT / "launch" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["sweep"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


sweep = load_sweep()


def test_grid_commands_and_bad_arguments(tmp_path):
    runs = sweep.grid(
        "configs/tiny_arith.py",
        str(tmp_path),
        ["tempo", "ttrl"],
        [0, 3],
        grid.parse_overrides(["total_steps=8", "rollout.n=2"]),
        executable=("tempo-jax",),
    )
    assert [r.name for r in runs] == ["tempo-s0", "tempo-s3", "ttrl-s0", "ttrl-s3"]
    assert runs[3].command == (
        "tempo-jax",
        "train",
        "--config=configs/tiny_arith.py",
        f"--workdir={tmp_path / 'ttrl-s3'}",
        "--config.method=ttrl",
        "--config.seed=3",
        "--config.total_steps=8",
        "--config.rollout.n=2",
    )
    with pytest.raises(ValueError, match=r"unknown \['grpo'\]"):
        sweep.grid("c.py", "r", ["tempo", "grpo"], [0], [])
    with pytest.raises(ValueError, match="must not repeat"):
        sweep.grid("c.py", "r", ["tempo"], [0, 0], [])
    for bad in ("total_steps", "config.seed=1", "seed=2"):
        with pytest.raises(ValueError, match="--set"):
            grid.parse_overrides([bad])


def test_dry_run_prints_every_command(tmp_path, capsys):
    code = sweep.main(
        [
            "--config=configs/tiny_arith.py",
            f"--root={tmp_path}",
            "--methods=tempo,empo,rlvr",
            "--seeds=0,1",
            "--dry_run",
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and len(lines) == 6
    assert shlex.split(lines[-1])[-2:] == ["--config.method=rlvr", "--config.seed=1"]
    assert not any(tmp_path.iterdir())  # nothing ran


def _records(values):
    return [
        {"step": s, "phase": "eval", "eval/unlabeled/mean@2": v, "eval/unlabeled/mean@1": 0.0}
        for s, v in values
    ]


def test_aggregate_table_and_curves_match_a_hand_computation(tmp_path):
    runs = {
        "tempo-s0": ("tempo", _records([(0, 0.25), (2, 0.5)])),
        "tempo-s1": ("tempo", _records([(0, 0.25), (2, 0.75)])),
        "ttrl-s0": ("ttrl", _records([(0, 0.25), (2, 0.125)])),
    }
    summary = compare.aggregate(runs)
    assert summary["tempo"]["eval/unlabeled/mean@2"] == {
        "mean": 0.625,
        "std": pytest.approx(statistics.stdev([0.5, 0.75])),
        "n": 2,
    }
    assert summary["ttrl"]["eval/unlabeled/mean@2"] == {"mean": 0.125, "std": 0.0, "n": 1}
    table = compare.markdown_table(summary)
    # mean@* picks the largest k reported.
    assert "| unlabeled/mean@2 |" in table.splitlines()[0]
    assert "| tempo | 0.625 ± 0.177 (n=2) |" in table
    assert compare.mean_curves(runs, "eval/unlabeled/mean@2") == {
        "tempo": [(0, 0.25), (2, 0.625)],
        "ttrl": [(0, 0.25), (2, 0.125)],
    }
    paths = compare.write_comparison(str(tmp_path), runs)
    payload = json.loads(pathlib.Path(paths["json"]).read_text())
    assert payload["summary"] == json.loads(json.dumps(summary))
    assert payload["deltas"] == {}  # no base among the runs
    assert pathlib.Path(paths["plot"]).stat().st_size > 5000


def _eval(step, mean, pass8, auroc=None, within=None):
    record = {
        "step": step,
        "eval/unlabeled/mean@8": mean,
        "eval/unlabeled/pass@1": mean,
        "eval/unlabeled/pass@8": pass8,
        "eval/unlabeled/problems": 32.0,
    }
    if auroc is not None:
        record["eval/unlabeled/critic/auroc"] = auroc
    if within is not None:
        record["eval/unlabeled/critic/auroc_within_question"] = within
    return record


def test_base_rows_paired_deltas_pass_at_k_and_auroc_curves(tmp_path):
    runs = {
        "oracle-s0": ("oracle", [_eval(0, 0.5, 0.9), _eval(4, 0.75, 0.95)]),
        "oracle-s1": ("oracle", [_eval(0, 0.4, 0.8), _eval(4, 0.5, 0.85)]),
        "tempo-s0": ("tempo", [_eval(0, 0.5, 0.9, 0.75, 0.5), _eval(4, 0.5, 0.9, 0.5, 0.25)]),
        "tempo-s1": ("tempo", [_eval(0, 0.4, 0.8, 0.7, 0.5), _eval(4, 0.4, 0.7, 0.6, 0.375)]),
    }
    base = compare.base_runs(runs)
    # Each seed's base is its first run's step-0 evaluation, critic metrics left out.
    assert base == {
        "base-s0": ("base", [_eval(0, 0.5, 0.9)]),
        "base-s1": ("base", [_eval(0, 0.4, 0.8)]),
    }
    runs = {**base, **runs}
    summary = compare.aggregate(runs)
    assert list(summary) == ["base", "oracle", "tempo"]
    deltas = compare.paired_deltas(runs, ["eval/unlabeled/mean@8", "eval/unlabeled/pass@8"])
    # oracle - base per seed: 0.25 and 0.10 -> mean 0.175, s.e. = stdev / sqrt(2) = 0.075.
    d = deltas["oracle"]["eval/unlabeled/mean@8"]
    assert d["mean"] == pytest.approx(0.175) and d["n"] == 2
    assert d["se"] == pytest.approx(statistics.stdev([0.25, 0.1]) / math.sqrt(2))
    assert d["z"] == pytest.approx(0.175 / d["se"])
    assert deltas["tempo"]["eval/unlabeled/pass@8"]["mean"] == pytest.approx(-0.05)
    assert "base" not in deltas
    assert compare.pass_at_k_curves(summary)["oracle"] == [
        (1, pytest.approx(0.625), pytest.approx(statistics.stdev([0.75, 0.5]))),
        (8, pytest.approx(0.9), pytest.approx(statistics.stdev([0.95, 0.85]))),
    ]
    assert compare.mean_curves(runs, "eval/unlabeled/critic/auroc") == {
        "tempo": [(0, pytest.approx(0.725)), (4, pytest.approx(0.55))]
    }
    report = compare.comparison_markdown(runs)
    assert "| k=1 | k=8 |" in report and "| oracle | 0.625 | 0.900 |" in report
    assert "| oracle | +0.175 ± 0.075 (+2.3) |" in report
    assert "| tempo | 0.725 | 0.550 |" in report
    # The within-question AUROC over steps: its own section, curve and table column.
    within = report[report.index("## Critic AUROC on D_U within a question") :]
    assert "| tempo | 0.500 | 0.312 |" in within
    assert compare.aggregate(runs)["tempo"]["eval/unlabeled/critic/auroc_within_question"][
        "mean"
    ] == pytest.approx(0.3125)
    assert "unlabeled/critic/auroc_within_question" in report.splitlines()[1]
    # 32 problems x 8 samples at p = 0.5 (seed 0's step-0 record comes first).
    assert "binomial s.e. of mean@8 at 0.500: 0.031" in report
    # Equal differences on every seed: s.e. 0, no z.
    same = compare.paired_deltas(runs, ["eval/unlabeled/pass@1"])["tempo"]["eval/unlabeled/pass@1"]
    assert (same["mean"], same["se"], math.isnan(same["z"])) == (0.0, 0.0, True)
    assert "| tempo | +0.000 ± 0.000 (–) |" in compare.delta_table({"tempo": {"m": same}})
    with pytest.raises(ValueError, match="does not end in -s<seed>"):
        compare.run_seed("tempo")


def test_base_recalibrate_every_and_shared_sft_commands(tmp_path, capsys):
    runs = sweep.grid(
        "c.py",
        str(tmp_path),
        ["base", "ttrl", "tempo"],
        [0, 1],
        [("total_steps", "4")],
        executable=("tempo-jax",),
        recalibrate_every=[1, 8],
    )
    # base has no run of its own; only the phased method is multiplied by recalibrate_every.
    assert [r.name for r in runs] == [
        "ttrl-s0",
        "ttrl-s1",
        "tempo-r1-s0",
        "tempo-r1-s1",
        "tempo-r8-s0",
        "tempo-r8-s1",
    ]
    assert runs[5].command[-2:] == ("--config.tempo.recalibrate_every=8", "--config.total_steps=4")
    sfts = sweep.shared_sft("c.py", str(tmp_path), [0, 1], [("total_steps", "4")], ("tempo-jax",))
    assert [s.name for s in sfts] == ["sft-s0", "sft-s1"]
    assert sfts[0].command == (
        "tempo-jax",
        "sft",
        "--config=c.py",
        f"--workdir={tmp_path / 'sft-s0'}",
        "--config.seed=0",
        "--config.total_steps=4",
    )
    with pytest.raises(ValueError, match="add one"):
        sweep.grid("c.py", "r", ["base"], [0], [])
    # The flip-probability axis multiplies the tempo_oracle controls only.
    flips = grid.points(["ttrl", "tempo_oracle", "tempo_mixed_oracle"], [0], [4], [0.0, 0.1])
    assert [p.name for p in flips] == [
        "ttrl-s0",
        "tempo_oracle-r4-p0-s0",
        "tempo_oracle-r4-p0.1-s0",
        "tempo_mixed_oracle-r4-p0-s0",
        "tempo_mixed_oracle-r4-p0.1-s0",
    ]
    assert flips[2].config_args()[-1] == "--config.tempo.oracle_flip_prob=0.1"
    assert flips[4].config_args()[-2:] == (
        "--config.tempo.mixed_recalibrate_every=4",
        "--config.tempo.oracle_flip_prob=0.1",
    )
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        grid.points(["tempo_oracle"], [0], [], [1.5])
    with pytest.raises(ValueError, match="--oracle_flip_probs"):
        grid.parse_overrides(["tempo.oracle_flip_prob=0.2"])
    code = sweep.main(
        ["--config=c.py", f"--root={tmp_path}", "--methods=base,ttrl", "--share_sft", "--dry_run"]
    )
    lines = [shlex.split(x) for x in capsys.readouterr().out.splitlines()]
    assert code == 0 and [x[3:5] for x in lines] == [["sft", "--config=c.py"]] + [
        ["train", "--config=c.py"]
    ]
    assert not any(tmp_path.iterdir())


def test_a_real_sweep_runs_each_method_and_compares(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(MICRO.parent)]))
    args = [
        f"--config={MICRO}",
        f"--root={tmp_path / 'sweep'}",
        "--methods=base,ttrl,tempo_oracle",
        "--oracle_flip_probs=0.5",
        "--seeds=5",
        f"--set=data.dir={tmp_path / 'data'}",
        "--set=total_steps=1",
        "--set=eval_every=1",
        "--set=sft.steps=2",
        "--share_sft",
    ]
    # One run at a time: the second run loads what the first compiled (the sweep's shared
    # compilation cache) instead of compiling the same functions beside it. The rerun below
    # runs two at a time (each pinned to a CPU).
    assert sweep.main([*args, "--jobs=1"]) == 0
    out = capsys.readouterr().out
    assert "[1/3] sft-s5: ok" in out and "ttrl-s5: ok" in out and "tempo_oracle-p0.5-s5: ok" in out
    # Each run's own CPU seconds besides its wall time (on a shared machine they differ).
    cpu = [float(x.split("(CPU ")[1].split("s)")[0]) for x in out.splitlines() if "(CPU " in x]
    assert len(cpu) == 3 and all(c > 0.5 for c in cpu), out
    root = tmp_path / "sweep"
    # Both runs start from the seed's one SFT, copied in with its timestamps (a run that ran
    # its own SFT would have rewritten sft/metrics.jsonl).
    shared = (root / "sft-s5" / "sft" / "metrics.jsonl").stat().st_mtime_ns
    for method in ("ttrl", "tempo_oracle-p0.5"):
        assert (root / f"{method}-s5" / "sft" / "metrics.jsonl").stat().st_mtime_ns == shared
    payload = json.loads((root / "comparison.json").read_text())
    summary = payload["summary"]
    for method in ("ttrl", "tempo_oracle-p0.5"):
        records = [json.loads(line) for line in (root / f"{method}-s5" / "metrics.jsonl").open()]
        last = [r for r in records if "eval/unlabeled/mean@2" in r][-1]
        assert last["step"] == 1
        got = summary[method]["eval/unlabeled/mean@2"]  # the label: method-p<p>
        assert got["n"] == 1 and math.isclose(got["mean"], last["eval/unlabeled/mean@2"])
        # base is the step-0 evaluation, equal in both runs of the seed.
        first = records[0]
        assert first["step"] == 0
        assert summary["base"]["eval/unlabeled/mean@2"]["mean"] == first["eval/unlabeled/mean@2"]
    assert "eval/unlabeled/critic/brier" in summary["tempo_oracle-p0.5"]  # (AUROC NaN: all wrong)
    assert "eval/unlabeled/critic/brier" not in summary["ttrl"]
    assert set(payload["deltas"]) == {"ttrl", "tempo_oracle-p0.5"}
    # The CLI took the method and the flip probability (the run's config.json, its records).
    saved = json.loads((root / "tempo_oracle-p0.5-s5" / "config.json").read_text())
    assert (saved["method"], saved["tempo"]["oracle_flip_prob"]) == ("tempo_oracle", 0.5)
    trained = [json.loads(x) for x in (root / "tempo_oracle-p0.5-s5" / "metrics.jsonl").open()]
    assert "refine/reward_flipped_fraction" in trained[1]
    assert (root / "comparison.md").read_text().startswith("## Final evaluation")
    # A rerun of the finished sweep resumes each run at its end: no step is trained again.
    assert sweep.main([*args, "--jobs=2"]) == 0
    lines = (root / "ttrl-s5" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 1]
