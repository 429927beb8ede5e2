"""The TEMPO loop: SFT -> critic warm-up -> test-time training, alternating critic recalibration
(E-step) and policy refinement (M-step) as the method's schedule says, with evaluation, metrics
and Orbax checkpoints. Rerunning the same command on the same workdir resumes.

State that a checkpoint holds: policy and critic TrainStates (params, optimizer state, step),
the loop step, whether the critic warm-up is done, and the D_L / D_U / mixed stream positions.
Sampling seeds are functions of (seed, step, phase, attempt), so no RNG state needs saving and a
resumed run draws exactly what an uninterrupted run draws.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tempo_jax import train
from tempo_jax.tempo import methods, phases, report
from tempo_jax.tempo.build import build_run, init_critic
from tempo_jax.tempo.evaluation import evaluate
from tempo_jax.tempo.sft import run_sft
from tempo_jax.train.checkpointing import Checkpointer, check_writable
from tempo_jax.train.metric_writers import JsonlWriter, MetricWriters
from tempo_jax.train.preemption import PreemptionGuard

log = logging.getLogger(__name__)

PROGRESS_KEYS = ("policy/loss", "rollout/labeled_accuracy", "eval/unlabeled/mean@8")


@dataclasses.dataclass
class LoopState:
    """What changes as the loop runs (all of it checkpointed).

    Attributes:
      policy: the policy's TrainState.
      critic: the critic's TrainState (None for critic-free methods).
      step: TTT steps completed.
      warmed_up: critic warm-up finished.
    """

    policy: train.TrainState
    critic: train.TrainState | None
    step: int = 0
    warmed_up: bool = False


class Trainer:
    """Runs one configured method end to end in `workdir`."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config = config
        self.workdir = workdir
        check_writable(workdir, min_free_bytes=config.checkpoint.min_free_mb << 20)
        self.run, self._initial_policy = build_run(config, workdir)
        self.method = self.run.method
        self.streams = {
            "labeled": self.run.data.labeled_batches(),
            "unlabeled": self.run.data.unlabeled_batches(),
            "mixed": self.run.data.mixed_batches(),
        }
        self.checkpointer = Checkpointer(
            os.path.join(workdir, "checkpoints"),
            keep=config.checkpoint.keep,
            async_save=config.checkpoint.async_save,
        )
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config.to_dict(), f, indent=1, sort_keys=True, default=str)

    # --- state ---------------------------------------------------------------------------

    def _fresh_state(self) -> LoopState:
        policy_module = self._initial_policy
        if self.config.sft.steps > 0:
            policy_module = run_sft(self.run, policy_module, os.path.join(self.workdir, "sft"))
        _, policy_params = train.split_for_training(policy_module, self.run.settings)
        policy = train.create_train_state(
            policy_params, self.run.settings.policy_optimizer, self.run.mesh, self.run.rules
        )
        critic = None
        if self.method.uses_critic:
            critic_module = init_critic(self.config, policy_module)
            graphdef, critic_params = train.split_for_training(critic_module, self.run.settings)
            self.run.critic_graphdef = graphdef
            critic = train.create_train_state(
                critic_params, self.run.settings.critic_optimizer, self.run.mesh, self.run.rules
            )
        return LoopState(policy=policy, critic=critic)

    def _items(self, state: LoopState) -> dict[str, Any]:
        items = {"policy": state.policy}
        if state.critic is not None:
            items["critic"] = state.critic
        return items

    def _save(self, state: LoopState) -> str:
        metadata = {
            "step": state.step,
            "warmed_up": state.warmed_up,
            "method": self.config.method,
            "streams": {k: s.get_state() for k, s in self.streams.items()},
            "config": json.loads(json.dumps(self.config.to_dict(), default=str)),
        }
        # Step k of the checkpoint directory = k TTT steps done; the warm-up checkpoint is 0.
        return self.checkpointer.save(state.step, self._items(state), metadata)

    def _restore(self) -> LoopState | None:
        if self.checkpointer.latest_good_step() is None:
            return None
        policy_abstract = train.abstract_train_state(
            _abstract_params(self._initial_policy, self.run.settings),
            self.run.settings.policy_optimizer,
            self.run.mesh,
            self.run.rules,
        )
        abstract = {"policy": policy_abstract}
        if self.method.uses_critic:
            critic_module = init_critic(self.config, self._initial_policy)
            graphdef, critic_params = train.split_for_training(critic_module, self.run.settings)
            self.run.critic_graphdef = graphdef
            abstract["critic"] = train.abstract_train_state(
                critic_params, self.run.settings.critic_optimizer, self.run.mesh, self.run.rules
            )
        items, metadata = self.checkpointer.restore(None, abstract)
        for name, stream in self.streams.items():
            stream.set_state(metadata["streams"][name])
        log.info("resumed from %s", self.checkpointer.step_path(self.checkpointer.restored_step))
        return LoopState(
            policy=items["policy"],
            critic=items.get("critic"),
            step=int(metadata["step"]),
            warmed_up=bool(metadata["warmed_up"]),
        )

    # --- phases --------------------------------------------------------------------------

    def _warmup(self, state: LoopState, writer: JsonlWriter) -> LoopState:
        """Fits the critic to graded D_L rollouts of the initial policy."""
        for i in range(self.config.tempo.critic_warmup_steps):
            timer = phases.Timer()
            rows, rewards, metrics = phases.collect_groups(
                self.run,
                self.streams["labeled"],
                state.policy.params,
                step=i,
                phase="recalibrate",
                timer=timer,
            )
            state.critic, m = phases.critic_update(
                self.run,
                state.critic,
                rows,
                rewards,
                timer,
                updates=self.config.tempo.critic_updates,
                prefix="warmup",
            )
            metrics.update(m)
            metrics.update(phases.rollout_metrics("warmup", rows, rewards))
            writer.write({"warmup_step": i + 1, **metrics, **timer.metrics()})
        state.warmed_up = True
        return state

    def _recalibrate(self, state, step, timer, metrics):
        rows, rewards, m = phases.collect_groups(
            self.run,
            self.streams["labeled"],
            state.policy.params,
            step=step,
            phase="recalibrate",
            timer=timer,
        )
        metrics.update(m)
        metrics.update(phases.rollout_metrics("recalibrate", rows, rewards))
        state.critic, m = phases.critic_update(
            self.run, state.critic, rows, rewards, timer, updates=self.config.tempo.critic_updates
        )
        metrics.update(m)
        return rows, rewards

    def _train_step(self, state: LoopState) -> tuple[LoopState, dict[str, Any]]:
        """One loop step: the phases the method's schedule gives for `state.step`."""
        step = state.step
        timer = phases.Timer()
        schedule = self.method.phases(
            step, self.config.tempo.recalibrate_every, critic_warmed_up=state.warmed_up
        )
        metrics: dict[str, Any] = {"phase": "+".join(schedule)}
        labeled = None
        for phase in schedule:
            if phase == methods.RECALIBRATE:
                labeled = self._recalibrate(state, step, timer, metrics)
            elif phase == methods.REFINE:
                stream = "labeled" if self.method.stream == methods.LABELED else "unlabeled"
                rows, rewards, m = phases.collect_groups(
                    self.run,
                    self.streams[stream],
                    state.policy.params,
                    step=step,
                    phase="refine",
                    timer=timer,
                )
                metrics.update(m)
                metrics.update(phases.rollout_metrics("rollout", rows, rewards))
                keep = None
                if self.config.tempo.policy_trains_on_labeled and self.method.uses_critic:
                    rows, rewards, keep = self._with_labeled(rows, rewards, labeled)
                critic_params = state.critic.params if state.critic is not None else None
                state.policy, m = phases.policy_update(
                    self.run, state.policy, critic_params, rows, rewards, timer, keep=keep
                )
                metrics.update(m)
            elif phase == methods.MIXED_UPDATE:
                rows, rewards, m = phases.collect_groups(
                    self.run,
                    self.streams["mixed"],
                    state.policy.params,
                    step=step,
                    phase="mixed",
                    timer=timer,
                )
                metrics.update(m)
                metrics.update(phases.rollout_metrics("rollout", rows, rewards))
                # Advantages use the critic before its update (the authors' order).
                old_critic_params = jax.tree.map(jnp.copy, state.critic.params)
                state.critic, m = phases.critic_update(
                    self.run,
                    state.critic,
                    rows,
                    rewards,
                    timer,
                    updates=self.config.tempo.critic_updates,
                )
                metrics.update(m)
                state.policy, m = phases.policy_update(
                    self.run, state.policy, old_critic_params, rows, rewards, timer
                )
                metrics.update(m)
        state.step = step + 1
        metrics.update(timer.metrics())
        return state, metrics

    def _with_labeled(self, rows, rewards, labeled):
        """The M-step batch plus this step's graded D_L rollouts (phased tempo option), with a
        fixed row count: steps without an E-step carry placeholder rows with keep = False."""
        from tempo_jax.tempo.rollout_data import concat_rows

        n_unl = rows.num_rows
        if labeled is not None:
            l_rows, l_rewards = labeled
            keep = np.ones(n_unl + l_rows.num_rows, bool)
        else:
            l_rows, l_rewards = rows, np.zeros_like(rewards)
            keep = np.concatenate([np.ones(n_unl, bool), np.zeros(n_unl, bool)])
        return concat_rows([rows, l_rows]), np.concatenate([rewards, l_rewards]), keep

    # --- the run -------------------------------------------------------------------------

    def train(self) -> LoopState:
        """Runs (or resumes) to `total_steps`; returns the final state."""
        cfg = self.config
        state = self._restore()
        resumed = state is not None
        if state is None:
            state = self._fresh_state()
        writers = MetricWriters(
            self.workdir,
            cfg.total_steps,
            initial_step=state.step,
            progress_keys=PROGRESS_KEYS,
            is_main_process=jax.process_index() == 0,
            progress=cfg.progress_bar,
        )
        # Records past the restored step (or all of them on a fresh start) are from a run that
        # did not reach its next checkpoint; they will be written again.
        writers.jsonl.truncate_after(state.step if resumed else -1)
        warmup_writer = JsonlWriter(os.path.join(self.workdir, "warmup_metrics.jsonl"))
        try:
            with PreemptionGuard() as guard:
                if not resumed:
                    warmup_writer.truncate_after(-1)
                    if self.method.uses_critic:
                        state = self._warmup(state, warmup_writer)
                    if cfg.eval_every > 0:
                        writers.write({"step": 0, "phase": "eval", **self._evaluate(state, 0)})
                    self._save(state)
                while state.step < cfg.total_steps:
                    state, metrics = self._train_step(state)
                    record = {"step": state.step, **metrics}
                    is_last = state.step == cfg.total_steps
                    if cfg.eval_every > 0 and (state.step % cfg.eval_every == 0 or is_last):
                        record.update(self._evaluate(state, state.step))
                    writers.write(record)
                    if is_last or (cfg.save_every > 0 and state.step % cfg.save_every == 0):
                        self._save(state)
                    if guard.should_stop(state.step):
                        path = self._save(state)
                        self.checkpointer.wait()
                        print(guard.exit_message(state.step, path), file=sys.stderr)
                        return state
            self.checkpointer.wait()
        finally:
            writers.close()
        summary_path, plot_path = report.write_report(self.workdir, title=f"{cfg.method}")
        with open(summary_path, encoding="utf-8") as f:
            print(f.read())
        print(f"metrics: {os.path.join(self.workdir, 'metrics.jsonl')}\nplot: {plot_path}")
        return state

    def _evaluate(self, state: LoopState, step: int) -> dict[str, float]:
        timer = phases.Timer()
        critic_params = state.critic.params if state.critic is not None else None
        out = evaluate(self.run, state.policy.params, critic_params, step=step, timer=timer)
        out.update({f"timing/eval_{k[len('timing/') :]}": v for k, v in timer.metrics().items()})
        return out

    def close(self) -> None:
        self.checkpointer.close()
        self.run.pool.close()


def _abstract_params(policy, settings):
    return train.split_for_training(policy, settings)[1]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> LoopState:
    """The `tempo-jax train` entry point."""
    trainer = Trainer(config, workdir)
    try:
        return trainer.train()
    finally:
        trainer.close()
