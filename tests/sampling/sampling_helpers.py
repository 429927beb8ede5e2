"""Helpers shared by the sampling tests: teacher-forced references and a compile counter."""

from __future__ import annotations

import jax
import numpy as np

from tempo_jax.sampling import FINISH_EOS, FINISH_LENGTH, FINISH_STOP, Rollouts

VOCAB = 256
PAD = 0
MAX_NEW = 8
# Never produced by the tests' greedy rollouts unless a test picks it (checked where it matters).
UNUSED_EOS = VOCAB - 1


def teacher_forced_logits(policy, rollouts: Rollouts) -> np.ndarray:
    """[N, L, V] float64 logits predicting each response slot, from one full forward pass."""
    tokens, mask = rollouts.sequences()
    logits = np.asarray(policy(tokens, mask), np.float64)
    prompt_width = rollouts.prompt_tokens.shape[1]
    return logits[:, prompt_width - 1 : -1]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def expected_end(tokens: np.ndarray, eos_ids, stop_sequences, max_new: int) -> tuple[int, int]:
    """(length, finish reason) of a response whose untruncated continuation is `tokens`."""
    for t in range(max_new):
        if tokens[t] in eos_ids:
            return t + 1, FINISH_EOS
        for seq in stop_sequences:
            if t + 1 >= len(seq) and tuple(tokens[t + 1 - len(seq) : t + 1]) == tuple(seq):
                return t + 1, FINISH_STOP
    return max_new, FINISH_LENGTH


class CompileCounter:
    """Counts lowerings to XLA (every compile starts with one, persistent-cache hit or not)."""

    def __init__(self):
        self.count = 0

    def __call__(self, event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            self.count += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self)
