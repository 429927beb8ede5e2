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

from tempo_jax.tempo import compare, grid

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
    assert json.loads(pathlib.Path(paths["json"]).read_text()) == json.loads(json.dumps(summary))
    assert pathlib.Path(paths["plot"]).stat().st_size > 5000


def test_a_real_sweep_runs_each_method_and_compares(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(MICRO.parent)]))
    args = [
        f"--config={MICRO}",
        f"--root={tmp_path / 'sweep'}",
        "--methods=ttrl,tempo",
        "--seeds=5",
        f"--set=data.dir={tmp_path / 'data'}",
        "--set=total_steps=1",
        "--set=eval_every=1",
    ]
    assert sweep.main(args) == 0
    out = capsys.readouterr().out
    assert "[1/2] ttrl-s5: ok" in out and "[2/2] tempo-s5: ok" in out
    summary = json.loads((tmp_path / "sweep" / "comparison.json").read_text())
    for method in ("ttrl", "tempo"):
        records = [
            json.loads(line)
            for line in (tmp_path / "sweep" / f"{method}-s5" / "metrics.jsonl").open()
        ]
        last = [r for r in records if "eval/unlabeled/mean@2" in r][-1]
        assert last["step"] == 1
        got = summary[method]["eval/unlabeled/mean@2"]
        assert got["n"] == 1 and math.isclose(got["mean"], last["eval/unlabeled/mean@2"])
    assert "eval/unlabeled/critic/brier" in summary["tempo"]  # (AUROC is NaN: all wrong)
    assert "eval/unlabeled/critic/brier" not in summary["ttrl"]
    # A rerun of the finished sweep resumes each run at its end: no step is trained again.
    assert sweep.main(args) == 0
    lines = (tmp_path / "sweep" / "ttrl-s5" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 1]
