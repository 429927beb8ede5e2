"""`tempo-jax export`: a trained workdir's policy and critic load in transformers and reproduce
the trained networks' logits and values."""

import json
import pathlib

import numpy as np
import pytest
import torch
from cli_run import run_cli
from flax import nnx
from tempo_micro import host, micro_config, trees_equal
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

from tempo_jax import models, parallel
from tempo_jax.tempo.loop import Trainer
from tempo_jax.train.hf_export import export_hf, model_config_from_dict, model_config_to_dict

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step tempo run: (workdir, final state, run)."""
    data_dir = str(tmp_path_factory.mktemp("tempo_export_data"))
    workdir = tmp_path_factory.mktemp("export_run")
    trainer = Trainer(micro_config(data_dir), str(workdir))
    try:
        state = trainer.train()
    finally:
        trainer.close()
    return workdir, state, trainer.run


def test_model_config_round_trips_through_a_dict():
    for name in ("tiny", "tiny_olmo3", "olmo3_7b"):
        config = models.get_preset(name, eos_token_id=(3, 4))
        assert model_config_from_dict(model_config_to_dict(config)) == config
    with pytest.raises(ValueError, match=r"ckpt: unknown ModelConfig fields \['bogus'\]"):
        model_config_from_dict({**model_config_to_dict(config), "bogus": 1}, "ckpt")


def test_cli_export_reproduces_the_trained_logits_in_transformers(trained, tmp_path):
    workdir, state, run = trained
    out = tmp_path / "hf"
    proc = run_cli("export", f"--workdir={workdir}", f"--out={out}", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["policy:", str(out / "policy"), "critic:", str(out / "critic")]

    rng = np.random.default_rng(0)
    vocab = run.data.tokenizer.vocab_size
    tokens = rng.integers(0, vocab, (2, 12)).astype(np.int32)
    mask = np.ones_like(tokens)
    mask[1, 9:] = 0  # right padding: positions agree on the real tokens
    real = mask.astype(bool)

    policy = nnx.merge(run.policy_graphdef, state.policy.params)
    ours = np.asarray(policy(tokens, mask))
    hf = AutoModelForCausalLM.from_pretrained(out / "policy", dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(
            input_ids=torch.from_numpy(tokens).long(), attention_mask=torch.from_numpy(mask)
        ).logits.numpy()
    assert theirs.shape == (2, 12, hf.config.vocab_size) and hf.config.vocab_size >= vocab
    assert np.abs(ours[real] - theirs[real]).max() < 1e-4

    critic = nnx.merge(run.critic_graphdef, state.critic.params)
    values = np.asarray(critic(tokens, mask))
    hf_critic = AutoModelForTokenClassification.from_pretrained(
        out / "critic", dtype=torch.float32
    ).eval()
    with torch.no_grad():
        hf_values = (
            hf_critic(
                input_ids=torch.from_numpy(tokens).long(), attention_mask=torch.from_numpy(mask)
            )
            .logits[..., 0]
            .numpy()
        )
    assert np.abs(values[real] - hf_values[real]).max() < 1e-4
    # The head is the whole value here; a likelihood critic's export says what the head omits.
    note = json.loads((out / "critic" / "tempo_critic.json").read_text())
    assert note["critic_likelihood_weight"] == 0.0


def test_export_of_an_earlier_step_and_clear_errors(trained, tmp_path):
    workdir, state, _ = trained
    written = export_hf(str(workdir), str(tmp_path / "s0"), step=0)
    # Step 0 is the warm-up checkpoint: the initial policy, not the trained one.
    step0 = models.load_hf(written["policy"], role="policy")
    final = models.load_hf(export_hf(str(workdir), str(tmp_path / "last"))["policy"])
    assert trees_equal(host(nnx.state(final, nnx.Param)), host(state.policy.params))
    assert not trees_equal(host(nnx.state(step0, nnx.Param)), host(state.policy.params))
    with pytest.raises(FileNotFoundError, match="no finalized checkpoint for step 7"):
        export_hf(str(workdir), str(tmp_path / "x"), step=7)
    with pytest.raises(FileNotFoundError, match="has no checkpoints/ directory"):
        export_hf(str(tmp_path), str(tmp_path / "x"))
    # Restored over another mesh (the trainer saved over fsdp = 8): the same files' weights.
    mixed = export_hf(str(workdir), str(tmp_path / "mixed"), mesh=parallel.make_mesh((2, 2, 2)))
    again = models.load_hf(mixed["policy"])
    assert trees_equal(host(nnx.state(again, nnx.Param)), host(state.policy.params))
