"""Metric sinks: JSONL durability and truncation on resume, TensorBoard events, report files."""

import glob
import json
import math
import os

import numpy as np

from tempo_jax.train import run_report
from tempo_jax.train.metric_writers import JsonlWriter, MetricWriters, read_jsonl


def test_jsonl_roundtrip_numpy_scalars_and_truncate(tmp_path):
    w = JsonlWriter(str(tmp_path / "m.jsonl"))
    for step in range(1, 6):
        w.write({"step": np.int32(step), "phase": "m_step", "loss": np.float32(step / 2)})
    with open(w.path, "a") as f:
        f.write('{"step": 6, "loss": 0.')  # torn by a crash
    assert [r["step"] for r in read_jsonl(w.path)] == [1, 2, 3, 4, 5]
    assert w.truncate_after(3) == 3
    records = read_jsonl(w.path)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[2] == {"step": 3, "phase": "m_step", "loss": 1.5}


def test_metric_writers_write_tensorboard_and_report(tmp_path):
    writers = MetricWriters(str(tmp_path), total_steps=4, progress_keys=("loss",), progress=False)
    for step in range(1, 5):
        rec = {"step": step, "phase": "m_step", "loss": 1.0 / step}
        if step % 2 == 0:
            rec["eval/unlabeled/mean@4"] = 0.1 * step
            rec["eval/labeled/mean@4"] = 0.2 * step
            rec["eval/unlabeled/critic/brier"] = 0.5 / step
        writers.write(rec)
    writers.close()
    assert len(glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))) == 1
    summary_path, plot_path = run_report.write_report(str(tmp_path), title="t")
    text = open(summary_path).read()
    assert "eval/unlabeled/mean@4" in text and "0.4000" in text
    # brier: lower is better, so best is the last (0.125 at step 4)
    brier_line = [ln for ln in text.splitlines() if "brier" in ln][0]
    assert brier_line.split()[-2:] == ["0.1250", "4"]
    with open(plot_path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(plot_path) > 5000


def test_eval_series_skips_nan():
    recs = [{"step": 1, "eval/u/auroc": math.nan}, {"step": 2, "eval/u/auroc": 0.7}]
    assert run_report.eval_series(recs) == {"eval/u/auroc": [(2, 0.7)]}
    json.dumps(recs[1])
