"""tempo_jax.train: pure, sharded policy / critic steps, train state, metric writers, checkpoints.

Shapes: N rows, S = P + L slots (left-padded prompt, right-padded response), L response slots.
Slot alignment (which hidden state predicts / values which response token) is in `batch`.

    settings = settings_from_config(config.train)                 # validated before any compile
    graphdef, params = split_for_training(policy, settings)       # compute dtype / remat applied
    state = create_train_state(params, settings.policy_optimizer, mesh, rules)       # sharded
    step = compile_train_step(make_policy_step(graphdef, settings), state, batch, mesh, rules,
                              micro_batches=settings.micro_batches, name="policy_step")
    state, metrics = step(state, batch)                           # batch: RLBatch, state donated
    stats = compile_forward(make_policy_token_stats_fn(graphdef, settings), state.params, seqs,
                            mesh, rules, micro_batches=settings.micro_batches)(state.params, seqs)
    # stats.logprobs / .entropy / .self_certainty [N, L]; critic: make_critic_values_fn -> [N, L]

Modules: config (the `train` config section), batch (Sequences, RLBatch, slot layout), logprobs
(vocabulary-chunked log-softmax), forward, optimizers, train_state, update (accumulation and the
guarded update), policy_step, critic_step, compiled (jit with shardings), metric_writers and
event_files (TensorBoard), storage (the path type of every run file: local or gs://),
checkpointing (Orbax; import `tempo_jax.train.checkpointing` directly, it is not re-exported here
so that importing the steps does not import Orbax) with checkpoint_metadata (its JSON codec).
"""

from tempo_jax.train.batch import RLBatch, Sequences, check_batch
from tempo_jax.train.compiled import (
    CompiledStep,
    canonical_batch,
    compile_forward,
    compile_train_step,
)
from tempo_jax.train.config import (
    OptimizerSettings,
    PolicyLossSettings,
    TrainSettings,
    get_config,
    micro_batches_for,
    settings_from_config,
)
from tempo_jax.train.critic_step import make_critic_gradients, make_critic_step
from tempo_jax.train.forward import make_critic_values_fn, make_policy_token_stats_fn
from tempo_jax.train.logprobs import TokenStats, token_stats
from tempo_jax.train.metric_writers import JsonlWriter, MetricWriters, read_jsonl
from tempo_jax.train.optimizers import make_optimizer, make_schedule
from tempo_jax.train.policy_step import make_policy_gradients, make_policy_step
from tempo_jax.train.train_state import (
    TrainState,
    abstract_train_state,
    create_train_state,
    split_for_training,
    train_state_shardings,
)

__all__ = [
    "CompiledStep",
    "JsonlWriter",
    "MetricWriters",
    "OptimizerSettings",
    "PolicyLossSettings",
    "RLBatch",
    "Sequences",
    "TokenStats",
    "TrainSettings",
    "TrainState",
    "abstract_train_state",
    "canonical_batch",
    "check_batch",
    "compile_forward",
    "compile_train_step",
    "create_train_state",
    "get_config",
    "make_critic_gradients",
    "make_critic_step",
    "make_critic_values_fn",
    "make_optimizer",
    "make_policy_gradients",
    "make_policy_step",
    "make_policy_token_stats_fn",
    "make_schedule",
    "micro_batches_for",
    "read_jsonl",
    "settings_from_config",
    "split_for_training",
    "token_stats",
    "train_state_shardings",
]
