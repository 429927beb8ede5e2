"""Length buckets of the training path: a batch runs on the smallest response bucket holding its
longest response, with the same numbers as the full-length computation and bounded compiles."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tempo_micro import micro_config

from tempo_jax.tempo import functions
from tempo_jax.tempo.loop import Trainer
from tempo_jax.tempo.phases import Timer, critic_update
from tempo_jax.tempo.step_journal import StepJournal
from tempo_jax.train import RLBatch, Sequences

ROWS, PROMPT, LENGTH = 8, 24, 8  # micro config: 4 prompts x 2 samples, P = 24, L = 8


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("bucket_data"))
    config = micro_config(data_dir, "tempo", **{"train.length_buckets": (2, 4)})
    trainer = Trainer(config, str(tmp_path_factory.mktemp("bucket_run")))
    yield trainer
    trainer.close()


def _sequences(vocab: int, lengths: list[int], seed: int = 0) -> Sequences:
    """Left-padded prompts of 5..24 tokens and responses of the given lengths, pad id 0."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, size=(ROWS, PROMPT + LENGTH)).astype(np.int32)
    prompt_lengths = rng.integers(5, PROMPT + 1, size=ROWS)
    attention = np.zeros((ROWS, PROMPT + LENGTH), bool)
    response = np.arange(LENGTH)[None, :] < np.asarray(lengths)[:, None]
    attention[:, :PROMPT] = np.arange(PROMPT)[None, :] >= PROMPT - prompt_lengths[:, None]
    attention[:, PROMPT:] = response
    tokens[~attention] = 0
    return Sequences(tokens, attention, response)


def _rl_batch(seqs: Sequences, old_logprobs: np.ndarray, seed: int = 1) -> RLBatch:
    rng = np.random.default_rng(seed)
    mask = np.asarray(seqs.response_mask)
    return RLBatch(
        tokens=seqs.tokens,
        attention_mask=seqs.attention_mask,
        response_mask=mask,
        old_logprobs=old_logprobs - 0.01 * mask,  # ratios slightly off one
        advantages=(rng.normal(size=mask.shape) * mask).astype(np.float32),
        returns=(np.sign(rng.normal(size=(ROWS, 1))) * mask).astype(np.float32),
        old_values=np.zeros(mask.shape, np.float32),
        is_labeled=np.arange(ROWS) % 2 == 0,
        keep=np.ones(ROWS, bool),
    )


def _full_length(run):
    """A context in which `run` compiles and runs at the full response length only."""

    functions = run.functions

    class _Full:
        def __enter__(self):
            self.saved = functions.settings
            functions.settings = dataclasses.replace(functions.settings, length_buckets=())

        def __exit__(self, *exc):
            functions.settings = self.saved

    return _Full()


def _copy(state):
    return jax.tree.map(jnp.copy, state)


def test_bucketed_forwards_and_updates_equal_full_length(trainer):
    run = trainer.run
    state = trainer._fresh_state()
    assert run.functions.length_buckets == (2, 4, 8)
    seqs = _sequences(run.data.tokenizer.vocab_size, [3, 1, 4, 2, 4, 1, 3, 2])
    assert run.functions.bucket_for(seqs.response_mask) == 4

    stats = run.token_stats(state.policy.params, seqs)
    values = run.values(state.critic.params, seqs)
    with _full_length(run):
        stats_full = run.token_stats(state.policy.params, seqs)
        values_full = run.values(state.critic.params, seqs)
    assert np.asarray(stats.logprobs).shape == (ROWS, LENGTH)
    for got, want in zip(stats, stats_full, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(values, values_full, atol=1e-6)
    assert np.all(np.asarray(stats.logprobs)[:, 4:] == 0)  # padded back with zeros

    batch = _rl_batch(seqs, np.asarray(stats_full.logprobs))
    policy, metrics = run.policy_step(_copy(state.policy), batch)
    with _full_length(run):
        policy_full, metrics_full = run.policy_step(_copy(state.policy), batch)
    assert float(metrics["tokens"]) == 20 and float(metrics["grad_norm"]) > 0
    for key in ("loss", "grad_norm", "approx_kl", "entropy"):
        np.testing.assert_allclose(metrics[key], metrics_full[key], rtol=1e-4, atol=1e-7)
    moved = jax.tree.leaves(
        jax.tree.map(lambda a, b: np.abs(a - b).max(), policy.params, state.policy.params)
    )
    assert max(moved) > 0
    leaves = jax.tree.leaves(policy.params), jax.tree.leaves(policy_full.params)
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)

    rows = trainer_rows(run, seqs)

    def update(journal):  # a step's journal of its own each (one that never stops)
        return critic_update(
            run, journal, _copy(state.critic), rows, np.ones(ROWS), Timer(), updates=1
        )[0]

    critic = update(StepJournal("bucketed", lambda: False))
    with _full_length(run):
        critic_full = update(StepJournal("full length", lambda: False))
    leaves = jax.tree.leaves(critic.params), jax.tree.leaves(critic_full.params)
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def trainer_rows(run, seqs):
    """RolloutRows-like host rows for `critic_update` (only the fields it reads)."""
    from tempo_jax.tempo.rollout_data import RolloutRows

    mask = np.asarray(seqs.response_mask)
    return RolloutRows(
        tokens=np.asarray(seqs.tokens),
        attention_mask=np.asarray(seqs.attention_mask),
        response_mask=mask,
        group_ids=np.arange(ROWS) // 2,
        is_labeled=np.ones(ROWS, bool),
        lengths=mask.sum(1),
        finish_reason=np.ones(ROWS, np.int32),
        texts=[""] * ROWS,
        answers=[None] * ROWS,
        ground_truths=[("0",)] * ROWS,
    )


def test_compiles_stay_bounded_over_varying_lengths(trainer):
    run = trainer.run
    state = trainer._fresh_state()
    vocab = run.data.tokenizer.vocab_size
    for seed, longest in enumerate([1, 3, 2, 8, 4, 6, 5, 2, 7, 1]):
        lengths = [max(1, longest - i % 2) for i in range(ROWS)]
        run.token_stats(state.policy.params, _sequences(vocab, lengths, seed))
    counts = {k: v for k, v in run.compile_counts().items() if k.startswith("token_stats/")}
    assert counts == {f"token_stats/{ROWS}x{b}": 1 for b in (2, 4, 8)}
    # Every bucket the run compiled is one `tempo-jax compile` plans.
    planned = {c.key for c in functions.planned_calls(run.config, run.sampler.row_shards)}
    assert set(run.functions.compiled) <= planned


def test_a_second_run_of_the_process_reuses_the_compiled_functions(trainer):
    # parallel.compile_cache: another RunFunctions over the same graph, settings, mesh and
    # shapes (a restarted Trainer's) gets the same CompiledStep, whose examples hold no arrays;
    # other settings get their own.
    run = trainer.run.functions
    state = trainer._fresh_state()
    step = run.policy_step(state.policy, ROWS, 4)
    again = dataclasses.replace(run, compiled={})
    assert again.policy_step(state.policy, ROWS, 4) is step
    assert again.values(state.critic.params, ROWS, 4) is run.values(state.critic.params, ROWS, 4)
    leaves = jax.tree.leaves(step.example_args)
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    other = dataclasses.replace(
        run, compiled={}, settings=dataclasses.replace(run.settings, value_clip=0.2)
    )
    assert other.policy_step(state.policy, ROWS, 4) is not step
    assert again.policy_step(state.policy, ROWS, 2) is not step
