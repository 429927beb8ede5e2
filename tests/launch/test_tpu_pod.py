"""launch/tpu_pod.py: the gcloud commands it builds (one slice, several slices), their quoting,
and that the per-worker scripts really start `tempo-jax train` detached with every argument
intact, stream it to the end in foreground mode with its exit code, and stop it with SIGTERM."""

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
    assert install == "cd \"$HOME\"/tempo_jax && pip install -e '.[gcs]' 'jax[tpu]'"
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
    (log,) = (workdir / "logs").glob("*.log")
    assert log.read_text() == "training\n"
    rc = log.with_suffix(".rc")
    while not rc.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rc.read_text() == "0\n"


def test_dry_run_prints_and_runs_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a git archive would fail here: it must not run
    assert tpu_pod.main([*BASE, "--workdir=/w", "--dry_run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and out[0].startswith("git archive")


def _fake_trainer(tmp_path, body: str) -> dict:
    """A `tempo-jax` on PATH running `body` (bash); returns the environment to use."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "tempo-jax"
    fake.write_text(f"#!/bin/bash\n{body}\n")
    fake.chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")


def _foreground_args(tmp_path, *extra):
    return tpu_pod.parse_args(
        [*BASE, f"--workdir={tmp_path / 'w'}", f"--repo_dir={tmp_path}", "--foreground", *extra]
    )


def test_foreground_streams_the_log_and_returns_the_runs_exit_code(tmp_path):
    env = _fake_trainer(tmp_path, 'echo "step 1"; sleep 1.5; echo "step 2"; exit 3')
    script = tpu_pod.train_script(_foreground_args(tmp_path))
    done = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 3
    assert done.stdout.splitlines() == ["step 1", "step 2"]


def test_stop_sends_sigterm_and_the_foreground_script_waits_for_the_save(tmp_path):
    # The fake trainer saves and exits 0 on SIGTERM, as the real one does.
    pid_file = tmp_path / "trainer.pid"
    body = (
        f"echo $$ > {shlex.quote(str(pid_file))}; trap 'sleep 0.5; echo saved; exit 0' TERM; "
        "echo started; while true; do sleep 0.1; done"
    )
    env = _fake_trainer(tmp_path, body)
    args = _foreground_args(tmp_path)
    run = subprocess.Popen(
        ["bash", "-c", tpu_pod.train_script(args)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert run.stdout.readline() == "started\n"
    subprocess.run(["bash", "-c", tpu_pod.stop_script(args)], env=env, check=True, timeout=30)
    out, _ = run.communicate(timeout=60)
    assert run.returncode == 0 and out == "saved\n"
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_several_slices_make_one_multislice_run(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [*BASE, "--tpu=s0,s1", "--workdir=gs://bucket/runs/x", "--dry_run"]
    argv = [a for a in argv if a != "--tpu=pod-1"]
    assert tpu_pod.main(argv) == 0
    lines = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "s0"]
    assert [(c[4], c[5]) for c in lines[2:]] == [
        ("scp", "/tmp/tempo_jax.tar.gz"),
        ("scp", "/tmp/tempo_jax.tar.gz"),
        ("ssh", "s0"),
        ("ssh", "s1"),
        ("ssh", "s0"),
        ("ssh", "s1"),
        ("ssh", "s0"),
        ("ssh", "s1"),
    ]
    train0, train1 = lines[-2][6], lines[-1][6]
    for slice_id, script in enumerate((train0, train1)):
        assert f"MEGASCALE_SLICE_ID={slice_id} " in script
        assert "MEGASCALE_NUM_SLICES=2 " in script
        assert "MEGASCALE_COORDINATOR_ADDRESS='<worker 0 of s0>' " in script
        assert "--workdir=gs://bucket/runs/x" in script
        assert '"$HOME"/tempo_jax_logs/x-' in script  # a bucket: logs stay on each host


def test_bad_tpu_lists_are_refused(capsys):
    for tpu in ("--tpu=a,a", "--tpu=,"):
        with pytest.raises(SystemExit):
            tpu_pod.parse_args([tpu, *BASE[1:], "--workdir=/w"])
        assert "--tpu" in capsys.readouterr().err
