"""launch/xm_launch.py: the grid, each unit's command (local, and tpu_pod.py in the foreground on a
slice), the cloud executors' refusals and the process-group recording, always; and, where
xmanager is installed (its own environment: see README), a real two-unit experiment of micro
runs that completes, resumes on relaunch, and leaves no training process alive after SIGTERM."""

import importlib.util
import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import pytest

from tempo_jax.experiments import grid

ROOT = pathlib.Path(__file__).resolve().parents[2]
MICRO = ROOT / "tests" / "tempo" / "tempo_micro.py"


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "launch" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


xm_launch = load("xm_launch")
tpu_pod = load("tpu_pod")


def test_grid_multiplies_only_the_recalibrating_methods_by_recalibrate_every():
    points = grid.points(["tempo", "tempo_mixed", "tempo_frozen", "ttrl"], [0, 1], [2, 8])
    assert [p.name for p in points] == [
        "tempo-r2-s0",
        "tempo-r2-s1",
        "tempo-r8-s0",
        "tempo-r8-s1",
        "tempo_mixed-r2-s0",
        "tempo_mixed-r2-s1",
        "tempo_mixed-r8-s0",
        "tempo_mixed-r8-s1",
        "tempo_frozen-s0",
        "tempo_frozen-s1",
        "ttrl-s0",
        "ttrl-s1",
    ]
    assert points[2].label == "tempo-r8" and points[11].label == "ttrl"
    assert points[2].config_args() == (
        "--config.method=tempo",
        "--config.seed=0",
        "--config.tempo.recalibrate_every=8",
    )
    # The mixed loop's cadence is its own field (its default, 1, is the authors' loop).
    assert points[6].config_args()[-1] == "--config.tempo.mixed_recalibrate_every=8"
    assert [p.name for p in grid.points(["tempo"], [3])] == ["tempo-s3"]
    for bad, message in [
        ((["tempo"], [0], [2, 2]), "--recalibrate_every must not repeat"),
        ((["tempo"], [0], [0]), ">= 1"),
        ((["grpo"], [0]), r"unknown \['grpo'\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            grid.points(*bad)
    for key in ("tempo.recalibrate_every", "tempo.mixed_recalibrate_every"):
        with pytest.raises(ValueError, match="use --recalibrate_every"):
            grid.parse_overrides([f"{key}=3"])


def test_local_units_and_their_workdirs_come_from_the_hyperparameters(capsys):
    argv = ["--config=c.py", "--root=gs://b/grid", "--methods=tempo,ttrl", "--seeds=0"]
    assert (
        xm_launch.main([*argv, "--recalibrate_every=2,4", "--set=total_steps=8", "--dry_run"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["tempo-r2-s0", "tempo-r4-s0", "ttrl-s0"]
    command = shlex.split(lines[1].split(": ", 1)[1])
    assert command[1:] == [
        "-m",
        "tempo_jax.cli",
        "train",
        "--config=c.py",
        "--workdir=gs://b/grid/tempo-r4-s0",
        "--config.method=tempo",
        "--config.seed=0",
        "--config.tempo.recalibrate_every=4",
        "--config.total_steps=8",
        "--config.progress_bar=False",
    ]


def test_tpu_units_run_tpu_pod_in_the_foreground_each_on_a_slice(capsys, tmp_path, monkeypatch):
    argv = [
        "--config=configs/qwen3_8b_aime.py",
        "--root=gs://b/ablation",
        "--methods=tempo,ttrl",
        "--seeds=0,1",
        "--executor=tpu",
        "--tpu=slice-a,slice-b",
        "--zone=us-east5-a",
        "--env=TEMPO_ROOT=/mnt/tempo",
        "--dry_run",
    ]
    assert xm_launch.main(argv) == 0
    units = [line.split(": ", 1) for line in capsys.readouterr().out.splitlines()]
    assert [name for name, _ in units] == ["tempo-s0", "tempo-s1", "ttrl-s0", "ttrl-s1"]
    commands = [shlex.split(c) for _, c in units]
    assert [c[2] for c in commands] == ["--tpu=slice-a", "--tpu=slice-b"] * 2
    assert all(c[1].endswith("launch/tpu_pod.py") and "--foreground" in c for c in commands)
    # The unit's tpu_pod.py command line, dry-run: it trains that unit's workdir and point.
    monkeypatch.chdir(tmp_path)
    assert tpu_pod.main([*commands[3][2:], "--dry_run"]) == 0
    printed = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert printed[0][:2] == ["git", "archive"]
    train = printed[-1][6].removeprefix("--command=")
    assert printed[-1][5] == "slice-b" and "TEMPO_ROOT=/mnt/tempo " in train
    for arg in ("--workdir=gs://b/ablation/ttrl-s1", "--config.method=ttrl", "--config.seed=1"):
        assert arg in shlex.split(train.split("supervisor", 1)[1])
    assert 'tail -n +1 --pid="$(cat "$L.pid")"' in train  # waits for the run, streams its log


@pytest.mark.parametrize(
    "executor,accelerator,message",
    [
        ("vertex", "v5p-64", "knows TPU v2/v3 only"),
        ("vertex", "v3-8", "container image"),
        ("kubernetes", "v5e-16", "sets no TPU topology"),
    ],
)
def test_cloud_executors_refuse_what_they_cannot_express(executor, accelerator, message, capsys):
    argv = ["--config=c.py", "--root=r", f"--executor={executor}", f"--accelerator={accelerator}"]
    with pytest.raises(SystemExit):
        xm_launch.parse_args(argv)
    assert message in capsys.readouterr().err


def test_unit_mode_records_its_process_group_and_becomes_the_command(tmp_path):
    pgid_file = tmp_path / "u.pgid"
    script = 'echo "$$ $(ps -o pgid= -p $$)"'
    out = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "xm_launch.py"), "unit", str(pgid_file)]
        + ["bash", "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    # exec: the command kept the wrapper's pid, which leads its own group.
    assert out[0] == out[1] == pgid_file.read_text() != str(os.getpgid(0))


# --------------------------------------------------------------------------- with xmanager


def _launch(root, data_dir, home, *extra, wait=True):
    command = [
        sys.executable,
        str(ROOT / "launch" / "xm_launch.py"),
        f"--config={MICRO}",
        f"--root={root}",
        "--methods=ttrl",
        "--seeds=0,1",
        "--max_parallel=2",
        f"--set=data.dir={data_dir}",
        *extra,
    ]
    env = dict(
        os.environ,
        HOME=str(home),  # xmanager's experiment database
        PYTHONPATH=os.pathsep.join([str(ROOT), str(MICRO.parent)]),
    )
    if not wait:
        return subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=900, check=False
    )


def _processes_mentioning(text: str) -> dict[int, list[str]]:
    """{pid: argv} of the processes with `text` in an argument."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            raw = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        argv = raw.decode(errors="replace").split("\0")
        if any(text in a for a in argv) and int(pid) != os.getpid():
            out[int(pid)] = argv
    return out


@pytest.mark.slow
def test_an_experiment_completes_resumes_and_stops_cleanly(tmp_path):
    pytest.importorskip("xmanager")
    data_dir, home = tmp_path / "data", tmp_path / "home"
    home.mkdir()
    root = tmp_path / "grid"
    first = _launch(root, data_dir, home, "--set=total_steps=1", "--set=eval_every=1")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "ttrl-s0: ok" in first.stdout and "ttrl-s1: ok" in first.stdout
    records = [json.loads(line) for line in (root / "xm_experiments.jsonl").open()]
    assert sorted(r["name"] for r in records) == ["ttrl-s0", "ttrl-s1"]
    assert sorted(r["work_unit_id"] for r in records) == [1, 2]
    assert len({r["experiment_id"] for r in records}) == 1
    assert {r["workdir"] for r in records} == {str(root / "ttrl-s0"), str(root / "ttrl-s1")}
    assert all("--config.method=ttrl" in r["args"] for r in records)
    assert (
        json.loads((root / "comparison.json").read_text())["summary"]["ttrl"][
            "eval/unlabeled/mean@2"
        ]["n"]
        == 2
    )

    # The same command again: every unit resumes at its end, nothing is trained twice.
    before = {s: (root / s / "metrics.jsonl").read_text() for s in ("ttrl-s0", "ttrl-s1")}
    second = _launch(root, data_dir, home, "--set=total_steps=1", "--set=eval_every=1")
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.count("resuming from") == 2
    for name, text in before.items():
        assert (root / name / "metrics.jsonl").read_text() == text
    records = [json.loads(line) for line in (root / "xm_experiments.jsonl").open()]
    assert len(records) == 4 and len({r["experiment_id"] for r in records}) == 2

    # SIGTERM mid-run: every unit saves, and no process of the experiment survives.
    long_root = tmp_path / "long"
    launcher = _launch(
        long_root, data_dir, home, "--set=total_steps=200", "--set=save_every=1", wait=False
    )
    metrics = [long_root / f"ttrl-s{s}" / "metrics.jsonl" for s in (0, 1)]
    try:
        deadline = time.monotonic() + 600
        while not all(m.exists() for m in metrics):
            assert time.monotonic() < deadline and launcher.poll() is None, "units did not start"
            time.sleep(1)
        trainers = [
            pid
            for pid, argv in _processes_mentioning(str(long_root)).items()
            if argv[1:3] == ["-m", "tempo_jax.cli"]
        ]
        groups = {os.getpgid(pid) for pid in trainers}  # each with its grading workers
        assert len(trainers) == 2 and len(groups) == 2 and os.getpgid(0) not in groups
    finally:
        launcher.send_signal(signal.SIGTERM)  # also on a failure: never leave the units running
        out, _ = launcher.communicate(timeout=600)
    assert launcher.returncode == 128 + signal.SIGTERM, out
    assert out.count("Stopped on SIGTERM") == 2, out
    assert _processes_mentioning(str(long_root)) == {}
    for pgid in groups:
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)
    for m in metrics:
        last = json.loads(m.read_text().splitlines()[-1])["step"]
        assert (m.parent / "checkpoints" / str(last)).is_dir()  # saved where it stopped
