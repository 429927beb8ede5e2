"""The phases of one loop step: sample, score, and update the critic (E-step) or the policy
(M-step). Host-side glue between the sampler, the grader, `tempo_jax.rl` and the compiled steps.

Multi-process runs: every process computes the same rows; rewards and self-reward scores (from
a grader that may time out on one host only) are process 0's on every process, and sharded
outputs of the compiled functions come back with `parallel.host_from_global`.

Unlabeled ground truths never enter this module: rows carry `ground_truths` only for labeled
prompts (`PromptBatch.labeled_answers`); evaluation reads hidden answers elsewhere.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from tempo_jax import parallel, rl
from tempo_jax.data.batch import PromptBatch
from tempo_jax.rewards import self_rewards
from tempo_jax.rewards.clusters import cluster_answers
from tempo_jax.rewards.math import grade_batch
from tempo_jax.sampling import SamplingParams
from tempo_jax.tempo import methods
from tempo_jax.tempo.build import Run
from tempo_jax.tempo.rollout_data import RolloutRows, concat_rows, dense_ids, rollout_rows
from tempo_jax.train import RLBatch, Sequences, TrainState

PHASE_CODES = {"rollout": 0, "recalibrate": 1, "refine": 2, "mixed": 3, "warmup": 4, "eval": 5}


def step_seed(seed: int, step: int, phase: str, attempt: int = 0) -> int:
    """A uint32 sampling seed that depends only on (seed, step, phase, attempt), so a resumed run
    draws exactly what an uninterrupted one would."""
    state = np.random.SeedSequence([seed % 2**32, step, PHASE_CODES[phase], attempt])
    return int(state.generate_state(1, np.uint32)[0])


class Timer:
    """Accumulates wall time per stage name (`timing/<name>_s` metrics)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {f"timing/{k}_s": v for k, v in self.seconds.items()}


def sample(
    run: Run,
    params,
    batch: PromptBatch,
    *,
    n: int,
    seed: int,
    timer: Timer,
    sampling: SamplingParams | None = None,
) -> RolloutRows:
    """n rollouts per prompt of `batch` under `params`, on the host with decoded texts."""
    cfg = run.config.rollout
    sampling = sampling or SamplingParams(
        temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p
    )
    with timer("rollout"):
        rollouts = run.sampler.generate(
            params, batch.prompt_tokens, batch.prompt_mask, n=n, sampling=sampling, seed=seed
        )
        rollouts = parallel.host_from_global(rollouts)
    return rollout_rows(
        rollouts,
        prompt_width=run.prompt_width,
        pad_id=run.pad_id,
        is_labeled=batch.is_labeled,
        ground_truths=batch.labeled_answers,
        tokenizer=run.data.tokenizer,
        eos_ids=run.eos_ids,
    )


def grade_labeled(run: Run, rows: RolloutRows, timer: Timer) -> tuple[np.ndarray, dict]:
    """±1 rewards for labeled rows (0 for unlabeled rows, which are never graded here)."""
    rewards = np.zeros(rows.num_rows, np.float32)
    labeled = np.flatnonzero(rows.is_labeled)
    counters = {}
    if len(labeled):
        with timer("grading"):
            grades = grade_batch(
                [rows.texts[i] for i in labeled],
                [list(rows.ground_truths[i]) for i in labeled],
                pool=run.pool,
                timeout_s=run.config.grader.timeout_s,
            )
        rewards[labeled] = grades.rewards
        # A grader timeout on one process only must not give the processes different batches.
        rewards = parallel.broadcast_from_main(rewards)
        counters = {f"grader/{k}": v for k, v in grades.counters.as_dict().items()}
    return rewards, counters


@functools.partial(jax.jit, static_argnames=("kind",))
def _group_keep(kind: str, rewards, is_labeled, group_ids):
    if kind == "tempo":
        return rl.filter_groups(rewards, is_labeled, group_ids)
    return rl.dapo_filter_groups(rewards > 0, group_ids)


def collect_groups(
    run: Run,
    stream: Iterator[PromptBatch],
    params,
    *,
    step: int,
    phase: str,
    timer: Timer,
) -> tuple[RolloutRows, np.ndarray, dict]:
    """Rollouts of B prompt groups that survive the method's group filter, regenerating from the
    stream (at most `rollout.max_generation_batches` batches). Without a filter: one batch.

    Returns:
      rows (B * n), their rewards (±1 on labeled rows), and metrics.
    """
    cfg = run.config
    kind = run.method.group_filter if phase != "recalibrate" else "none"
    need = cfg.data.prompts_per_step
    kept_parts, reward_parts, counters, attempts, dropped = [], [], {}, 0, 0
    while sum(int(p.group_ids.max()) + 1 for p in kept_parts) < need:
        if attempts == cfg.rollout.max_generation_batches:
            raise RuntimeError(
                f"group filter '{kind}' kept fewer than {need} prompts after "
                f"{attempts} generation batches (rollout.max_generation_batches); every group's "
                f"rewards were all equal: the task is too easy or too hard for this policy"
            )
        batch = next(stream)
        rows = sample(
            run,
            params,
            batch,
            n=cfg.rollout.n,
            timer=timer,
            seed=step_seed(cfg.seed, step, phase, attempts),
        )
        rewards, counters = grade_labeled(run, rows, timer)
        attempts += 1
        if kind == "none":
            kept_parts, reward_parts = [rows], [rewards]
            break
        keep = np.asarray(_group_keep(kind, rewards, rows.is_labeled, rows.group_ids))
        groups = [g for g in range(batch.batch_size) if keep[rows.group_ids == g].all()]
        dropped += batch.batch_size - len(groups)
        have = sum(int(p.group_ids.max()) + 1 for p in kept_parts)
        groups = groups[: need - have]
        if groups:
            part = rows.take_groups(groups)
            idx = np.concatenate([np.flatnonzero(rows.group_ids == g) for g in groups])
            kept_parts.append(part)
            reward_parts.append(rewards[idx])
    metrics = {f"{phase}/generation_batches": attempts, f"{phase}/dropped_groups": dropped}
    metrics.update(counters)
    return concat_rows(kept_parts), np.concatenate(reward_parts), metrics


def sequences(rows: RolloutRows) -> Sequences:
    return Sequences(rows.tokens, rows.attention_mask, rows.response_mask)


def rl_batch(rows: RolloutRows, **fields) -> RLBatch:
    """An RLBatch from rows; missing token fields are zeros, `keep` defaults to all rows."""
    n, length = rows.response_mask.shape
    zeros = np.zeros((n, length), np.float32)
    return RLBatch(
        tokens=rows.tokens,
        attention_mask=rows.attention_mask,
        response_mask=rows.response_mask,
        old_logprobs=fields.get("old_logprobs", zeros),
        advantages=fields.get("advantages", zeros),
        returns=fields.get("returns", zeros),
        old_values=fields.get("old_values", zeros),
        is_labeled=rows.is_labeled,
        keep=fields.get("keep", np.ones(n, bool)),
    )


def rollout_metrics(prefix: str, rows: RolloutRows, rewards: np.ndarray) -> dict[str, float]:
    """Response length, finish reasons and (labeled rows) accuracy of a rollout batch."""
    out = {
        f"{prefix}/response_length": float(rows.lengths.mean()),
        f"{prefix}/truncated_fraction": float((rows.finish_reason == 3).mean()),
        f"{prefix}/boxed_fraction": float(np.mean([a is not None for a in rows.answers])),
    }
    if rows.is_labeled.any():
        out[f"{prefix}/labeled_accuracy"] = float((rewards[rows.is_labeled] > 0).mean())
    return out


def critic_update(
    run: Run,
    critic: TrainState,
    rows: RolloutRows,
    rewards: np.ndarray,
    timer: Timer,
    *,
    updates: int,
    prefix: str = "critic",
) -> tuple[TrainState, dict[str, float]]:
    """`updates` value-loss steps on the labeled rows, V_old = values before the first update."""
    with timer("critic"):
        seqs = sequences(rows)
        old_values = parallel.host_from_global(run.values(critic.params, seqs))
        returns = rewards[:, None] * rows.response_mask
        batch = rl_batch(rows, returns=returns.astype(np.float32), old_values=old_values)
        metrics = {}
        for _ in range(updates):
            critic, metrics = run.critic_step(critic, batch)
        metrics = {f"{prefix}/{k}": float(v) for k, v in jax.device_get(metrics).items()}
    return critic, metrics


@functools.partial(jax.jit, static_argnames=("name",))
def _advantages(name, scores, response_mask, group_ids, is_labeled, values, keep):
    adv, returns = rl.ADVANTAGE_ESTIMATORS.get(name)(
        scores=scores,
        response_mask=response_mask,
        group_ids=group_ids,
        is_labeled=is_labeled,
        values=values,
        keep=keep,
    )
    return adv, returns if returns is not None else jnp.zeros_like(adv)


def method_scores(
    run: Run, rows: RolloutRows, rewards: np.ndarray, self_certainty: np.ndarray, timer: Timer
) -> tuple[np.ndarray, dict[str, float]]:
    """Per-row scores the advantage estimator reads, by the method's reward source."""
    source = run.method.reward
    if source in (methods.CRITIC, methods.GROUND_TRUTH):
        return rewards, {}
    if source == methods.SELF_CERTAINTY:
        mask = rows.response_mask
        scores = (self_certainty * mask).sum(-1) / np.maximum(mask.sum(-1), 1)
        return scores.astype(np.float32), {"policy/self_certainty": float(scores.mean())}
    with timer("grading"):
        clusters = cluster_answers(
            rows.answers, rows.group_ids, pool=run.pool, timeout_s=run.config.grader.timeout_s
        )
    ids, valid = dense_ids(clusters.cluster_ids), np.asarray(clusters.valid, bool)
    fn = (
        self_rewards.majority_vote_reward
        if source == methods.MAJORITY_VOTE
        else self_rewards.cluster_frequency_reward
    )
    # Clustering may time out on one process only: every process uses process 0's scores.
    scores = parallel.broadcast_from_main(np.asarray(fn(ids, valid, rows.group_ids), np.float32))
    return scores, {"policy/self_reward": float(scores.mean())}


def mini_batches(group_ids: np.ndarray, num: int) -> list[np.ndarray]:
    """Row indices of `num` equal mini-batches made of whole prompt groups.

    Group k (in order of first appearance) goes to mini-batch k % num, so that a batch whose
    labeled prompts come first (tempo_mixed) still mixes both kinds in every mini-batch.

    Raises:
      ValueError: when the groups cannot fill `num` mini-batches of equal row count (every
        mini-batch of one shape keeps the policy step at one compilation).
    """
    _, first = np.unique(group_ids, return_index=True)
    order = group_ids[np.sort(first)]
    parts = [np.flatnonzero(np.isin(group_ids, order[j::num])) for j in range(num)]
    sizes = {len(p) for p in parts}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(
            f"{len(order)} prompt groups of sizes {np.bincount(group_ids)[order].tolist()} cannot "
            f"be split into {num} equal mini-batches (data.prompts_per_update)"
        )
    return parts


def _mini_batch_updates(
    run: Run, policy: TrainState, batch: RLBatch, group_ids: np.ndarray
) -> tuple[TrainState, dict[str, float]]:
    """One epoch of policy optimizer updates over mini-batches of `batch`.

    Advantages and old log-probs were computed once on the whole batch, as in the authors' PPO
    loop, so from the second mini-batch on the ratios move away from 1 and the clip acts.
    Metrics are means over the mini-batches; `skipped` and `empty` count updates.
    """
    per_update = run.config.data.prompts_per_update
    num = 1 if per_update == 0 else run.config.data.prompts_per_step // per_update
    if num == 1:
        policy, metrics = run.policy_step(policy, batch)
        return policy, jax.device_get(metrics)
    collected = []
    for idx in mini_batches(group_ids, num):
        policy, metrics = run.policy_step(policy, jax.tree.map(lambda x, i=idx: x[i], batch))
        collected.append(jax.device_get(metrics))
    out = {k: float(np.mean([m[k] for m in collected])) for k in collected[0]}
    for key in ("skipped", "empty"):  # counts, not rates
        if key in out:
            out[key] = float(sum(float(m[key]) for m in collected))
    out["updates"] = float(num)
    return policy, out


def policy_update(
    run: Run,
    policy: TrainState,
    critic_params,
    rows: RolloutRows,
    rewards: np.ndarray,
    timer: Timer,
    *,
    keep: np.ndarray | None = None,
) -> tuple[TrainState, dict[str, float]]:
    """One policy step on `rows`: old log-probs recomputed under the current policy, scores from
    the method's reward source, advantages from the registry, GSPO/PPO update."""
    cfg = run.config
    keep = np.ones(rows.num_rows, bool) if keep is None else keep
    seqs = sequences(rows)
    with timer("policy"):
        stats = parallel.host_from_global(run.token_stats(policy.params, seqs))
    if critic_params is not None:
        with timer("critic"):
            values = parallel.host_from_global(run.values(critic_params, seqs))
    else:
        values = np.zeros(rows.response_mask.shape, np.float32)
    scores, metrics = method_scores(run, rows, rewards, np.asarray(stats.self_certainty), timer)
    name = run.method.advantage or cfg.tempo.advantage
    with timer("policy"):
        adv, returns = _advantages(
            name, scores, rows.response_mask, rows.group_ids, rows.is_labeled, values, keep
        )
        batch = rl_batch(
            rows,
            old_logprobs=np.asarray(stats.logprobs),
            advantages=np.asarray(adv),
            returns=np.asarray(returns),
            old_values=values,
            keep=keep,
        )
        policy, step_metrics = _mini_batch_updates(run, policy, batch, rows.group_ids)
    mask = rows.response_mask & keep[:, None]
    metrics.update({f"policy/{k}": float(v) for k, v in step_metrics.items()})
    metrics["policy/token_entropy"] = float((stats.entropy * mask).sum() / max(mask.sum(), 1))
    if critic_params is not None:
        last = np.maximum(rows.lengths - 1, 0)
        v_last = values[np.arange(rows.num_rows), last]
        unl = ~rows.is_labeled & keep
        if unl.any():
            metrics["policy/critic_reward_unlabeled"] = float(v_last[unl].mean())
    return policy, metrics
