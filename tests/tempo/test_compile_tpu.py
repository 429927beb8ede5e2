"""`tempo-jax compile` for a TPU topology (the `tpu` test group: `pip install '.[tpu]'`; skipped
without libtpu). The micro config on v5p:2x2x4, 16 chips, compiled by libtpu on this host."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tempo_jax.parallel.topology import libtpu_available

ROOT = pathlib.Path(__file__).resolve().parents[2]
MICRO = ROOT / "tests" / "tempo" / "tempo_micro.py"

pytestmark = [
    pytest.mark.tpu,
    pytest.mark.skipif(not libtpu_available(), reason="needs libtpu: pip install '.[tpu]'"),
]


def test_micro_config_compiles_for_a_v5p_slice(tmp_path):
    out = tmp_path / "report.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("XLA_FLAGS", None)  # the 16 devices are the topology's, not fake CPU devices
    command = [
        sys.executable, "-m", "tempo_jax.cli", "compile", f"--config={MICRO}",
        "--topology=v5p:2x2x4", f"--out={out}", "--config.data.prompts_per_step=8",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["chips"] == 16 and report["chip"]["name"] == "TPU v5p"
    assert report["mesh"] == {"data": 1, "fsdp": 16, "tensor": 1}
    assert report["attention"] == "splash"  # model.attention=auto on TPU devices
    for f in report["functions"]:
        assert f["status"] == "ok", f
        # On TPU the executable's code is counted: every field is filled.
        assert f["code_bytes"] > 0 and f["temp_bytes"] > 0 and f["argument_bytes"] > 0
        assert f["hbm_fraction"] < 0.01  # a 20k-parameter model on 95 GiB chips
