"""Critic warm-up recipes compared on the same data: one seed's SFT policy samples a pool of graded
D_L rollouts and the step-0 D_U evaluation samples once, then a fresh critic (from the policy, as
`tempo` builds it) is fitted with each recipe and scored on those D_U samples.

    python benchmarks/critic_recipes.py --config=configs/tiny_repro.py --seed=0 \\
        --sft=/tmp/sweep/sft-s0 --pool=32 --recipes=8x2@1e-4,32x4@3e-4/neg64,32x8@1e-3/clip1.0

A recipe `SxU@LR[/clipC]` is S warm-up E-steps (one pool batch each, in order, as the warm-up
draws them: `data.prompts_per_step` x `rollout.n` rows) of U critic updates at critic learning
rate LR (value clip C, else the config's `train.value_clip`); `/filter` fits only the rows of
groups with both right and wrong answers (the authors' E-step group filter); `/negK` adds K
corrupted copies of graded-right rows, target -1 (`tempo.critic_negatives`; `/negaK`: their
value loss only after the broken token); `/rankW` adds W x a within-question pairwise
(Bradley-Terry) loss on V_last over the (right, wrong) pairs of each labeled group. With
`--set tempo.critic_sft_steps=N` the critic starts from the policy's N-step further SFT
(WORKDIR/critic_sft), as a run's does. The warm-up of a
real run samples fresh rollouts each E-step from the same policy, so this is that warm-up with
the sampling done once for every recipe. Prints the within-question and pooled AUROC of the
policy's own min and summed log-prob of each D_U sample (no critic), then
`auroc_within_question` and the pooled AUROC of V_last after 1/4, 1/2 and all of the E-steps,
and the process CPU seconds of each recipe; with
`--pool` above a recipe's E-steps, also the within-question AUROC on an unused pool batch plus
64 corrupted copies of its right rows (does the critic tell a right D_L answer from its broken
copy on questions it did not fit?).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging as absl_logging
from flax import nnx

from tempo_jax import train
from tempo_jax.rewards import eval_metrics
from tempo_jax.rewards.math import grade_batch
from tempo_jax.sampling import SamplingParams
from tempo_jax.tempo import critic_negatives, phases
from tempo_jax.tempo.evaluation import _problems
from tempo_jax.tempo.functions import RunFunctions
from tempo_jax.tempo.loop import Trainer
from tempo_jax.tempo.step_journal import StepJournal
from tempo_jax.train.forward import response_values
from tempo_jax.train.sft import run_sft
from tempo_jax.train.update import make_update_step

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from critic_auroc import load_config  # noqa: E402


def _journal() -> StepJournal:
    return StepJournal("", lambda: False)


def parse_recipe(
    recipe: str, value_clip: float
) -> tuple[int, int, float, float, bool, int, bool, float]:
    """`SxU@LR[/clipC][/filter][/negK|/negaK][/rankW]` -> (E-steps, updates per E-step, learning
    rate, value clip, group filter, corrupted rows per E-step, their loss only after the break,
    pairwise ranking weight)."""
    spec, rate, *options = recipe.split("@")[0], *recipe.split("@")[1].split("/")
    group_filter, negatives, after_break, rank = False, 0, False, 0.0
    for option in options:
        if option.startswith("rank"):
            rank = float(option.removeprefix("rank"))
        elif option == "filter":
            group_filter = True
        elif option.startswith("clip"):
            value_clip = float(option.removeprefix("clip"))
        elif option.startswith("nega"):  # the loss only after the broken token
            negatives, after_break = int(option.removeprefix("nega")), True
        elif option.startswith("neg"):
            negatives = int(option.removeprefix("neg"))
        else:
            raise ValueError(f"recipe {recipe!r}: unknown option {option!r}")
    steps, updates = (int(x) for x in spec.split("x"))
    return steps, updates, float(rate), value_clip, group_filter, negatives, after_break, rank


def ranked_critic_step(run, weight: float):
    """A jitted critic step whose loss is the value loss plus `weight` x the within-question
    Bradley-Terry loss `mean softplus(V_last(wrong) - V_last(right))` over the (right, wrong)
    pairs of labeled rows of one prompt group. The group id of each row rides in
    `advantages[:, 0]`, a field the critic step does not read."""
    graphdef, settings = run.critic_graphdef, run.settings.train
    base = train.make_critic_gradients(graphdef, settings)

    def rank_loss(params, batch):
        values = response_values(nnx.merge(graphdef, params), batch.sequences())
        last = jnp.maximum(batch.response_mask.sum(-1) - 1, 0)
        v_last = jnp.take_along_axis(values, last[:, None], axis=-1)[:, 0]
        right = (batch.returns[:, 0] > 0) & batch.is_labeled
        wrong = (batch.returns[:, 0] < 0) & batch.is_labeled
        same = batch.advantages[:, :1] == batch.advantages[:, 0][None, :]
        pairs = (same & right[:, None] & wrong[None, :]).astype(jnp.float32)
        margin = v_last[:, None] - v_last[None, :]
        return jnp.sum(pairs * jax.nn.softplus(-margin)) / jnp.maximum(pairs.sum(), 1.0)

    def gradients(params, batch):
        grads, metrics = base(params, batch)
        rank, rank_grads = jax.value_and_grad(rank_loss)(params, batch)
        metrics["rank_loss"] = rank
        return jax.tree.map(lambda g, r: g + weight * r, grads, rank_grads), metrics

    return jax.jit(make_update_step(gradients, settings.critic_optimizer, "labeled_rows"))


def ranked_update(run, step, critic, rows, rewards, updates: int):
    """`phases.critic_update` with `ranked_critic_step`'s loss (group ids in `advantages`)."""
    old_values = run.values(critic.params, phases.sequences(rows))
    returns = (rewards[:, None] * rows.response_mask).astype(np.float32)
    groups = np.broadcast_to(rows.group_ids[:, None], returns.shape).astype(np.float32)
    batch = phases.rl_batch(rows, returns=returns, old_values=old_values, advantages=groups)
    for _ in range(updates):
        critic, _ = step(critic, train.canonical_batch(batch))
    return critic


def mixed_groups_only(rows, rewards: np.ndarray):
    """`rows` with the rows of all-right and all-wrong groups marked unlabeled, so that they take
    no part in the value loss (the authors' group filter; the batch keeps its shape)."""
    right = rewards > 0
    mixed = np.zeros(rows.num_rows, bool)
    for g in np.unique(rows.group_ids):
        members = rows.group_ids == g
        mixed[members] = 0 < right[members].sum() < members.sum()
    return dataclasses.replace(rows, is_labeled=np.asarray(rows.is_labeled) & mixed)


def v_last_quality(run, critic_params, rows, correct, chunk: int) -> dict[str, float]:
    """Critic quality of V_last [N] on `rows` (the evaluation's metric)."""
    values = []
    for start in range(0, rows.num_rows, chunk):
        part = rows.take_rows(slice(start, start + chunk))
        part = part.pad_rows(chunk) if part.num_rows < chunk else part
        values.append(np.asarray(run.values(critic_params, phases.sequences(part))))
    values = np.concatenate(values)[: rows.num_rows]
    v_last = values[np.arange(rows.num_rows), np.maximum(rows.lengths - 1, 0)]
    return eval_metrics.critic_quality(v_last, correct, rows.group_ids)


def policy_likelihood(run, policy_params, rows, correct, chunk: int) -> str:
    """The AUROCs of the policy's own min and summed log-prob of each response (no critic)."""
    logprobs = []
    for start in range(0, rows.num_rows, chunk):
        part = rows.take_rows(slice(start, start + chunk))
        part = part.pad_rows(chunk) if part.num_rows < chunk else part
        stats = run.token_stats(policy_params, phases.sequences(part))
        logprobs.append(np.asarray(stats.logprobs))
    logprobs = np.concatenate(logprobs)[: rows.num_rows]
    logprobs = np.where(np.asarray(rows.response_mask, bool), logprobs, 0.0)
    out = []
    for name, score in (("min", logprobs.min(1)), ("sum", logprobs.sum(1))):
        q = eval_metrics.critic_quality(score, correct, rows.group_ids)
        within, pooled = q["auroc_within_question"], q["auroc"]
        out.append(f"policy {name} log-prob within {within:.3f} pooled {pooled:.3f}")
    return "; ".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="path[:variant], as tempo-jax's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sft", required=True, help="a workdir holding this seed's sft/")
    parser.add_argument("--workdir", default="", help="default: <sft>-recipes")
    parser.add_argument("--pool", type=int, default=32, help="graded D_L batches sampled once")
    parser.add_argument("--recipes", default="8x2@1e-4")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE config override")
    args = parser.parse_args(argv)
    absl_logging.set_verbosity(absl_logging.WARNING)
    config = load_config(args.config, [f"seed={args.seed}", *args.set])
    config.method, config.progress_bar = "tempo", False
    workdir = args.workdir or args.sft.rstrip("/") + "-recipes"
    if not os.path.exists(os.path.join(workdir, "sft")):
        shutil.copytree(os.path.join(args.sft, "sft"), os.path.join(workdir, "sft"))
    start = time.process_time()
    trainer = Trainer(config, workdir)
    run = trainer.run
    policy_module = run_sft(run, trainer._initial_policy, os.path.join(workdir, "sft"))
    _, policy_params = train.split_for_training(policy_module, run.settings.train)
    pool = [
        phases.collect_groups(
            run,
            trainer.streams["labeled"],
            policy_params,
            journal=_journal(),
            step=i,
            phase="recalibrate",
            timer=phases.Timer(),
        )[:2]
        for i in range(args.pool)
    ]
    batch = _problems(run, "unlabeled")
    answers = batch.evaluation_answers()
    rows = phases.sample(
        run,
        policy_params,
        batch,
        n=config.eval.n,
        timer=phases.Timer(),
        seed=phases.step_seed(config.seed, 0, "eval", 0),
        sampling=SamplingParams(temperature=config.eval.temperature),
    )
    truths = [list(answers[g]) for g in rows.group_ids]
    graded = grade_batch(rows.texts, truths, pool=run.pool, timeout_s=config.grader.timeout_s)
    correct = np.asarray(graded.correct, bool)
    groups = np.unique(rows.group_ids)
    mixed = sum(0 < correct[rows.group_ids == g].sum() < config.eval.n for g in groups)
    print(
        f"seed {args.seed}: D_L pool {args.pool} batches, accuracy "
        f"{np.mean([(r > 0).mean() for _, r in pool]):.3f}; D_U mean@{config.eval.n} "
        f"{correct.mean():.3f}, {mixed} of {len(groups)} questions mixed; sampling "
        f"{time.process_time() - start:.0f} CPU s",
        flush=True,
    )
    chunk = config.data.prompts_per_step * config.rollout.n
    print(f"seed {args.seed}: {policy_likelihood(run, policy_params, rows, correct, chunk)}")
    # The policy, or its longer SFT with `--set tempo.critic_sft_steps=N` (run once, here).
    critic_source = trainer._critic_source(policy_module)
    for recipe in args.recipes.split(","):
        steps, updates, rate, clip, group_filter, negatives, after_break, rank = parse_recipe(
            recipe, config.train.value_clip
        )
        start = time.process_time()
        optimizer = dataclasses.replace(run.settings.train.critic_optimizer, learning_rate=rate)
        trained = dataclasses.replace(
            run.settings.train, critic_optimizer=optimizer, value_clip=clip
        )
        # A Run is fixed: each recipe gets its own, with its train settings and functions.
        run = trainer.run = dataclasses.replace(
            run,
            settings=dataclasses.replace(run.settings, train=trained),
            functions=RunFunctions.for_run(
                run.settings, run.mesh, run.rules, trained, run.policy_graphdef
            ),
        )
        critic = train.create_train_state(
            trainer._critic_params(critic_source), optimizer, run.mesh, run.rules
        )
        step = ranked_critic_step(run, rank) if rank else None
        report = []
        for e in range(steps):
            rows_e, rewards_e = pool[e % args.pool]
            if group_filter:
                rows_e = mixed_groups_only(rows_e, rewards_e)
            rows_e, rewards_e, _ = critic_negatives.with_negatives(
                rows_e,
                rewards_e,
                negatives,
                seed=phases.step_seed(config.seed, e, "recalibrate", 1_000),
                tokenizer=run.data.tokenizer,
                eos_ids=run.eos_ids,
                pad_id=run.pad_id,
                after_break=after_break,
            )
            if step is not None:
                critic = ranked_update(run, step, critic, rows_e, rewards_e, updates)
            else:
                critic, _ = phases.critic_update(
                    run, _journal(), critic, rows_e, rewards_e, phases.Timer(), updates=updates
                )
            if e + 1 in (steps // 4, steps // 2, steps):
                q = v_last_quality(run, critic.params, rows, correct, chunk)
                report.append(
                    f"after {e + 1}: within {q['auroc_within_question']:.3f} "
                    f"pooled {q['auroc']:.3f}"
                )
        if args.pool > steps:
            # Pool batches the recipe did not fit, with 64 corrupted rows each: does the critic
            # rank a right D_L answer above its one-step-broken copy on held-out questions?
            held_rows, held_rewards, _ = critic_negatives.with_negatives(
                *pool[steps],
                64,
                seed=phases.step_seed(config.seed, steps, "recalibrate", 1_000),
                tokenizer=run.data.tokenizer,
                eos_ids=run.eos_ids,
                pad_id=run.pad_id,
            )
            q = v_last_quality(run, critic.params, held_rows, held_rewards > 0, chunk)
            report.append(f"held-out D_L + negatives: within {q['auroc_within_question']:.3f}")
        cpu = time.process_time() - start
        print(f"seed {args.seed} {recipe}: {'; '.join(report)} ({cpu:.0f} CPU s)", flush=True)
    trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
