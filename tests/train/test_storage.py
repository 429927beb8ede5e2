"""The path abstraction on a local disk and on a (fake) GCS bucket, the metrics writers through it,
and TensorBoard event files: purged past a step on resume, non-finite values kept."""

import math

import fake_gcs  # tests/fake_gcs.py (tests/ is on sys.path: conftest.py lives there)
import pytest

from tempo_jax.train import event_files, storage
from tempo_jax.train.metric_writers import JsonlWriter, MetricWriters, read_jsonl


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
    return str(tmp_path) if request.param == "local" else fake_gcs.new_bucket() + "/run"


def test_absolute_keeps_uris_and_anchors_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("gs://b/runs/x") == "gs://b/runs/x"
    assert storage.absolute("runs/x") == str(tmp_path / "runs" / "x")
    assert storage.is_remote("gs://b") and not storage.is_remote("/tmp/gs:")


def test_write_append_read_and_copy_tree(root, tmp_path):
    path = f"{root}/sub/a.txt"
    storage.write_atomic(path, "one\n")
    storage.append(path, "two\n")
    storage.append(f"{root}/new.txt", "x")
    assert storage.read_text(path) == "one\ntwo\n"
    assert storage.read_text(f"{root}/new.txt") == "x"
    storage.write_atomic(path, b"replaced")
    assert storage.read_text(path) == "replaced"
    src = tmp_path / "src"
    (src / "deep").mkdir(parents=True)
    (src / "top.bin").write_bytes(b"\x00\x01")
    (src / "deep" / "f.json").write_text("{}")
    storage.copy_tree(src, f"{root}/copy")
    assert storage.path(f"{root}/copy/top.bin").read_bytes() == b"\x00\x01"
    assert storage.read_text(f"{root}/copy/deep/f.json") == "{}"
    if storage.is_remote(root):  # really objects in the bucket, not a local stand-in
        names = fake_gcs.list_objects(root)
        assert any(n.endswith("/run/sub/a.txt") for n in names)
        assert any(n.endswith("/run/copy/deep/f.json") for n in names)


def test_jsonl_append_and_resume_truncation(root):
    w = JsonlWriter(f"{root}/metrics.jsonl")
    for step in range(1, 5):
        w.write({"step": step, "loss": step / 4, "bad": math.nan if step == 2 else 1.0})
    assert w.truncate_after(2) == 2
    w.write({"step": 3, "loss": 9.0, "bad": math.inf})
    records = read_jsonl(w.path)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert math.isnan(records[1]["bad"]) and records[2] == {"step": 3, "loss": 9.0, "bad": math.inf}


def _write_steps(workdir, steps, scale, truncate):
    writers = MetricWriters(workdir, total_steps=10, progress=False)
    writers.truncate_after(truncate)
    for step in steps:
        value = math.nan if step == 3 else scale * step
        writers.write({"step": step, "phase": "m", "loss": value, "inf": -math.inf})
    writers.close()


def test_tensorboard_after_resume_has_one_value_per_step_and_keeps_non_finite(root):
    _write_steps(root, [1, 2, 3, 4], scale=1.0, truncate=-1)
    # The run restored its step-2 checkpoint: steps 3 and 4 are written again.
    _write_steps(root, [3, 4, 5], scale=10.0, truncate=2)
    logdir = f"{root}/tensorboard"
    assert len(event_files.event_paths(logdir)) == 2
    loss = event_files.scalars(logdir)["loss"]
    assert [s for s, _ in loss] == [1, 2, 3, 4, 5]
    assert [v for s, v in loss if s != 3] == [1.0, 2.0, 40.0, 50.0]
    assert math.isnan(dict(loss)[3])  # NaN recorded, not dropped
    assert [v for _, v in event_files.scalars(logdir)["inf"]] == [-math.inf] * 5
    # A fresh start in the same workdir (no checkpoint) drops every earlier summary.
    _write_steps(root, [1], scale=3.0, truncate=-1)
    assert event_files.scalars(logdir)["loss"] == [(1, 3.0)]


def test_torn_event_file_tail_is_dropped(tmp_path):
    _write_steps(str(tmp_path), [1, 2], scale=1.0, truncate=-1)
    (path,) = event_files.event_paths(tmp_path / "tensorboard")
    data = storage.path(path).read_bytes()
    storage.write_atomic(path, data[:-3])  # a crash mid-record: step 2's last scalar, "inf"
    expected = {"loss": [(1, 1.0), (2, 2.0)], "inf": [(1, -math.inf)]}
    assert event_files.scalars(tmp_path / "tensorboard") == expected
    assert event_files.purge_after(tmp_path / "tensorboard", 5) == 0
    assert len(storage.path(path).read_bytes()) < len(data) - 3  # torn record removed
    assert event_files.scalars(tmp_path / "tensorboard") == expected
