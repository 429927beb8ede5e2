"""The phases of one loop step: sample, score, and update the critic (E-step) or the policy
(M-step). Host-side glue between the sampler, the grader, `tempo_jax.rl` and the compiled steps.

Multi-process runs: every process computes the same rows; rewards and self-reward scores (from
a grader that may time out on one host only) are process 0's on every process, and sharded
outputs of the compiled functions come back with `parallel.host_from_global`.

Unlabeled ground truths never enter training: rows carry `ground_truths` only for labeled
prompts (`PromptBatch.labeled_answers`); evaluation reads hidden answers elsewhere. The one
exception is the upper bounds `oracle`, `tempo_oracle` and `tempo_mixed_oracle`, whose reward is
D_U's hidden answers (`grade_hidden`, refused for every other method).
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
from tempo_jax.config import methods
from tempo_jax.data.batch import PromptBatch
from tempo_jax.rewards import self_rewards
from tempo_jax.rewards.clusters import cluster_answers
from tempo_jax.rewards.math import grade_batch
from tempo_jax.sampling import FINISH_LENGTH, ChunkLog, SamplingParams
from tempo_jax.tempo import oracle_reward
from tempo_jax.tempo.build import Run
from tempo_jax.tempo.rollout_data import RolloutRows, concat_rows, dense_ids, rollout_rows
from tempo_jax.tempo.step_journal import StepJournal
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
    chunk_log: ChunkLog | None = None,
) -> RolloutRows:
    """n rollouts per prompt of `batch` under `params`, on the host with decoded texts (each
    chunk a unit of `chunk_log` when given)."""
    cfg = run.settings.rollout
    sampling = sampling or SamplingParams(
        temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p
    )
    with timer("rollout"):
        rollouts = run.sampler.generate(
            params,
            batch.prompt_tokens,
            batch.prompt_mask,
            n=n,
            sampling=sampling,
            seed=seed,
            chunk_log=chunk_log,
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


def _grade(run: Run, rows: RolloutRows, which: np.ndarray, truths, timer: Timer):
    """±1 rewards of rows `which` (indices) against `truths` (one tuple per row), 0 elsewhere,
    as a journal unit's record. The grader's counters go to the pool's (the loop reports them
    per step)."""
    rewards = np.zeros(rows.num_rows, np.float32)
    if len(which):
        with timer("grading"):
            grades = grade_batch(
                [rows.texts[i] for i in which],
                [list(truths[i]) for i in which],
                pool=run.pool,
                timeout_s=run.settings.grader.timeout_s,
            )
        rewards[which] = grades.rewards
        # A grader timeout on one process only must not give the processes different batches.
        rewards = parallel.broadcast_from_main(rewards)
    return {"rewards": rewards}


def _journaled(journal: StepJournal, unit: str, grade) -> np.ndarray:
    """Runs `grade` as journal unit `unit` (a grader may time out, so it is never redone)."""
    return journal.run(unit, grade)["rewards"]


def grade_labeled(
    run: Run, journal: StepJournal, unit: str, rows: RolloutRows, timer: Timer
) -> np.ndarray:
    """±1 rewards for labeled rows (0 for unlabeled rows, which are never graded here): journal
    unit `unit`."""
    labeled = np.flatnonzero(rows.is_labeled)
    return _journaled(journal, unit, lambda: _grade(run, rows, labeled, rows.ground_truths, timer))


def grade_hidden(
    run: Run,
    journal: StepJournal,
    unit: str,
    rows: RolloutRows,
    batch: PromptBatch,
    timer: Timer,
) -> np.ndarray:
    """±1 rewards of every row against its prompt's answer, hidden ones included: the `oracle`
    upper bound only (`Method.reads_hidden_answers`), never a self-reward method. Journal unit
    `unit`, as `grade_labeled`."""
    if not run.method.reads_hidden_answers:
        raise ValueError(f"method {run.method.name!r} may not read D_U's hidden answers")
    answers = batch.evaluation_answers()
    truths = [answers[g] for g in rows.group_ids]
    every = np.arange(rows.num_rows)
    return _journaled(journal, unit, lambda: _grade(run, rows, every, truths, timer))


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
    journal: StepJournal,
    step: int,
    phase: str,
    timer: Timer,
) -> tuple[RolloutRows, np.ndarray, dict]:
    """Rollouts of B prompt groups that survive the method's group filter, regenerating from the
    stream (at most `rollout.max_generation_batches` batches). Without a filter: one batch.
    Units: `<phase>/a<attempt>/chunk<i>` and `<phase>/a<attempt>/grade`.

    Returns:
      rows (B * n), their rewards (±1 on labeled rows; on every row for the oracle's M-step),
      and metrics.
    """
    cfg = run.settings
    kind = run.method.group_filter
    if phase == "recalibrate":  # E-steps and warm-up: the authors' filter only when asked for
        kind = "tempo" if cfg.tempo.estep_group_filter else "none"
    need = cfg.prompts_per_step
    # The oracle bounds grade D_U rows against hidden answers in the phase that updates the
    # policy; their E-steps (and the critic's updates) see D_L's labels only.
    hidden = run.method.reads_hidden_answers and phase in ("refine", "mixed")
    flips = run.method.reward == methods.HIDDEN_TERMINAL and hidden
    kept_parts, reward_parts, attempts, dropped = [], [], 0, 0
    truth_parts, flip_parts = [], []  # before the flip, and which rows flipped (tempo_oracle)
    generated, hidden_correct = [], []  # correctness of every generated labeled / oracle row
    while sum(int(p.group_ids.max()) + 1 for p in kept_parts) < need:
        if attempts == cfg.rollout.max_generation_batches:
            raise RuntimeError(
                f"group filter '{kind}' kept fewer than {need} prompts after "
                f"{attempts} generation batches (rollout.max_generation_batches); every group's "
                f"rewards were all equal: the task is too easy or too hard for this policy"
            )
        batch = next(stream)
        unit = f"{phase}/a{attempts}"
        rows = sample(
            run,
            params,
            batch,
            n=cfg.rollout.n,
            timer=timer,
            seed=step_seed(cfg.seed, step, phase, attempts),
            chunk_log=journal.chunk_log(unit, cfg.rollout.n),
        )
        if hidden:
            rewards = grade_hidden(run, journal, f"{unit}/grade", rows, batch, timer)
            hidden_correct.append(rewards[~rows.is_labeled] > 0)
        else:
            rewards = grade_labeled(run, journal, f"{unit}/grade", rows, timer)
        truth, flipped = rewards, np.zeros(rows.num_rows, bool)
        if flips:
            rewards, flipped = oracle_reward.flipped_rewards(
                truth,
                ~rows.is_labeled,
                step_seed(cfg.seed, step, phase, attempts),
                cfg.tempo.oracle_flip_prob,
            )
        generated.append(rewards[rows.is_labeled] > 0)
        attempts += 1
        if kind == "none":
            kept_parts, reward_parts = [rows], [rewards]
            truth_parts, flip_parts = [truth], [flipped]
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
            truth_parts.append(truth[idx])
            flip_parts.append(flipped[idx])
    metrics = {f"{phase}/generation_batches": attempts, f"{phase}/dropped_groups": dropped}
    if kind != "none" and np.concatenate(generated).size:
        # The filtered batch's accuracy is biased towards 1/2 (all-wrong and all-right groups
        # are dropped); this is the accuracy of everything sampled, what the policy really does.
        metrics[f"{phase}/accuracy_before_filter"] = float(np.concatenate(generated).mean())
    if hidden_correct:
        metrics["rollout/hidden_answer_accuracy"] = float(np.concatenate(hidden_correct).mean())
    rows, rewards = concat_rows(kept_parts), np.concatenate(reward_parts)
    if flips:
        unl = ~rows.is_labeled
        metrics.update(
            oracle_reward.reward_metrics(
                phase,
                rewards[unl],
                np.concatenate(truth_parts)[unl] > 0,
                rows.group_ids[unl],
                np.concatenate(flip_parts)[unl],
            )
        )
    return rows, rewards, metrics


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
        f"{prefix}/truncated_fraction": float((rows.finish_reason == FINISH_LENGTH).mean()),
        f"{prefix}/boxed_fraction": float(np.mean([a is not None for a in rows.answers])),
    }
    if rows.is_labeled.any():
        out[f"{prefix}/labeled_accuracy"] = float((rewards[rows.is_labeled] > 0).mean())
    return out


def critic_values(
    run: Run, journal: StepJournal, unit: str, critic_params, rows: RolloutRows, timer: Timer
) -> np.ndarray:
    """The critic's values [N, L] of `rows`: journal unit `unit` (the critic may change after)."""

    def compute():
        return {"values": run.values(critic_params, sequences(rows))}

    with timer("critic"):
        return journal.run(unit, compute)["values"]


def critic_update(
    run: Run,
    journal: StepJournal,
    critic: TrainState,
    rows: RolloutRows,
    rewards: np.ndarray,
    timer: Timer,
    *,
    updates: int,
    prefix: str = "critic",
) -> tuple[TrainState, dict[str, float]]:
    """`updates` value-loss steps on the labeled rows, V_old = values before the first update.
    Units: `<prefix>/old_values`, `<prefix>/update<j>`."""
    old_values = critic_values(run, journal, f"{prefix}/old_values", critic.params, rows, timer)
    with timer("critic"):
        returns = rewards[:, None] * rows.response_mask
        batch = rl_batch(rows, returns=returns.astype(np.float32), old_values=old_values)
        metrics = {}
        for j in range(updates):
            critic, metrics = journal.update(
                f"{prefix}/update{j}", "critic", critic, lambda c: run.critic_step(c, batch)
            )
        metrics = {f"{prefix}/{k}": float(v) for k, v in metrics.items()}
    return critic, metrics


@functools.partial(jax.jit, static_argnames=("name", "scope"))
def _advantages(
    name, scores, response_mask, group_ids, is_labeled, values, keep, scope=None, extra=None
):
    options = {} if scope is None else {"whiten_scope": scope, "whiten_extra": extra}
    adv, returns = rl.ADVANTAGE_ESTIMATORS.get(name)(
        scores=scores,
        response_mask=response_mask,
        group_ids=group_ids,
        is_labeled=is_labeled,
        values=values,
        keep=keep,
        **options,
    )
    return adv, returns if returns is not None else jnp.zeros_like(adv)


def labeled_whiten_stats(rewards: np.ndarray, values: np.ndarray, rows: RolloutRows) -> list:
    """(count, sum, sum of squares) of the raw em_token advantages `r_i - V[i,t]` of graded
    labeled `rows` under the critic that gave `values` [N, L]: what `tempo.whiten_scope =
    with_labeled` joins to a phased M-step's whitening statistics. Python floats (checkpointed
    as JSON, which round-trips them exactly)."""
    raw = rewards[:, None].astype(np.float64) - values.astype(np.float64)
    mask = rows.response_mask & rows.is_labeled[:, None]
    return [float(x) for x in np.asarray(rl.whiten_stats(raw, mask), np.float64)]


def method_scores(
    run: Run,
    journal: StepJournal,
    rows: RolloutRows,
    rewards: np.ndarray,
    self_certainty: np.ndarray,
    timer: Timer,
) -> tuple[np.ndarray, dict[str, float]]:
    """Per-row scores the advantage estimator reads, by the method's reward source (answer
    clusters from the grading pool are journal unit `policy/scores`)."""
    source = run.method.reward
    if source in (
        methods.CRITIC,
        methods.GROUND_TRUTH,
        methods.HIDDEN_GROUND_TRUTH,
        methods.HIDDEN_TERMINAL,
    ):
        return rewards, {}
    if source == methods.SELF_CERTAINTY:
        mask = rows.response_mask
        scores = (self_certainty * mask).sum(-1) / np.maximum(mask.sum(-1), 1)
        return scores.astype(np.float32), {"policy/self_certainty": float(scores.mean())}
    scores = journal.run("policy/scores", lambda: {"scores": _vote_scores(run, rows, timer)})
    return scores["scores"], {"policy/self_reward": float(scores["scores"].mean())}


def _vote_scores(run: Run, rows: RolloutRows, timer: Timer) -> np.ndarray:
    with timer("grading"):
        clusters = cluster_answers(
            rows.answers, rows.group_ids, pool=run.pool, timeout_s=run.settings.grader.timeout_s
        )
    ids, valid = dense_ids(clusters.cluster_ids), np.asarray(clusters.valid, bool)
    fn = (
        self_rewards.majority_vote_reward
        if run.method.reward == methods.MAJORITY_VOTE
        else self_rewards.cluster_frequency_reward
    )
    # Clustering may time out on one process only: every process uses process 0's scores.
    return parallel.broadcast_from_main(np.asarray(fn(ids, valid, rows.group_ids), np.float32))


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
    run: Run, journal: StepJournal, policy: TrainState, batch: RLBatch, group_ids: np.ndarray
) -> tuple[TrainState, dict[str, float]]:
    """One epoch of policy optimizer updates over mini-batches of `batch` (units
    `policy/update<j>`).

    Advantages and old log-probs were computed once on the whole batch, as in the authors' PPO
    loop, so from the second mini-batch on the ratios move away from 1 and the clip acts.
    Metrics are means over the mini-batches; `skipped` and `empty` count updates.
    """
    num = run.settings.updates_per_step
    if num == 1:
        return journal.update(
            "policy/update0", "policy", policy, lambda p: run.policy_step(p, batch)
        )
    collected = []
    for j, idx in enumerate(mini_batches(group_ids, num)):

        def update(p, i=idx):
            return run.policy_step(p, jax.tree.map(lambda x: x[i], batch))

        policy, metrics = journal.update(f"policy/update{j}", "policy", policy, update)
        collected.append(metrics)
    out = {k: float(np.mean([m[k] for m in collected])) for k in collected[0]}
    for key in ("skipped", "empty"):  # counts, not rates
        if key in out:
            out[key] = float(sum(float(m[key]) for m in collected))
    out["updates"] = float(num)
    return policy, out


def policy_update(
    run: Run,
    journal: StepJournal,
    policy: TrainState,
    rows: RolloutRows,
    rewards: np.ndarray,
    timer: Timer,
    *,
    values: np.ndarray | None = None,
    keep: np.ndarray | None = None,
    whiten_extra: list | None = None,
) -> tuple[TrainState, dict[str, float]]:
    """One policy step on `rows`: old log-probs recomputed under the current policy (unit
    `policy/old_logprobs`), scores from the method's reward source, advantages from the registry
    with the critic's `values` [N, L] (`critic_values`; None for critic-free methods), GSPO/PPO
    update. em_token whitens as `tempo.whiten_scope` says; `whiten_extra`
    (`labeled_whiten_stats` of the last graded D_L batch) is what "with_labeled" joins, and
    without it (the mixed batch, which holds its labeled rows already) the scope is the batch."""
    keep = np.ones(rows.num_rows, bool) if keep is None else keep

    def compute():
        return run.token_stats(policy.params, sequences(rows))._asdict()

    with timer("policy"):
        stats = journal.run("policy/old_logprobs", compute)
    critic_values_given = values is not None
    if values is None:
        values = np.zeros(rows.response_mask.shape, np.float32)
    scores, metrics = method_scores(run, journal, rows, rewards, stats["self_certainty"], timer)
    name = run.method.advantage or run.settings.tempo.advantage
    given = rows.is_labeled
    if run.method.reward == methods.HIDDEN_TERMINAL:
        # tempo_oracle: the terminal reward R_i of every row is its score (D_U rows: the hidden
        # answer's, maybe flipped), where `tempo` reads V_last; nothing else changes.
        given = np.ones(rows.num_rows, bool)
    scope, extra = None, None
    if name == "em_token":
        scope = run.settings.tempo.whiten_scope
        if scope == "with_labeled":
            if whiten_extra is None:
                scope = "batch"
            else:
                extra = np.asarray(whiten_extra, np.float32)
    with timer("policy"):
        adv, returns = _advantages(
            name,
            scores,
            rows.response_mask,
            rows.group_ids,
            given,
            values,
            keep,
            scope=scope,
            extra=extra,
        )
        batch = rl_batch(
            rows,
            old_logprobs=stats["logprobs"],
            advantages=np.asarray(adv),
            returns=np.asarray(returns),
            old_values=values,
            keep=keep,
        )
        policy, step_metrics = _mini_batch_updates(run, journal, policy, batch, rows.group_ids)
    mask = rows.response_mask & keep[:, None]
    metrics.update({f"policy/{k}": float(v) for k, v in step_metrics.items()})
    metrics["policy/token_entropy"] = float((stats["entropy"] * mask).sum() / max(mask.sum(), 1))
    if critic_values_given:
        last = np.maximum(rows.lengths - 1, 0)
        v_last = values[np.arange(rows.num_rows), last]
        unl = ~rows.is_labeled & keep
        if unl.any():
            metrics["policy/critic_reward_unlabeled"] = float(v_last[unl].mean())
    return policy, metrics
