"""The TEMPO loop: SFT -> critic warm-up -> test-time training, alternating critic recalibration
(E-step) and policy refinement (M-step) as the method's schedule says, with evaluation, metrics
and Orbax checkpoints. Rerunning the same command on the same workdir resumes.

State that a checkpoint holds: policy and critic TrainStates (params, optimizer state, step),
the loop step, whether the critic warm-up is done, and the D_L / D_U / mixed stream positions.
Sampling seeds are functions of (seed, step, phase, attempt), so no RNG state needs saving and a
resumed run draws exactly what an uninterrupted run draws. The metadata also holds the running
fault counters and each network's `ModelConfig` (so `tempo-jax export` needs only the checkpoint).

Several processes (`jax.distributed`, set up by the CLI): every process runs this same host
program on the same data (streams and sampling seeds are functions of the seed; grader outcomes
are process 0's, see `phases`); the compiled functions take global arrays built from that host
data and their sharded outputs are gathered back to every host. Only process 0 writes
metrics.jsonl, warmup_metrics.jsonl, TensorBoard, config.json and the report; all processes
save and restore the Orbax checkpoints together, so the workdir must be shared.

Faults:
  - kill -9 at any moment: the rerun resumes from the newest good checkpoint and drops the
    metrics.jsonl records past it, so the file reads as if the run never stopped.
  - SIGTERM / SIGINT: the current step (or the warm-up) finishes, a checkpoint is saved, a line
    naming it is printed to stderr and `train()` returns (exit code 0, no end-of-run report).
  - A step whose policy or critic update was skipped for a non-finite loss or gradient counts in
    `nonfinite/consecutive` and `nonfinite/total`; periodic saves wait for a clean step, and after
    `checkpoint.max_consecutive_skips` such steps in a row `TrainingHalted` is raised, the last
    checkpoint (saved before the streak) left intact.
  - Grader timeouts and crashed workers count as wrong answers; each record's `grader/pool_tasks`,
    `grader/timeouts`, `grader/crashes`, `grader/errors` and `grader/memory_errors` count every
    pool task of that step (all phases and the evaluation), `grader/*_total` the whole run.
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

from tempo_jax import parallel, train
from tempo_jax.tempo import methods, phases, report
from tempo_jax.tempo.build import build_run, init_critic
from tempo_jax.tempo.evaluation import evaluate
from tempo_jax.tempo.export import model_config_to_dict
from tempo_jax.tempo.rollout_data import concat_rows
from tempo_jax.tempo.sft import run_sft
from tempo_jax.train import storage
from tempo_jax.train.checkpointing import Checkpointer, check_writable
from tempo_jax.train.metric_writers import JsonlWriter, MetricWriters
from tempo_jax.train.preemption import PreemptionGuard

log = logging.getLogger(__name__)

PROGRESS_KEYS = ("policy/loss", "rollout/labeled_accuracy", "eval/unlabeled/mean@8")
GRADER_KEYS = ("pool_tasks", "timeouts", "crashes", "errors", "memory_errors")
# Config fields that may change between a run and its resumption without a warning.
RESUME_MAY_CHANGE = ("total_steps", "progress_bar", "parallel.", "checkpoint.", "data.dir")


class TrainingHalted(RuntimeError):
    """The loop stopped itself (too many non-finite updates in a row); the message says why and
    which checkpoint to resume from."""


@dataclasses.dataclass
class LoopState:
    """What changes as the loop runs (all of it checkpointed).

    Attributes:
      policy: the policy's TrainState.
      critic: the critic's TrainState (None for critic-free methods).
      step: TTT steps completed.
      warmed_up: critic warm-up finished.
      nonfinite_consecutive: steps in a row, up to this one, that skipped a non-finite update.
      nonfinite_total: such steps in the whole run (warm-up included).
      grader_totals: grading-pool task outcomes of the whole run ({GRADER_KEYS name: count}).
    """

    policy: train.TrainState
    critic: train.TrainState | None
    step: int = 0
    warmed_up: bool = False
    nonfinite_consecutive: int = 0
    nonfinite_total: int = 0
    grader_totals: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(GRADER_KEYS, 0)
    )


class Trainer:
    """Runs one configured method end to end in `workdir`."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config = config
        self.workdir = workdir = storage.absolute(workdir)
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
            async_timeout_s=config.checkpoint.async_timeout_s,
            keep_best=config.checkpoint.keep_best,
            keep_best_mode=config.checkpoint.keep_best_mode,
        )
        self._model_configs = {"policy": model_config_to_dict(self._initial_policy.config)}
        self._last_saved_step: int | None = None
        self.is_main_process = parallel.is_main_process()
        if self.is_main_process:
            text = json.dumps(config.to_dict(), indent=1, sort_keys=True, default=str)
            storage.write_atomic(os.path.join(workdir, "config.json"), text)

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
            self._model_configs["critic"] = model_config_to_dict(critic_module.config)
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

    def _config_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.config.to_dict(), default=str))

    def _save(self, state: LoopState, evaluation: dict[str, Any] | None = None) -> str:
        """Checkpoints `state` (once per step: a second call for the same step is a no-op), with
        this step's `evaluation` for `checkpoint.keep_best` to rank it by."""
        if self._last_saved_step == state.step:
            return self.checkpointer.step_path(state.step)
        keep_best = self.config.checkpoint.keep_best
        if keep_best and evaluation is not None and keep_best not in evaluation:
            raise ValueError(
                f"config.checkpoint.keep_best={keep_best!r} is not an eval metric of this run; "
                f"it reports {sorted(evaluation)}"
            )
        metadata = {
            "step": state.step,
            "warmed_up": state.warmed_up,
            "method": self.config.method,
            "streams": {k: s.get_state() for k, s in self.streams.items()},
            "counters": {
                "nonfinite_consecutive": state.nonfinite_consecutive,
                "nonfinite_total": state.nonfinite_total,
                "grader_totals": dict(state.grader_totals),
            },
            "models": dict(self._model_configs),
            "vocab_size": int(self.run.data.tokenizer.vocab_size),
            "config": self._config_json(),
        }
        # Step k of the checkpoint directory = k TTT steps done; the warm-up checkpoint is 0.
        path = self.checkpointer.save(state.step, self._items(state), metadata, evaluation)
        self._last_saved_step = state.step
        return path

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
            self._model_configs["critic"] = model_config_to_dict(critic_module.config)
            graphdef, critic_params = train.split_for_training(critic_module, self.run.settings)
            self.run.critic_graphdef = graphdef
            abstract["critic"] = train.abstract_train_state(
                critic_params, self.run.settings.critic_optimizer, self.run.mesh, self.run.rules
            )
        items, metadata = self.checkpointer.restore(None, abstract)
        for name, stream in self.streams.items():
            stream.set_state(metadata["streams"][name])
        path = self.checkpointer.step_path(self.checkpointer.restored_step)
        self._warn_config_changes(metadata.get("config", {}), path)
        self._last_saved_step = int(metadata["step"])
        counters = metadata.get("counters", {})
        totals = dict.fromkeys(GRADER_KEYS, 0)
        totals.update(counters.get("grader_totals", {}))
        print(f"resuming from {path} (step {metadata['step']})", file=sys.stderr)
        return LoopState(
            policy=items["policy"],
            critic=items.get("critic"),
            step=int(metadata["step"]),
            warmed_up=bool(metadata["warmed_up"]),
            nonfinite_consecutive=int(counters.get("nonfinite_consecutive", 0)),
            nonfinite_total=int(counters.get("nonfinite_total", 0)),
            grader_totals=totals,
        )

    def _warn_config_changes(self, saved: dict[str, Any], path: str) -> None:
        """Logs the config fields that differ from the checkpoint's (a resumed run with another
        learning rate or dataset is no longer the run that was checkpointed)."""
        old, new = _flatten(saved), _flatten(self._config_json())
        changed = sorted(
            k
            for k in set(old) | set(new)
            if old.get(k) != new.get(k) and not k.startswith(RESUME_MAY_CHANGE)
        )
        if changed:
            log.warning(
                "resuming from %s with a changed config: %s",
                path,
                ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed),
            )

    # --- phases --------------------------------------------------------------------------

    def _warmup(self, state: LoopState, writer: JsonlWriter) -> LoopState:
        """Fits the critic to graded D_L rollouts of the initial policy."""
        for i in range(self.config.tempo.critic_warmup_steps):
            timer = phases.Timer()
            grader_before = self._pool_counts()
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
            metrics.update(self._grader_counters(state, grader_before))
            metrics.update(self._count_nonfinite(state, metrics))
            if self.is_main_process:
                writer.write({"warmup_step": i + 1, **metrics, **timer.metrics()})
            self._halt_if_nonfinite(state, f"critic warm-up step {i + 1}")
        state.warmed_up = True
        return state

    # --- fault counters ------------------------------------------------------------------

    def _pool_counts(self) -> dict[str, int]:
        counters = self.run.pool.counters.as_dict()
        return {k: int(counters[k]) for k in GRADER_KEYS}

    def _grader_counters(self, state: LoopState, before: dict[str, int]) -> dict[str, int]:
        """Grading-pool outcomes since `before` (`grader/<name>`) and for the whole run
        (`grader/<name>_total`, checkpointed)."""
        now = self._pool_counts()
        out = {}
        for key in GRADER_KEYS:
            delta = now[key] - before[key]
            state.grader_totals[key] = state.grader_totals.get(key, 0) + delta
            out[f"grader/{key}"] = delta
            out[f"grader/{key}_total"] = state.grader_totals[key]
        return out

    def _count_nonfinite(self, state: LoopState, metrics: dict[str, Any]) -> dict[str, int]:
        """Counts a step whose policy or critic update was skipped (`<network>/skipped` = 1)."""
        skipped = any(k.endswith("/skipped") and v for k, v in metrics.items())
        if skipped:
            state.nonfinite_consecutive += 1
            state.nonfinite_total += 1
        else:
            state.nonfinite_consecutive = 0
        return {
            "nonfinite/skipped_step": int(skipped),
            "nonfinite/consecutive": state.nonfinite_consecutive,
            "nonfinite/total": state.nonfinite_total,
        }

    def _halt_if_nonfinite(self, state: LoopState, where: str) -> None:
        limit = self.config.checkpoint.max_consecutive_skips
        if state.nonfinite_consecutive < limit:
            return
        self.checkpointer.wait()  # the last good checkpoint may still be in flight
        if self._last_saved_step is None:
            resume = "no checkpoint was saved yet; a rerun starts from scratch"
        else:
            path = self.checkpointer.step_path(self._last_saved_step)
            resume = f"the last checkpoint, {path} (step {self._last_saved_step}), is intact"
        raise TrainingHalted(
            f"stopping at {where}: {state.nonfinite_consecutive} steps in a row skipped their "
            f"update for a non-finite loss or gradient (config.checkpoint."
            f"max_consecutive_skips={limit}); {resume}. Lower the learning rate or check the "
            "data, then rerun the same command to resume."
        )

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
        """Runs (or resumes) to `total_steps`; returns the final state.

        Returns early (after saving) on SIGTERM / SIGINT. Raises `TrainingHalted` after
        `checkpoint.max_consecutive_skips` non-finite steps in a row.
        """
        cfg = self.config
        with PreemptionGuard() as guard:
            state = self._restore()
            resumed = state is not None
            if state is None:
                state = self._fresh_state()
                # The local flag only: multi-process runs agree on a stop step in the TTT loop.
                if guard.signal_name is not None and cfg.sft.steps > 0:
                    sft = os.path.join(self.workdir, "sft")
                    print(
                        f"Stopped on {guard.signal_name} after SFT; SFT saved to {sft}; rerun "
                        "the same command to continue",
                        file=sys.stderr,
                    )
                    return state
            writers = MetricWriters(
                self.workdir,
                cfg.total_steps,
                initial_step=state.step,
                progress_keys=PROGRESS_KEYS,
                is_main_process=self.is_main_process,
                progress=cfg.progress_bar,
            )
            try:
                state, stopped = self._run(state, resumed, writers, guard)
            finally:
                writers.close()
        self.checkpointer.wait()
        if stopped or not self.is_main_process:
            return state
        summary_path, plot_path = report.write_report(self.workdir, title=f"{cfg.method}")
        print(storage.read_text(summary_path))
        print(f"metrics: {os.path.join(self.workdir, 'metrics.jsonl')}\nplot: {plot_path}")
        return state

    def _run(
        self, state: LoopState, resumed: bool, writers: MetricWriters, guard: PreemptionGuard
    ) -> tuple[LoopState, bool]:
        """The warm-up (fresh runs) and the TTT steps; (state, True) when stopped by a signal."""
        cfg = self.config
        # Records past the restored step (or all of them on a fresh start) are from a run that
        # did not reach its next checkpoint; they will be written again.
        writers.truncate_after(state.step if resumed else -1)  # process 0 only: it writes them
        if not resumed:
            warmup_writer = JsonlWriter(os.path.join(self.workdir, "warmup_metrics.jsonl"))
            if self.is_main_process:
                warmup_writer.truncate_after(-1)
            if self.method.uses_critic:
                state = self._warmup(state, warmup_writer)
            evaluation = None
            if cfg.eval_every > 0:
                grader_before = self._pool_counts()
                evaluation = self._evaluate(state, 0)
                record = {"step": 0, "phase": "eval", **evaluation}
                record.update(self._grader_counters(state, grader_before))
                writers.write(record)
            self._save(state, evaluation)
            if self._stop_on_signal(state, guard):
                return state, True
        save_pending = False
        while state.step < cfg.total_steps:
            grader_before = self._pool_counts()
            state, metrics = self._train_step(state)
            record = {"step": state.step, **metrics}
            is_last = state.step == cfg.total_steps
            evaluation = None
            if cfg.eval_every > 0 and (state.step % cfg.eval_every == 0 or is_last):
                evaluation = self._evaluate(state, state.step)
                record.update(evaluation)
            record.update(self._grader_counters(state, grader_before))
            record.update(self._count_nonfinite(state, metrics))
            writers.write(record)
            self._halt_if_nonfinite(state, f"step {state.step}")
            save_pending |= cfg.save_every > 0 and state.step % cfg.save_every == 0
            # keep_best ranks checkpoints by their eval: every evaluated step is saved.
            save_pending |= bool(cfg.checkpoint.keep_best) and evaluation is not None
            # A save due during a streak of skipped updates waits for a clean step, so that the
            # last checkpoint predates whatever made the updates non-finite.
            if is_last or (save_pending and state.nonfinite_consecutive == 0):
                self._save(state, evaluation)
                save_pending = False
            if self._stop_on_signal(state, guard):
                return state, True
        return state, False

    def _stop_on_signal(self, state: LoopState, guard: PreemptionGuard) -> bool:
        if not guard.should_stop(state.step):
            return False
        path = self._save(state)
        self.checkpointer.wait()
        print(guard.exit_message(state.step, path), file=sys.stderr)
        return True

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


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> LoopState:
    """The `tempo-jax train` entry point."""
    trainer = Trainer(config, workdir)
    try:
        return trainer.train()
    finally:
        trainer.close()
