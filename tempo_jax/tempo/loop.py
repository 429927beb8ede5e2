"""The TEMPO loop: SFT -> critic warm-up -> test-time training, alternating critic recalibration
(E-step) and policy refinement (M-step) as the method's schedule says, with evaluation, metrics
and Orbax checkpoints. Rerunning the same command on the same workdir resumes.

State that a checkpoint holds (`loop_checkpoints`): policy and critic TrainStates (params,
optimizer state, step), the loop step, whether the critic warm-up is done, and the D_L / D_U /
mixed stream positions. Sampling seeds are functions of (seed, step, phase, attempt), so no RNG
state needs saving and a resumed run draws exactly what an uninterrupted run draws. The metadata
also holds the running fault counters and each network's `ModelConfig` (so `tempo-jax export`
needs only the checkpoint). A checkpoint made to stop inside a step also holds the step's journal
(`step_journal`), which the resumed run replays to continue the step where it stopped.

Several processes (`jax.distributed`, set up by the CLI): every process runs this same host
program on the same data (streams and sampling seeds are functions of the seed; grader outcomes
are process 0's, see `phases`); the compiled functions take global arrays built from that host
data and their sharded outputs are gathered back to every host. Only process 0 writes
metrics.jsonl, warmup_metrics.jsonl, TensorBoard, config.json and the report; all processes
save and restore the Orbax checkpoints together, so the workdir must be shared.

Faults:
  - kill -9 at any moment: the rerun resumes from the newest good checkpoint and drops the
    metrics.jsonl records past it, so the file reads as if the run never stopped.
  - SIGTERM / SIGINT: the run stops at the next phase boundary (after a rollout chunk, a
    grading, a forward pass whose network changes later in the step, a critic or mini-batch
    policy update, or between warm-up steps or steps), saves an in-step checkpoint there (a
    regular one between steps), prints a line naming it to stderr and `train()` returns (exit
    code 0, no end-of-run report). The resumed run continues the step bitwise as if it never
    stopped; the step's metrics record is written once, when the step ends.
  - A step whose policy or critic update was skipped for a non-finite loss or gradient counts in
    `nonfinite/consecutive` and `nonfinite/total`; periodic saves wait for a clean step, and after
    `checkpoint.max_consecutive_skips` such steps in a row `TrainingHalted` is raised, the last
    checkpoint (saved before the streak) left intact.
  - Grader timeouts and crashed workers count as wrong answers. Each record's `grader/<key>`
    (`loop_checkpoints.GRADER_KEYS`: items, fast_path, no_box, too_long, pool_tasks, timeouts,
    crashes, errors, memory_errors) counts every grading of that step (all phases, answer
    clustering and the evaluation), read from the grading pool by the loop alone;
    `grader/<key>_total` counts the whole run.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import ml_collections
import numpy as np

from tempo_jax import parallel, train
from tempo_jax.config import methods
from tempo_jax.config.settings import RunSettings
from tempo_jax.tempo import critic_negatives, phases
from tempo_jax.tempo.build import build_run, init_critic
from tempo_jax.tempo.evaluation import evaluate
from tempo_jax.tempo.loop_checkpoints import (
    GRADER_KEYS,
    LoopCheckpoints,
    LoopState,
    StepInProgress,
    StepProgress,
    abstract_items,
)
from tempo_jax.tempo.rollout_data import concat_rows
from tempo_jax.tempo.step_journal import Interrupted, StepJournal
from tempo_jax.train import run_report, storage
from tempo_jax.train.checkpointing import Checkpointer, check_writable
from tempo_jax.train.hf_export import model_config_to_dict
from tempo_jax.train.metric_writers import JsonlWriter, MetricWriters
from tempo_jax.train.preemption import PreemptionGuard
from tempo_jax.train.sft import run_sft

log = logging.getLogger(__name__)

PROGRESS_KEYS = ("policy/loss", "rollout/labeled_accuracy", "eval/unlabeled/mean@8")
EVAL_TIMING = "timing/eval_"  # prefix of the evaluation's stage times in a step's record


class TrainingHalted(RuntimeError):
    """The loop stopped itself (too many non-finite updates in a row); the message says why and
    which checkpoint to resume from."""


class _Stopped(Exception):  # noqa: N818  (control flow: the run saved and stops)
    """Raised once the run saved on a stop request; ends `_run` with `state`."""

    def __init__(self, state: LoopState):
        super().__init__("stopped")
        self.state = state


class Trainer:
    """Runs one configured method end to end in `workdir`.

    Attributes:
      run: the built run (`build.Run`), its settings `settings`.
      loop_checkpoints: what the loop saves and restores (regular and in-step checkpoints).
      checkpointer: the regular checkpoints' Orbax `Checkpointer` (`loop_checkpoints.regular`).
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config = config
        self.settings = settings = RunSettings.from_config(config)
        self.workdir = workdir = storage.absolute(workdir)
        check_writable(workdir, min_free_bytes=settings.checkpoint.min_free_mb << 20)
        self.run, self._initial_policy = build_run(config, workdir, settings)
        self.method = settings.method
        self.streams = {
            "labeled": self.run.data.labeled_batches(),
            "unlabeled": self.run.data.unlabeled_batches(),
            "mixed": self.run.data.mixed_batches(),
        }
        self.guard = PreemptionGuard()
        self.loop_checkpoints = LoopCheckpoints(
            workdir,
            self.run,
            self.streams,
            self.guard,
            {"policy": model_config_to_dict(self._initial_policy.config)},
        )
        # Set by `_restore` when the newest checkpoint stopped inside a step; the step (or
        # warm-up step) it interrupted takes it over in `_begin`.
        self._progress: StepProgress | None = None
        self._phases = {
            methods.RECALIBRATE: self._recalibrate,
            methods.REFINE: self._refine,
            methods.MIXED_UPDATE: self._mixed_update,
        }
        self.is_main_process = parallel.is_main_process()
        if self.is_main_process:
            text = json.dumps(config.to_dict(), indent=1, sort_keys=True, default=str)
            storage.write_atomic(os.path.join(workdir, "config.json"), text)

    @property
    def checkpointer(self) -> Checkpointer:
        return self.loop_checkpoints.regular

    # --- state ---------------------------------------------------------------------------

    def _critic_params(self, policy_module):
        """A critic built from `policy_module`, as trainable parameters; its graphdef goes to
        the run's functions and its config to the checkpoints' metadata."""
        critic_module = init_critic(self.config, policy_module, self.run.mesh, self.run.rules)
        self.loop_checkpoints.model_configs["critic"] = model_config_to_dict(critic_module.config)
        graphdef, critic_params = train.split_for_training(critic_module, self.settings.train)
        self.run.functions.set_critic(graphdef)
        return critic_params

    def _critic_source(self, policy_module):
        """The module the critic copies: `policy_module` (the SFT policy), or with
        `tempo.critic_sft_steps` N > 0 that policy fine-tuned on D_L's solutions for N more steps
        (`sft`'s recipe over N steps, saved under WORKDIR/critic_sft; the policy is unchanged)."""
        steps = self.settings.tempo.critic_sft_steps
        if steps == 0:
            return policy_module
        sft_dir = os.path.join(self.workdir, "critic_sft")
        return run_sft(self.run, policy_module, sft_dir, steps=steps)

    def _fresh_state(self) -> LoopState:
        policy_module = self._initial_policy
        if self.settings.sft.steps > 0:
            policy_module = run_sft(self.run, policy_module, os.path.join(self.workdir, "sft"))
        trained = self.settings.train
        _, policy_params = train.split_for_training(policy_module, trained)
        policy = train.create_train_state(
            policy_params, trained.policy_optimizer, self.run.mesh, self.run.rules
        )
        critic = None
        if self.method.uses_critic:
            critic = train.create_train_state(
                self._critic_params(self._critic_source(policy_module)),
                trained.critic_optimizer,
                self.run.mesh,
                self.run.rules,
            )
        return LoopState(policy=policy, critic=critic)

    def _save(self, state: LoopState, evaluation: dict[str, Any] | None = None) -> str:
        """A regular checkpoint of `state` (see `LoopCheckpoints.save`). Step k of the checkpoint
        directory = k TTT steps done; the warm-up checkpoint is 0."""
        return self.loop_checkpoints.save(state, evaluation)

    def _restore(self) -> LoopState | None:
        """The newest checkpointed state, or None; sets `_progress` when it stopped in a step."""
        policy_params = train.split_for_training(self._initial_policy, self.settings.train)[1]
        critic_params = None
        if self.method.uses_critic:
            critic_params = self._critic_params(self._initial_policy)
        abstract = abstract_items(self.run, policy_params, critic_params)
        restored = self.loop_checkpoints.restore(abstract)
        if restored is None:
            return None
        state, self._progress = restored
        return state

    # --- stopping inside a step ----------------------------------------------------------

    def _begin(self, scope: str, index: int) -> StepInProgress:
        """The step (or warm-up step) `index` starting now: its journal replays the interrupted
        step's units when `_progress` holds them, and stops at the guard's request."""
        streams = {k: s.get_state() for k, s in self.streams.items()}
        before = self._pool_counts()
        progress, self._progress = self._progress, None
        recorded, where = None, ""
        if progress is not None:
            # What the interrupted run's part of the step counted is part of this step's counts.
            before = {k: before[k] - progress.grader_done.get(k, 0) for k in GRADER_KEYS}
            recorded, where = progress.units, progress.where
        journal = StepJournal(scope, self.guard.should_stop, recorded, where=where)
        return StepInProgress(index, journal, streams, before)

    def _stop_in_step(
        self, state: LoopState, step: StepInProgress, warmup_steps_done: int | None
    ) -> None:
        """Saves `step`, interrupted at a unit boundary (an in-step checkpoint), and ends the
        run."""
        journal = step.journal
        for network, train_state in journal.latest.items():
            setattr(state, network, train_state)
        now = self._pool_counts()
        progress = StepProgress(
            in_warmup=warmup_steps_done is not None,
            warmup_steps_done=warmup_steps_done or 0,
            units=journal.units,
            grader_done={k: now[k] - step.grader_before[k] for k in GRADER_KEYS},
        )
        path = self.loop_checkpoints.save_in_step(state, step.streams_at_start, progress)
        where = f"before {journal.scope}"
        if journal.units:
            where = f"in {journal.scope} after {journal.units[-1][0]}"
        print(self.guard.exit_message(where, path), file=sys.stderr)
        raise _Stopped(state)

    # --- phases --------------------------------------------------------------------------

    def _warmup(self, state: LoopState, writer: JsonlWriter, done: int = 0) -> LoopState:
        """Fits the critic to graded D_L rollouts of the initial policy: warm-up steps `done`
        + 1 ... (a run that stopped inside the warm-up continues it)."""
        total = self.settings.tempo.critic_warmup_steps
        for i in range(done, total):
            step = self._begin(f"warm-up step {i + 1}", i)
            timer = phases.Timer()
            try:
                rows, rewards, metrics = self._fit_critic(state, step, timer, prefix="warmup")
            except Interrupted:
                self._stop_in_step(state, step, warmup_steps_done=i)
            step.journal.finish()
            metrics.update(phases.rollout_metrics("warmup", rows, rewards))
            metrics.update(self._grader_counters(state, step.grader_before))
            metrics.update(self._count_nonfinite(state, metrics))
            if self.is_main_process:
                writer.write({"warmup_step": i + 1, **metrics, **timer.metrics()})
            self._halt_if_nonfinite(state, f"critic warm-up step {i + 1}")
            if i + 1 < total and self.guard.should_stop():  # between warm-up steps
                step = self._begin(f"warm-up step {i + 2}", i + 1)
                self._stop_in_step(state, step, warmup_steps_done=i + 1)
        state.warmed_up = True
        return state

    # --- fault counters ------------------------------------------------------------------

    def _pool_counts(self) -> dict[str, int]:
        counters = self.run.pool.counters.as_dict()
        return {k: int(counters[k]) for k in GRADER_KEYS}

    def _grader_counters(self, state: LoopState, before: dict[str, int]) -> dict[str, int]:
        """Grading-pool outcomes since `before` (`grader/<name>`) and for the whole run
        (`grader/<name>_total`, checkpointed): the one writer of `grader/*`."""
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
        limit = self.settings.checkpoint.max_consecutive_skips
        if state.nonfinite_consecutive < limit:
            return
        self.checkpointer.wait()  # the last good checkpoint may still be in flight
        last = self.loop_checkpoints.last_saved_step
        if last is None:
            resume = "no checkpoint was saved yet; a rerun starts from scratch"
        else:
            path = self.checkpointer.step_path(last)
            resume = f"the last checkpoint, {path} (step {last}), is intact"
        raise TrainingHalted(
            f"stopping at {where}: {state.nonfinite_consecutive} steps in a row skipped their "
            f"update for a non-finite loss or gradient (config.checkpoint."
            f"max_consecutive_skips={limit}); {resume}. Lower the learning rate or check the "
            "data, then rerun the same command to resume."
        )

    def _collect(
        self, state: LoopState, step: StepInProgress, stream: str, phase: str, timer, metrics
    ):
        """`phases.collect_groups` from stream `stream` under the current policy, as phase
        `phase` of `step` (its seeds and journal units); its metrics go to `metrics` (with the
        batch's `rollout/*` summary for a policy update's batch). Returns (rows, rewards)."""
        rows, rewards, m = phases.collect_groups(
            self.run,
            self.streams[stream],
            state.policy.params,
            journal=step.journal,
            step=step.index,
            phase=phase,
            timer=timer,
        )
        metrics.update(m)
        if phase != "recalibrate":
            metrics.update(phases.rollout_metrics("rollout", rows, rewards))
        return rows, rewards

    def _update_critic(self, state: LoopState, journal, rows, rewards, timer, prefix="critic"):
        """`tempo.critic_updates` value-loss updates of `state.critic` on graded `rows`;
        returns their metrics."""
        updates = self.settings.tempo.critic_updates
        state.critic, metrics = phases.critic_update(
            self.run, journal, state.critic, rows, rewards, timer, updates=updates, prefix=prefix
        )
        return metrics

    def _fit_critic(self, state: LoopState, step: StepInProgress, timer: phases.Timer, prefix: str):
        """Graded D_L rollouts of the current policy (the recalibrate phase's seeds of `step`)
        and `tempo.critic_updates` value-loss updates on them: an E-step or a warm-up step.
        Returns (rows, rewards, metrics)."""
        journal, metrics = step.journal, {}
        rows, rewards = self._collect(state, step, "labeled", "recalibrate", timer, metrics)
        # tempo.critic_negatives: corrupted copies of graded-right D_L rows (target -1) join the
        # critic's batch only; the rows returned (M-step extras, whitening) stay the graded ones.
        fit_rows, fit_rewards, m = critic_negatives.with_negatives(
            rows,
            rewards,
            self.settings.tempo.critic_negatives,
            seed=phases.step_seed(self.settings.seed, step.index, "recalibrate", 1_000),
            tokenizer=self.run.data.tokenizer,
            eos_ids=self.run.eos_ids,
            pad_id=self.run.pad_id,
        )
        metrics.update(m)
        metrics.update(self._update_critic(state, journal, fit_rows, fit_rewards, timer, prefix))
        with_labeled = self.settings.tempo.whiten_scope == "with_labeled"
        if with_labeled and self.method.stream != methods.MIXED:
            # The phased M-steps until the next E-step whiten together with this graded batch,
            # under the critic they will use (it changes only here).
            values = phases.critic_values(
                self.run, journal, f"{prefix}/whiten_values", state.critic.params, rows, timer
            )
            state.labeled_whiten = phases.labeled_whiten_stats(rewards, values, rows)
        return rows, rewards, metrics

    # Each phase of a step's schedule (`methods.Method.phases`), looked up in `self._phases`:
    # (state, step, timer, metrics) -> None, updating `state` and `metrics` in place.

    def _recalibrate(self, state, step: StepInProgress, timer, metrics):
        """E-step: the critic refitted to graded D_L rollouts (kept for the M-step)."""
        rows, rewards, m = self._fit_critic(state, step, timer, prefix="critic")
        metrics.update(m)
        metrics.update(phases.rollout_metrics("recalibrate", rows, rewards))
        step.graded_labeled = rows, rewards
        return step.graded_labeled

    def _refine(self, state, step: StepInProgress, timer, metrics):
        """M-step: a policy update on rollouts of the method's stream."""
        journal = step.journal
        stream = "labeled" if self.method.stream == methods.LABELED else "unlabeled"
        rows, rewards = self._collect(state, step, stream, "refine", timer, metrics)
        keep = None
        if self.settings.tempo.policy_trains_on_labeled and self.method.uses_critic:
            rows, rewards, keep = self._with_labeled(rows, rewards, step.graded_labeled)
        values = None
        if state.critic is not None:
            values = phases.critic_values(
                self.run, journal, "policy/values", state.critic.params, rows, timer
            )
        state.policy, m = phases.policy_update(
            self.run,
            journal,
            state.policy,
            rows,
            rewards,
            timer,
            values=values,
            keep=keep,
            whiten_extra=state.labeled_whiten,
        )
        metrics.update(m)

    def _mixed_update(self, state, step: StepInProgress, timer, metrics):
        """tempo_mixed: the policy updated on one mixed D_L + D_U batch, and the critic on its
        labeled rows on every `tempo.mixed_recalibrate_every`-th step (every step by default,
        the authors' loop)."""
        journal = step.journal
        rows, rewards = self._collect(state, step, "mixed", "mixed", timer, metrics)
        # Advantages use the critic before its update (the authors' order): its values are taken
        # first (also what a resumed step needs once the critic moved).
        values = phases.critic_values(
            self.run, journal, "policy/values", state.critic.params, rows, timer
        )
        recalibrates = step.index % self.settings.tempo.mixed_recalibrate_every == 0
        metrics["mixed/critic_updated"] = float(recalibrates)
        if recalibrates:
            metrics.update(self._update_critic(state, journal, rows, rewards, timer))
        state.policy, m = phases.policy_update(
            self.run, journal, state.policy, rows, rewards, timer, values=values
        )
        metrics.update(m)

    def _train_step(self, state: LoopState) -> tuple[LoopState, dict[str, Any]]:
        """One loop step: the phases the method's schedule gives for `state.step`, then its
        evaluation when one is due, and the step's counters. Stops at a phase boundary when
        asked to (saving an in-step checkpoint: `_Stopped`). Returns (state, the step's record
        without its step number)."""
        step = self._begin(f"step {state.step + 1}", state.step)
        timer = phases.Timer()
        schedule = self.method.phases(
            step.index, self.settings.tempo.recalibrate_every, critic_warmed_up=state.warmed_up
        )
        metrics: dict[str, Any] = {"phase": "+".join(schedule)}
        try:
            for phase in schedule:
                self._phases[phase](state, step, timer, metrics)
        except Interrupted:
            self._stop_in_step(state, step, warmup_steps_done=None)
        step.journal.finish()
        state.step = step.index + 1
        metrics.update(timer.metrics())
        if self._eval_due(state.step):
            metrics.update(self._evaluate(state, state.step))
        metrics.update(self._grader_counters(state, step.grader_before))
        metrics.update(self._count_nonfinite(state, metrics))
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
        settings = self.settings
        with self.guard as guard:
            state = self._restore()
            resumed = state is not None
            if state is None:
                state = self._fresh_state()
                # The local flag only: multi-process runs agree on a stop point in the loop.
                if guard.signal_name is not None and settings.sft.steps > 0:
                    sft = os.path.join(self.workdir, "sft")
                    print(
                        f"Stopped on {guard.signal_name} after SFT; SFT saved to {sft}; rerun "
                        "the same command to continue",
                        file=sys.stderr,
                    )
                    return state
            writers = MetricWriters(
                self.workdir,
                settings.total_steps,
                initial_step=state.step,
                progress_keys=PROGRESS_KEYS,
                is_main_process=self.is_main_process,
                progress=settings.progress_bar,
            )
            stopped = True
            try:
                state = self._warmup_and_steps(state, resumed, writers)
                stopped = False
            except _Stopped as stop:
                state = stop.state
            finally:
                writers.close()
        self.checkpointer.wait()
        if stopped or not self.is_main_process:
            return state
        summary_path, plot_path = run_report.write_report(self.workdir, title=self.method.name)
        print(storage.read_text(summary_path))
        print(f"metrics: {os.path.join(self.workdir, 'metrics.jsonl')}\nplot: {plot_path}")
        return state

    def _warmup_and_steps(
        self, state: LoopState, resumed: bool, writers: MetricWriters
    ) -> LoopState:
        """The warm-up (unless a checkpoint is past it) and the TTT steps. Raises `_Stopped`
        once it saved on a stop request."""
        settings = self.settings
        progress = self._progress
        in_warmup = not resumed or (progress is not None and progress.in_warmup)
        # Records past the restored step (or all of them before step 0's) are from a run that
        # did not reach its next checkpoint; they will be written again.
        writers.truncate_after(-1 if in_warmup else state.step)  # process 0 only: it writes
        if in_warmup:
            done = progress.warmup_steps_done if progress is not None else 0
            warmup_writer = JsonlWriter(os.path.join(self.workdir, "warmup_metrics.jsonl"))
            if self.is_main_process:
                warmup_writer.truncate_after(done, key="warmup_step")
            if self.method.uses_critic:
                state = self._warmup(state, warmup_writer, done)
            evaluation = None
            if settings.eval_every > 0:
                grader_before = self._pool_counts()
                evaluation = self._evaluate(state, 0)
                record = {"step": 0, "phase": "eval", **evaluation}
                record.update(self._grader_counters(state, grader_before))
                writers.write(record)
            self._save(state, evaluation)
            self._stop_on_signal(state)
        while state.step < settings.total_steps:
            state, metrics = self._train_step(state)
            writers.write({"step": state.step, **metrics})
            is_last = state.step == settings.total_steps
            evaluation = _evaluation_of(metrics) if self._eval_due(state.step) else None
            self._halt_if_nonfinite(state, f"step {state.step}")
            every = settings.save_every
            state.save_pending |= every > 0 and state.step % every == 0
            # keep_best ranks checkpoints by their eval: every evaluated step is saved.
            state.save_pending |= bool(settings.checkpoint.keep_best) and evaluation is not None
            # A save due during a streak of skipped updates waits for a clean step, so that the
            # last checkpoint predates whatever made the updates non-finite.
            if is_last or (state.save_pending and state.nonfinite_consecutive == 0):
                state.save_pending = False
                self._save(state, evaluation)
            self._stop_on_signal(state)
        return state

    def _stop_on_signal(self, state: LoopState) -> None:
        """A stop point between steps: saves `state` (a regular checkpoint) and raises
        `_Stopped` if the run is to stop."""
        if not self.guard.should_stop():
            return
        path = self._save(state)
        self.checkpointer.wait()
        print(self.guard.exit_message(f"after step {state.step}", path), file=sys.stderr)
        raise _Stopped(state)

    def _eval_due(self, step: int) -> bool:
        """Whether TTT step `step` (1-based: steps done) ends with an evaluation."""
        every = self.settings.eval_every
        return every > 0 and (step % every == 0 or step == self.settings.total_steps)

    def _evaluate(self, state: LoopState, step: int) -> dict[str, float]:
        """`evaluation.evaluate` with its stage times as `timing/eval_<stage>_s`."""
        timer = phases.Timer()
        critic_params = state.critic.params if state.critic is not None else None
        out = evaluate(self.run, state.policy.params, critic_params, step=step, timer=timer)
        out.update({f"{EVAL_TIMING}{k[len('timing/') :]}": v for k, v in timer.metrics().items()})
        return out

    def close(self) -> None:
        try:
            self.loop_checkpoints.close()
        finally:
            self.run.pool.close()


def _evaluation_of(record: dict[str, Any]) -> dict[str, Any]:
    """The `_evaluate` part of a step's record (what `checkpoint.keep_best` ranks)."""
    return {k: v for k, v in record.items() if k.startswith(("eval/", EVAL_TIMING))}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> LoopState:
    """The `tempo-jax train` entry point."""
    trainer = Trainer(config, workdir)
    try:
        return trainer.train()
    finally:
        trainer.close()
