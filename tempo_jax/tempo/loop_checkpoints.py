"""What the TEMPO loop checkpoints, and where: regular checkpoints at step boundaries, and in-step
checkpoints made to stop on a preemption in the middle of a step.

  WORKDIR/checkpoints/<k>              k TTT steps done (0: critic warm-up and step-0 eval done)
  WORKDIR/in_step_checkpoints/<i>      the newest stop inside a step; i only orders them

A regular checkpoint holds the loop state (`LoopState`: both networks' TrainStates, EM and fault
counters) and the data streams' positions. An in-step checkpoint holds the same at a phase
boundary inside TTT step k + 1 (or inside the critic warm-up), where the TrainStates are those
after the step's finished updates, plus `StepProgress`: the step's journal of finished units
(`tempo_jax.tempo.step_journal`), the grading-pool outcomes so far, and the streams' positions
at the START of the step, so the resumed run reruns the step's code from its start and replays
the journal (README "Preemption"). It lives in its own directory because it is
not a step boundary: export, keep-N and keep-best see only regular checkpoints. It supersedes
the regular checkpoints it is newer than; the first regular save after it deletes it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from typing import Any

import ml_collections

from tempo_jax import train
from tempo_jax.rewards.grading_pool import GradingCounters
from tempo_jax.tempo import step_journal
from tempo_jax.tempo.build import Run
from tempo_jax.tempo.step_journal import StepJournal
from tempo_jax.train.checkpointing import Checkpointer
from tempo_jax.train.preemption import PreemptionGuard

log = logging.getLogger(__name__)

# The grading pool's counters, reported per step (`grader/<key>`) and per run (`_total`).
GRADER_KEYS = tuple(f.name for f in dataclasses.fields(GradingCounters))
# Config fields that may change between a run and its resumption without a warning.
RESUME_MAY_CHANGE = ("total_steps", "progress_bar", "parallel.", "checkpoint.", "data.dir")
IN_STEP_DIR = "in_step_checkpoints"
_JOURNAL_ITEM = "journal"


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
      save_pending: a periodic save is due and waits for a step without skipped updates.
      labeled_whiten: (count, sum, sum of squares) of the last graded D_L batch's raw em_token
        advantages (`tempo.whiten_scope = with_labeled`), None before the first E-step.
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
    save_pending: bool = False
    labeled_whiten: list[float] | None = None


@dataclasses.dataclass
class StepProgress:
    """How far an interrupted step got (what an in-step checkpoint adds to the loop state).

    Attributes:
      in_warmup: the interrupted work is critic warm-up step `warmup_steps_done + 1`; else TTT
        step `LoopState.step + 1`.
      warmup_steps_done: warm-up steps finished (in the warm-up; 0 otherwise).
      units: the step's finished journal units, (name, outputs), in order.
      grader_done: grading-pool task outcomes of the step so far ({GRADER_KEYS name: count}).
      where: the checkpoint's directory (for messages).
    """

    in_warmup: bool
    warmup_steps_done: int
    units: list[tuple[str, step_journal.Outputs]]
    grader_done: dict[str, int]
    where: str = ""


@dataclasses.dataclass
class StepInProgress:
    """A loop step (or warm-up step) from its start, handed explicitly to what runs it.

    Attributes:
      index: the step's 0-based index (its sampling seeds' step).
      journal: its journal of finished units (replaying an interrupted step's).
      streams_at_start: the data streams' positions when it began (an in-step checkpoint's).
      grader_before: the grading pool's counters when it began, less what the interrupted run's
        part of it counted (`GRADER_KEYS`), so that the step's counts are whole.
      graded_labeled: (rows, rewards) of its E-step's graded D_L batch, once graded.
    """

    index: int
    journal: StepJournal
    streams_at_start: dict[str, Any]
    grader_before: dict[str, int]
    graded_labeled: tuple[Any, Any] | None = None  # (RolloutRows, rewards [N])


def abstract_items(run: Run, policy_params, critic_params=None) -> dict[str, Any]:
    """What a regular checkpoint's networks restore into: {"policy": abstract TrainState,
    "critic": ... (when `critic_params` is given)}, sharded over `run.mesh` (the trainer's
    resume and `tempo-jax eval` both restore through this)."""
    settings = run.settings.train
    out = {
        "policy": train.abstract_train_state(
            policy_params, settings.policy_optimizer, run.mesh, run.rules
        )
    }
    if critic_params is not None:
        out["critic"] = train.abstract_train_state(
            critic_params, settings.critic_optimizer, run.mesh, run.rules
        )
    return out


def changed_config_fields(saved: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
    """ "field: old -> new" for each config field of `config` that differs from the checkpoint's
    `saved` config, except those that may change on a resume (`RESUME_MAY_CHANGE`)."""
    old, new = _flatten(saved), _flatten(_config_json(config))
    changed = sorted(
        k
        for k in set(old) | set(new)
        if old.get(k) != new.get(k) and not k.startswith(RESUME_MAY_CHANGE)
    )
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class LoopCheckpoints:
    """Saves and restores the loop's state in WORKDIR (see the module docstring).

    Args:
      workdir: the run's directory.
      run: the built run (its settings and config, the data's tokenizer, the sampler's
        chunking).
      streams: {name: batch stream} whose positions are checkpointed.
      guard: the run's PreemptionGuard (Orbax's preemption questions go to it).
      model_configs: {network: ModelConfig dict} stored with every checkpoint (for export); the
        trainer adds "critic" once it exists.
    """

    def __init__(
        self,
        workdir: str,
        run: Run,
        streams: dict[str, Any],
        guard: PreemptionGuard,
        model_configs: dict[str, Any],
    ):
        self.run = run
        self.streams = streams
        self.model_configs = model_configs
        ckpt = run.settings.checkpoint
        self.regular = Checkpointer(
            os.path.join(workdir, "checkpoints"),
            keep=ckpt.keep,
            async_save=ckpt.async_save,
            async_timeout_s=ckpt.async_timeout_s,
            keep_best=ckpt.keep_best,
            keep_best_mode=ckpt.keep_best_mode,
            preempted=guard.agreed,
        )
        self.in_step = Checkpointer(
            os.path.join(workdir, IN_STEP_DIR),
            keep=1,
            async_save=False,  # made to exit: the process waits for it anyway
            async_timeout_s=ckpt.async_timeout_s,
            preempted=guard.agreed,
            preemption_saves_only=True,
        )
        self.last_saved_step: int | None = None
        self._in_step_present = False

    # --- save ----------------------------------------------------------------------------

    def _metadata(self, state: LoopState, streams: dict[str, Any]) -> dict[str, Any]:
        return {
            "step": state.step,
            "warmed_up": state.warmed_up,
            "save_pending": state.save_pending,
            "method": self.run.settings.method.name,
            "streams": streams,
            "counters": {
                "nonfinite_consecutive": state.nonfinite_consecutive,
                "nonfinite_total": state.nonfinite_total,
                "grader_totals": dict(state.grader_totals),
                "labeled_whiten": state.labeled_whiten,
            },
            "models": dict(self.model_configs),
            "vocab_size": int(self.run.data.tokenizer.vocab_size),
            "config": _config_json(self.run.config),
        }

    @staticmethod
    def _items(state: LoopState) -> dict[str, Any]:
        items = {"policy": state.policy}
        if state.critic is not None:
            items["critic"] = state.critic
        return items

    def save(self, state: LoopState, evaluation: dict[str, Any] | None = None) -> str:
        """Checkpoints `state` at its step (once per step: a second call for the same step is a
        no-op), with this step's `evaluation` for `checkpoint.keep_best` to rank it by."""
        if self.last_saved_step == state.step:
            return self.regular.step_path(state.step)
        keep_best = self.run.settings.checkpoint.keep_best
        if keep_best and evaluation is not None and keep_best not in evaluation:
            raise ValueError(
                f"config.checkpoint.keep_best={keep_best!r} is not an eval metric of this run; "
                f"it reports {sorted(evaluation)}"
            )
        streams = {k: s.get_state() for k, s in self.streams.items()}
        metadata = self._metadata(state, streams)
        path = self.regular.save(state.step, self._items(state), metadata, evaluation)
        self.last_saved_step = state.step
        if self._in_step_present:  # superseded once this save is on disk
            self.regular.wait()
            for step in self.in_step.all_steps():
                self.in_step.delete(step)
            self._in_step_present = False
        return path

    def save_in_step(
        self, state: LoopState, streams_at_start: dict[str, Any], progress: StepProgress
    ) -> str:
        """Checkpoints a step interrupted at a unit boundary (see the module docstring); returns
        its directory once it is on disk."""
        arrays, units = step_journal.to_checkpoint(progress.units)
        metadata = self._metadata(state, streams_at_start)
        metadata["progress"] = {
            "in_warmup": progress.in_warmup,
            "warmup_steps_done": progress.warmup_steps_done,
            "grader_done": dict(progress.grader_done),
            "units": units,
            "chunk_prompts": self._chunk_prompts(),
        }
        items = {**self._items(state), _JOURNAL_ITEM: arrays}
        newest = self.in_step.latest_good_step()
        step = 0 if newest is None else newest + 1
        path = self.in_step.save(step, items, metadata)
        self.in_step.wait()
        return path

    def _chunk_prompts(self) -> int:
        """Prompts per rollout chunk: the unit layout of a rollout phase."""
        settings = self.run.settings
        return self.run.sampler.prompts_per_chunk(settings.prompts_per_step, settings.rollout.n)

    # --- restore -------------------------------------------------------------------------

    def _newer_in_step(self, regular: int | None) -> int | None:
        """The in-step checkpoint to resume from: one newer than the regular `regular`."""
        step = self.in_step.latest_good_step()
        self._in_step_present = bool(self.in_step.all_steps())
        if step is None:
            return None
        metadata = self.in_step.metadata(step)
        base, progress = int(metadata["step"]), metadata["progress"]
        newer = regular is None or base > regular or (base == regular and not progress["in_warmup"])
        if not newer:
            return None
        if progress["chunk_prompts"] != self._chunk_prompts():
            log.warning(
                "in-step checkpoint %s sampled rollouts in chunks of %d prompts, this run in "
                "chunks of %d (another mesh or rollout.max_rows_per_chunk); resuming from the "
                "last regular checkpoint instead",
                self.in_step.step_path(step),
                progress["chunk_prompts"],
                self._chunk_prompts(),
            )
            return None
        return step

    def restore(self, abstract: dict[str, Any]) -> tuple[LoopState, StepProgress | None] | None:
        """The newest state (regular or in-step checkpoint), None without any; sets the stream
        positions. `abstract`: {"policy": abstract TrainState, "critic": ... (critic methods)}."""
        regular = self.regular.latest_good_step()
        in_step = self._newer_in_step(regular)
        if regular is None and in_step is None:
            return None
        progress = None
        if in_step is not None:
            items, metadata = self.in_step.restore(in_step, abstract, host_items=(_JOURNAL_ITEM,))
            path = self.in_step.step_path(in_step)
            saved = metadata["progress"]
            progress = StepProgress(
                in_warmup=bool(saved["in_warmup"]),
                warmup_steps_done=int(saved["warmup_steps_done"]),
                units=step_journal.from_checkpoint(items[_JOURNAL_ITEM], saved["units"]),
                grader_done={k: int(v) for k, v in saved["grader_done"].items()},
                where=path,
            )
            self.last_saved_step = regular
        else:
            items, metadata = self.regular.restore(None, abstract)
            path = self.regular.step_path(self.regular.restored_step)
            self.last_saved_step = int(metadata["step"])
        for name, stream in self.streams.items():
            stream.set_state(metadata["streams"][name])
        self._warn_config_changes(metadata.get("config", {}), path)
        counters = metadata.get("counters", {})
        totals = dict.fromkeys(GRADER_KEYS, 0)
        totals.update(counters.get("grader_totals", {}))
        where = f"step {metadata['step']}"
        if progress is not None:
            inside = (
                f"warm-up step {progress.warmup_steps_done + 1}"
                if progress.in_warmup
                else f"step {int(metadata['step']) + 1}"
            )
            where = f"inside {inside}, {len(progress.units)} units done"
        print(f"resuming from {path} ({where})", file=sys.stderr)
        state = LoopState(
            policy=items["policy"],
            critic=items.get("critic"),
            step=int(metadata["step"]),
            warmed_up=bool(metadata["warmed_up"]),
            nonfinite_consecutive=int(counters.get("nonfinite_consecutive", 0)),
            nonfinite_total=int(counters.get("nonfinite_total", 0)),
            grader_totals=totals,
            save_pending=bool(metadata.get("save_pending", False)),
            labeled_whiten=counters.get("labeled_whiten"),
        )
        return state, progress

    def _warn_config_changes(self, saved: dict[str, Any], path: str) -> None:
        """Logs the config fields that differ from the checkpoint's (a resumed run with another
        learning rate or dataset is no longer the run that was checkpointed)."""
        changed = changed_config_fields(saved, self.run.config)
        if changed:
            log.warning("resuming from %s with a changed config: %s", path, ", ".join(changed))

    def close(self) -> None:
        try:
            self.regular.close()
        finally:
            self.in_step.close()


def _config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(json.dumps(config.to_dict(), default=str))
