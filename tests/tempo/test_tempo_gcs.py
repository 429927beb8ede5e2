"""A whole run with its workdir in a (fake) GCS bucket: metrics, config, report, TensorBoard and
Orbax checkpoints all land as objects; a run that lost its newest checkpoint resumes from the one
before and ends bitwise equal (parameters and metrics) to an uninterrupted local run, with one
TensorBoard value per step; export reads the bucket's checkpoint and writes HF files to it."""

import json
import math
import os

import fake_gcs  # tests/fake_gcs.py
import pytest
from tempo_micro import host, metric_lines, micro_config, trees_equal

from tempo_jax.tempo.build import data_dir_for
from tempo_jax.tempo.loop import Trainer
from tempo_jax.train import event_files, storage
from tempo_jax.train.hf_export import export_hf

CHANGES = {
    "total_steps": 4,
    "save_every": 2,
    "eval_every": 2,
    "eval.greedy": False,
    "checkpoint.async_save": True,
}


def run_trainer(config, workdir):
    trainer = Trainer(config, workdir)
    try:
        return trainer.train()
    finally:
        trainer.close()


def test_data_of_a_bucket_workdir_is_built_on_a_local_disk(tmp_path):
    config = micro_config()
    local = data_dir_for(config, "gs://bucket/runs/a")
    assert not storage.is_remote(local) and local != data_dir_for(config, "gs://bucket/runs/b")
    assert data_dir_for(config, str(tmp_path)) == os.path.join(str(tmp_path), "data")


@pytest.mark.slow
def test_a_run_in_a_bucket_resumes_exactly_with_one_tensorboard_value_per_step(tmp_path):
    data_dir = str(tmp_path / "data")
    local = str(tmp_path / "local")
    reference = run_trainer(micro_config(data_dir, **CHANGES), local)

    workdir = fake_gcs.new_bucket() + "/runs/micro"
    # The first run ends at step 3 and then loses its step-3 checkpoint (as if killed before the
    # save finalized): the rerun, given 4 steps, restores step 2 and repeats step 3.
    run_trainer(micro_config(data_dir, **{**CHANGES, "total_steps": 3}), workdir)
    storage.path(f"{workdir}/checkpoints/3").rmtree()
    resumed = run_trainer(micro_config(data_dir, **CHANGES), workdir)

    assert resumed.step == 4
    assert trees_equal(host(resumed.policy), host(reference.policy))
    assert trees_equal(host(resumed.critic), host(reference.critic))
    assert metric_lines(workdir) == metric_lines(local)
    tensorboard = event_files.scalars(f"{workdir}/tensorboard")
    assert [s for s, _ in tensorboard["policy/loss"]] == [1, 2, 3, 4]
    records = [json.loads(line) for line in metric_lines(workdir)]
    nonfinite = {
        k for r in records for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)
    }
    for key in nonfinite:  # recorded in TensorBoard as such
        assert any(not math.isfinite(v) for _, v in tensorboard[key]), key

    objects = fake_gcs.list_objects(workdir)
    for name in (
        "metrics.jsonl",
        "config.json",
        "summary.txt",
        "eval_curves.png",
        "checkpoints/4/tempo_manifest.json",
        "checkpoints/4/policy/manifest.ocdbt",
    ):
        assert any(o.endswith(f"/runs/micro/{name}") for o in objects), name
    assert not any("/runs/micro/checkpoints/3/" in o for o in objects)

    written = export_hf(workdir, f"{workdir}/hf")
    assert written["policy"] == f"{workdir}/hf/policy"
    assert storage.exists(f"{workdir}/hf/policy/config.json")
    assert storage.exists(f"{workdir}/hf/critic/config.json")
