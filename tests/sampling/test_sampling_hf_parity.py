"""Greedy rollouts equal transformers' greedy `generate` token for token, same weights.

The tiny policy is exported with `save_hf` and loaded with `AutoModelForCausalLM`. The prompts are
left-padded to different lengths (12, 9 and 5 real tokens): transformers' `generate` derives
position ids from the attention mask (cumsum - 1), as the sampler does, so left padding is
handled on both sides. One row's own greedy token is made the EOS id, so the comparison also
covers a row stopping early (transformers pads finished rows with pad_token_id, the sampler
with pad_id; both are PAD here) while the other rows continue.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from sampling_helpers import MAX_NEW, PAD, UNUSED_EOS, VOCAB

import tempo_jax.models as tm
from tempo_jax.sampling import FINISH_EOS, SamplingParams, StopCriteria


@pytest.fixture(scope="module")
def hf_model(policy, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_policy")
    tm.save_hf(policy, path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval()


def _hf_greedy(model, tokens: np.ndarray, mask: np.ndarray, eos: int) -> np.ndarray:
    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            max_new_tokens=MAX_NEW,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=PAD,
        )
    new = out[:, tokens.shape[1] :].numpy()
    # generate stops once every row is done; the sampler always returns MAX_NEW slots.
    return np.pad(new, ((0, 0), (0, MAX_NEW - new.shape[1])), constant_values=PAD)


def test_greedy_equals_transformers_generate(hf_model, sampler, state, prompts):
    greedy = SamplingParams(greedy=True)
    free = sampler.generate(state, *prompts, sampling=greedy)
    assert not np.any(np.asarray(free.tokens) == UNUSED_EOS)
    np.testing.assert_array_equal(free.tokens, _hf_greedy(hf_model, *prompts, eos=UNUSED_EOS))

    eos = int(free.tokens[1, 3])  # row 1 stops at step 3 (or at an earlier occurrence)
    stop = StopCriteria.create((eos,), ((UNUSED_EOS, UNUSED_EOS),), vocab_size=VOCAB)
    stopped = sampler.generate(state, *prompts, sampling=greedy, stop=stop)
    assert stopped.finish_reason[1] == FINISH_EOS and stopped.lengths[1] <= 4
    assert int(np.max(stopped.lengths)) == MAX_NEW  # another row runs on
    np.testing.assert_array_equal(stopped.tokens, _hf_greedy(hf_model, *prompts, eos=eos))
