"""Sharded `load_hf`: each parameter is built in its sharding from safetensors slices, equal to
the unsharded load; every process reads only the bytes its devices hold (counted), each once;
`save_hf` of a sharded model gathers one tensor at a time and writes the same checkpoint."""

import pathlib

import jax
import numpy as np
import pytest
from flax import nnx
from test_parallel_multihost import run_two_processes

from tempo_jax import models, parallel

WORKER = pathlib.Path(__file__).resolve().with_name("hf_load_worker.py")


def _flat(model) -> dict[str, np.ndarray]:
    state = jax.device_get(nnx.state(model))
    return {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> pathlib.Path:
    """The tiny Qwen3 policy (untied, D = 64) as a 4-file transformers checkpoint, float32."""
    path = tmp_path_factory.mktemp("hf") / "policy"
    policy = models.Policy(models.get_preset("tiny"), rngs=nnx.Rngs(3))
    models.save_hf(policy, path, max_shard_bytes=200_000)
    assert len(list(path.glob("*.safetensors"))) == 4
    return path


def _file_bytes(path: pathlib.Path) -> int:
    """Tensor bytes stored in a checkpoint (file sizes minus headers)."""
    total = 0
    for file in path.glob("*.safetensors"):
        data = file.read_bytes()
        total += len(data) - 8 - int.from_bytes(data[:8], "little")
    return total


def test_sharded_load_equals_the_unsharded_load_reading_each_byte_once(devices, checkpoint):
    reference = models.load_hf(checkpoint)
    mesh = parallel.make_mesh((2, 2, 2))
    read: list[int] = []
    sharded = models.load_hf(checkpoint, mesh=mesh, read_bytes=read)
    expected = parallel.state_shardings(nnx.state(sharded), mesh)
    for (path, x), (_, sharding) in zip(
        nnx.to_flat_state(nnx.state(sharded)), nnx.to_flat_state(expected), strict=True
    ):
        assert x.get_value().sharding == sharding.get_value(), path
    ref = _flat(reference)
    got = _flat(sharded)
    assert ref.keys() == got.keys()
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    # Every stored byte was read exactly once, though data x fsdp x tensor = 8 devices each
    # needed a slice and shards replicated over `data` live on 2 devices each.
    assert read == [_file_bytes(checkpoint)]


@pytest.mark.slow
def test_two_processes_each_read_only_their_slices(devices, checkpoint, tmp_path):
    run_two_processes(tmp_path, worker=WORKER, args=(str(checkpoint),))
    results = [dict(np.load(tmp_path / f"process_{pid}.npz")) for pid in range(2)]
    reference = _flat(models.load_hf(checkpoint))
    total = _file_bytes(checkpoint)
    for r in results:
        # Exactly the bytes of this process's own shards: about half the checkpoint (weights
        # split over fsdp = 8; q/k norms, [L, Dh], replicated and read by both).
        assert int(r["read_bytes"]) == int(r["shard_bytes"])
        assert 0.45 * total < int(r["read_bytes"]) < 0.6 * total
        for key, value in reference.items():
            np.testing.assert_array_equal(r[f"param/{key}"], value, err_msg=key)
    # save_hf gathered the sharded model one tensor at a time; the files load back equal.
    saved = _flat(models.load_hf(tmp_path / "saved"))
    for key, value in reference.items():
        np.testing.assert_array_equal(saved[key], value, err_msg=key)
    assert (tmp_path / "saved" / "model.safetensors.index.json").exists()
