"""launch/tpu_pod.py: the gcloud commands it builds, their quoting, and that the per-worker
training script really starts `tempo-jax train` in the background with every argument intact."""

import importlib.util
import os
import pathlib
import shlex
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load():
    spec = importlib.util.spec_from_file_location("tpu_pod", ROOT / "launch" / "tpu_pod.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["tpu_pod"] = module
    spec.loader.exec_module(module)
    return module


tpu_pod = load()
BASE = ["--tpu=pod-1", "--zone=us-east5-a", "--config=configs/qwen3_14b_aime.py:ttrl"]


def test_every_step_runs_on_all_workers_in_order():
    args = tpu_pod.parse_args([*BASE, "--workdir=/mnt/runs/x", "--project=proj"])
    cmds = tpu_pod.commands(args)
    assert cmds[0][:2] == ["git", "archive"]  # committed code only
    assert [c[4] for c in cmds[1:]] == ["scp", "ssh", "ssh", "ssh"]
    for c in cmds[1:]:
        assert c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]
        assert "--worker=all" in c and "--zone=us-east5-a" in c and "--project=proj" in c
    install = cmds[3][6].removeprefix("--command=")
    assert install == "cd \"$HOME\"/tempo_jax && pip install -e . 'jax[tpu]'"
    train = cmds[4][6].removeprefix("--command=")
    assert "--config.parallel.distributed.cluster_detection=True" in train
    only_train = tpu_pod.commands(tpu_pod.parse_args([*BASE, "--workdir=/w", "--steps=train"]))
    assert len(only_train) == 1 and only_train[0][4] == "ssh"


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--workdir=runs/x"], "absolute path"),
        (["--workdir=/w", "--steps=ship,deploy"], "unknown \\['deploy'\\]"),
        (["--workdir=/w", "--env=NO_VALUE"], "NAME=VALUE"),
        (["--workdir=/w", "--env=1BAD=x"], "NAME=VALUE"),
    ],
)
def test_bad_arguments_are_refused(extra, message, capsys):
    with pytest.raises(SystemExit) as e:
        tpu_pod.parse_args([*BASE, *extra])
    assert e.value.code == 2
    assert message.replace("\\", "") in capsys.readouterr().err


def test_the_worker_script_starts_training_with_its_arguments_intact(tmp_path):
    # A fake `tempo-jax` records its arguments and environment; the script runs in bash exactly
    # as ssh --command would run it, with a workdir and a value that need quoting.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "record.txt"
    fake = bin_dir / "tempo-jax"
    fake.write_text(
        f'#!/bin/bash\nprintf "%s\\n" "$PWD" "$TEMPO_ROOT" "$@" > {shlex.quote(str(record))}\n'
        'echo "training"\n'
    )
    fake.chmod(0o755)
    repo = tmp_path / "my repo"
    repo.mkdir()
    workdir = tmp_path / "runs dir" / "x"
    args = tpu_pod.parse_args(
        [
            *BASE,
            f"--workdir={workdir}",
            f"--repo_dir={repo}",
            "--env=TEMPO_ROOT=/data/with space",
            "--set=rollout.n=4",
            "--steps=train",
        ]
    )
    script = tpu_pod.train_script(args)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    subprocess.run(["bash", "-c", script], check=True, env=env, timeout=30)
    deadline = time.monotonic() + 20
    while not record.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    lines = record.read_text().splitlines()
    assert lines[0] == str(repo) and lines[1] == "/data/with space"
    assert lines[2:] == [
        "train",
        "--config=configs/qwen3_14b_aime.py:ttrl",
        f"--workdir={workdir}",
        "--config.parallel.distributed.cluster_detection=True",
        "--config.progress_bar=False",
        "--config.rollout.n=4",
    ]
    logs = list((workdir / "logs").iterdir())
    assert len(logs) == 1 and logs[0].name.endswith(".log")
    assert logs[0].read_text() == "training\n"


def test_dry_run_prints_and_runs_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a git archive would fail here: it must not run
    assert tpu_pod.main([*BASE, "--workdir=/w", "--dry_run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and out[0].startswith("git archive")
