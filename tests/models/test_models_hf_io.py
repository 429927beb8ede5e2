"""load_hf / save_hf round trips with transformers, sharded checkpoints, and bad input."""

from __future__ import annotations

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from models_helpers import hf_outputs, run
from safetensors.numpy import load_file, save_file

import tempo_jax.models as tm

PARITY_TOL = 1e-4


def _state_arrays(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]


@pytest.mark.parametrize("name", ["qwen3", "qwen3_tied", "olmo3", "qwen3_critic"])
def test_save_hf_then_transformers_from_pretrained(hf_cases, batch, tmp_path, name):
    case = hf_cases[name]
    tm.save_hf(case.ours, tmp_path)
    auto = (
        transformers.AutoModelForTokenClassification
        if case.role == "critic"
        else transformers.AutoModelForCausalLM
    )
    reloaded = auto.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(reloaded) is type(case.hf)
    # Bit-exact weights: every tensor transformers reads back equals the one it saved.
    original = case.hf.state_dict()
    for key, value in reloaded.state_dict().items():
        torch.testing.assert_close(value, original[key], rtol=0, atol=0, msg=key)
    tokens, mask = batch
    ours = run(case.ours, tokens, mask)
    theirs = hf_outputs(reloaded, tokens, mask)
    if case.role == "critic":
        theirs = theirs[..., 0]
    assert np.abs(ours - theirs)[mask.astype(bool)].max() < PARITY_TOL
    if name == "qwen3_tied":
        assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")


def test_load_sharded_transformers_checkpoint(hf_cases, batch, tmp_path):
    case = hf_cases["olmo3"]
    case.hf.save_pretrained(tmp_path, max_shard_size="40KB")
    shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "model.safetensors.index.json").exists()
    loaded = tm.load_hf(tmp_path)
    for a, b in zip(_state_arrays(loaded), _state_arrays(case.ours), strict=True):
        np.testing.assert_array_equal(a, b)
    tokens, mask = batch
    ref = hf_outputs(case.hf, tokens, mask)
    assert np.abs(run(loaded, tokens, mask) - ref)[mask.astype(bool)].max() < PARITY_TOL


def test_save_hf_sharded_and_bfloat16_round_trip(hf_cases, batch, tmp_path):
    model = tm.with_dtypes(hf_cases["qwen3"].ours, dtype="bfloat16", param_dtype="bfloat16")
    tm.save_hf(model, tmp_path, max_shard_bytes=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert not (tmp_path / "model.safetensors").exists()
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = tm.load_hf(tmp_path, dtype="bfloat16")
    assert loaded.config == model.config
    for a, b in zip(_state_arrays(loaded), _state_arrays(model), strict=True):
        assert a.dtype == b.dtype == np.dtype("bfloat16")
        np.testing.assert_array_equal(a, b)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.dtype == torch.bfloat16
    # A bfloat16 checkpoint loads into float32 parameters on request.
    assert tm.load_hf(tmp_path, dtype="float32").model.norm[...].dtype == np.float32


def test_olmo3_critic_round_trip(hf_cases, batch, tmp_path):
    """transformers has no Olmo3ForTokenClassification; our own format still round-trips."""
    critic = tm.critic_from_policy(hf_cases["olmo3"].ours)
    tm.save_hf(critic, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["Olmo3ForTokenClassification"]
    loaded = tm.load_hf(tmp_path, role="critic")
    tokens, mask = batch
    np.testing.assert_array_equal(run(loaded, tokens, mask), run(critic, tokens, mask))


def test_save_hf_overwrites_a_previous_sharded_save(hf_cases, tmp_path):
    model = hf_cases["qwen3"].ours
    tm.save_hf(model, tmp_path, max_shard_bytes=20_000)
    tm.save_hf(model, tmp_path)
    assert not (tmp_path / "model.safetensors.index.json").exists()
    loaded = tm.load_hf(tmp_path)
    np.testing.assert_array_equal(loaded.lm_head[...], model.lm_head[...])


# --- bad input ---------------------------------------------------------------------------------


@pytest.fixture
def checkpoint(hf_cases, tmp_path) -> pathlib.Path:
    """A writable copy of the qwen3 policy directory saved by transformers."""
    path = tmp_path / "ckpt"
    shutil.copytree(hf_cases["qwen3"].path, path)
    return path


def _edit_tensors(path: pathlib.Path, edit) -> None:
    file = path / "model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def _edit_config(path: pathlib.Path, **changes) -> None:
    file = path / "config.json"
    config = json.loads(file.read_text())
    config.update(changes)
    file.write_text(json.dumps(config))


Q0 = "model.layers.0.self_attn.q_proj.weight"


def _expect(path, match: str, *, tensor: str | None = None, file: str = "", role="policy"):
    with pytest.raises(tm.CheckpointError, match=match) as info:
        tm.load_hf(path, role=role)
    message = str(info.value)
    assert file in message
    if tensor is not None:
        assert info.value.tensor == tensor and repr(tensor) in message
    return message


def test_missing_directory(tmp_path):
    _expect(tmp_path / "nope", "checkpoint directory not found", file="nope")


def test_missing_config(checkpoint):
    (checkpoint / "config.json").unlink()
    _expect(checkpoint, "file not found", file="config.json")


def test_unparsable_config(checkpoint):
    (checkpoint / "config.json").write_text("{not json")
    _expect(checkpoint, "cannot parse JSON", file="config.json")


def test_unknown_architecture(checkpoint):
    _edit_config(checkpoint, model_type="llama", architectures=["LlamaForCausalLM"])
    _expect(checkpoint, "unknown architecture: model_type 'llama'", file="config.json")


def test_role_mismatch(checkpoint):
    _expect(checkpoint, "critic_from_policy", file="config.json", role="critic")


def test_unsupported_setting(checkpoint):
    _edit_config(checkpoint, attention_bias=True)
    _expect(checkpoint, "attention_bias", file="config.json")


def test_no_safetensors_and_pickle_not_read(checkpoint):
    (checkpoint / "model.safetensors").unlink()
    (checkpoint / "pytorch_model.bin").write_bytes(b"\x80\x04not read")
    _expect(checkpoint, r"no model.safetensors .*pytorch_model.bin", file=str(checkpoint))


def test_missing_tensor(checkpoint):
    _edit_tensors(checkpoint, lambda t: t.pop(Q0))
    _expect(checkpoint, "missing tensor", tensor=Q0, file="model.safetensors")


def test_unexpected_tensor(checkpoint):
    name = "model.layers.0.self_attn.q_proj.bias"
    _edit_tensors(checkpoint, lambda t: t.update({name: np.zeros(64, np.float32)}))
    _expect(checkpoint, "unexpected tensor", tensor=name, file="model.safetensors")


def test_shape_mismatch(checkpoint):
    _edit_tensors(checkpoint, lambda t: t.update({Q0: np.zeros((64, 31), np.float32)}))
    _expect(
        checkpoint,
        r"shape mismatch: expected \(64, 32\), found \(64, 31\)",
        tensor=Q0,
        file="model.safetensors",
    )


def test_unconvertible_dtype(checkpoint):
    _edit_tensors(checkpoint, lambda t: t.update({Q0: np.zeros((64, 32), np.int32)}))
    _expect(checkpoint, "dtype I32 cannot be converted", tensor=Q0, file="model.safetensors")


def test_corrupt_safetensors(checkpoint):
    (checkpoint / "model.safetensors").write_bytes(b"\x05\x00garbage")
    _expect(checkpoint, "not a readable safetensors file", file="model.safetensors")


def test_index_names_a_missing_shard(hf_cases, tmp_path):
    hf_cases["qwen3"].hf.save_pretrained(tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    (tmp_path / victim).unlink()
    _expect(tmp_path, "shard file not found", file=victim)


def test_index_lists_a_tensor_its_shard_lacks(hf_cases, tmp_path):
    hf_cases["qwen3"].hf.save_pretrained(tmp_path, max_shard_size="40KB")
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    other = next(
        f for n, f in index["weight_map"].items() if n != Q0 and f != index["weight_map"][Q0]
    )
    index["weight_map"][Q0] = other
    index_path.write_text(json.dumps(index))
    _expect(tmp_path, "listed in the index but not in the file", tensor=Q0, file=other)


def test_tied_checkpoint_with_a_different_lm_head(hf_cases, tmp_path):
    path = tmp_path / "tied"
    shutil.copytree(hf_cases["qwen3_tied"].path, path)
    _edit_tensors(path, lambda t: t.update({"lm_head.weight": np.ones((128, 32), np.float32)}))
    _expect(
        path,
        "lm_head.weight differs from the embedding",
        tensor="lm_head.weight",
        file="model.safetensors",
    )


def test_tied_checkpoint_with_an_equal_lm_head_loads(hf_cases, tmp_path):
    path = tmp_path / "tied"
    shutil.copytree(hf_cases["qwen3_tied"].path, path)
    _edit_tensors(path, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"]}))
    loaded = tm.load_hf(path)
    np.testing.assert_array_equal(
        loaded.output_embedding(), hf_cases["qwen3_tied"].ours.output_embedding()
    )
