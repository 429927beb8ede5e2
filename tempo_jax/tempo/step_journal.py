"""Preemption inside a step: the journal of a step's finished work units, checked for a stop
after each, saved with an in-step checkpoint and replayed when the run resumes.

A step (or a critic warm-up step) is a fixed sequence of units, each the result of work that
either cannot be redone the same way once later units ran, or is worth keeping:

  - a rollout chunk (`<phase>/a<attempt>/chunk<i>`): tokens and log-probs under the policy
    before its update;
  - a grading (`<phase>/a<attempt>/grade`, `policy/scores`): rewards from a grader that may time
    out, so not reproducible;
  - a forward pass whose network changes later in the step (`policy/old_logprobs`,
    `<critic>/old_values`, `policy/values`);
  - an optimizer update (`policy/update<j>`, `<critic>/update<j>`): its metrics, while the
    updated TrainState is what the loop holds (and checkpoints).

The boundary after each unit is a consistent point: the TrainStates equal those after the
recorded updates, and every value the rest of the step needs from the past is in the journal or
can be recomputed from the step's start (the data streams are rewound to where the step began;
sampling seeds are functions of (seed, step, phase, attempt); group filters, advantages and
decoding are deterministic host or jitted functions). So a resumed run runs the step's code from
its start with the journal of the interrupted one: each recorded unit returns its recorded
output instead of running, and the first unrecorded one runs as it would have. Outputs are
normalized to host numpy arrays whether computed or replayed, so both paths see the same values
(bitwise) and take the same branches. What is lost on a preemption is the unit in flight only.

The checkpoint of a journal holds its arrays (an Orbax item) and, in JSON, each unit's name,
its output keys, and the shape and dtype of its empty arrays (Orbax refuses zero-size arrays).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from tempo_jax import parallel
from tempo_jax.sampling import Rollouts

Outputs = dict[str, np.ndarray]


class Interrupted(Exception):  # noqa: N818  (a control-flow signal, not an error)
    """Raised at a unit boundary once the run agreed to stop; the loop saves the step's journal
    and the current TrainStates (`StepJournal.latest`) as an in-step checkpoint."""

    def __init__(self, journal: StepJournal):
        super().__init__(f"stop requested in {journal.scope} after {journal.last_unit}")
        self.journal = journal


class JournalMismatch(RuntimeError):
    """The step asked for a unit other than the one the in-step checkpoint recorded next."""


def _host(tree: Mapping[str, Any]) -> Outputs:
    """A unit's output as a flat dict of host numpy arrays (gathered across processes)."""
    if not isinstance(tree, Mapping):
        raise TypeError(f"a unit's output must be a dict of arrays, got {type(tree).__name__}")
    return {str(k): np.asarray(v) for k, v in parallel.host_from_global(dict(tree)).items()}


class StepJournal:
    """The units of one step, recorded as they finish and replayed on resume.

    Args:
      scope: what the journal covers, for messages ("step 3", "warm-up step 2").
      should_stop: called at every boundary (after a unit is recorded); True raises
        `Interrupted`. In multi-process runs every process calls it at the same boundaries.
      recorded: (name, outputs) of the units an interrupted run finished, to replay in order.
      where: the checkpoint the recorded units come from, for error messages.

    Attributes:
      units: (name, outputs) of every unit finished so far (replayed ones included).
      latest: {network: TrainState} after the newest update computed here (not replayed).
    """

    def __init__(
        self,
        scope: str,
        should_stop: Callable[[], bool],
        recorded: list[tuple[str, Outputs]] | None = None,
        where: str = "",
    ):
        self.scope = scope
        self._should_stop = should_stop
        self._recorded = list(recorded or [])
        self._where = where
        self.units: list[tuple[str, Outputs]] = []
        self.latest: dict[str, Any] = {}

    @property
    def last_unit(self) -> str:
        return self.units[-1][0] if self.units else "its start"

    @property
    def replaying(self) -> bool:
        return len(self.units) < len(self._recorded)

    def _replay(self, name: str) -> Outputs | None:
        if not self.replaying:
            return None
        recorded_name, outputs = self._recorded[len(self.units)]
        if recorded_name != name:
            raise JournalMismatch(
                f"{self.scope}: the in-step checkpoint {self._where} recorded unit "
                f"{recorded_name!r} next, but the step now runs {name!r} (the code or a config "
                f"field that shapes the step changed since it was saved); remove {self._where} "
                "to resume from the last regular checkpoint instead"
            )
        self.units.append((name, outputs))
        return outputs

    def boundary(self, name: str) -> None:
        """The point after unit `name`: stops here (raises `Interrupted`) if asked to."""
        if self._should_stop():
            raise Interrupted(self)

    def _record(self, name: str, outputs: Outputs) -> None:
        self.units.append((name, outputs))
        self.boundary(name)

    def run(self, name: str, compute: Callable[[], Mapping[str, Any]]) -> Outputs:
        """Unit `name`: its recorded outputs, or `compute()` (a dict of arrays) run now."""
        outputs = self._replay(name)
        if outputs is None:
            outputs = _host(compute())
            self._record(name, outputs)
        return outputs

    def update(
        self,
        name: str,
        network: str,
        state: Any,
        step: Callable[[Any], tuple[Any, Mapping[str, Any]]],
    ) -> tuple[Any, Outputs]:
        """An optimizer update of `network`: (state, metrics). Replayed, `state` comes back as
        given (the restored state already includes the update) with the recorded metrics."""
        metrics = self._replay(name)
        if metrics is not None:
            return state, metrics
        state, metrics = step(state)
        metrics = _host(metrics)
        self.latest[network] = state
        self._record(name, metrics)
        return state, metrics

    def finish(self) -> None:
        """Checks that the step replayed every recorded unit (else the step changed shape)."""
        if self.replaying:
            raise JournalMismatch(
                f"{self.scope}: the step ended after {len(self.units)} units but the in-step "
                f"checkpoint {self._where} recorded {len(self._recorded)}; remove it to resume "
                "from the last regular checkpoint instead"
            )

    def chunk_log(self, prefix: str, samples_per_prompt: int) -> RolloutChunkLog:
        """The sampler's view of this journal for one `generate` call: units
        `<prefix>/chunk<i>`."""
        return RolloutChunkLog(self, prefix, samples_per_prompt)


class RolloutChunkLog:
    """Rollout chunks as journal units (the sampler's `tempo_jax.sampling.ChunkLog`)."""

    def __init__(self, journal: StepJournal, prefix: str, samples_per_prompt: int):
        self._journal = journal
        self._prefix = prefix
        self._n = samples_per_prompt

    def chunk(self, index: int, sample: Callable[[], Rollouts]) -> Rollouts:
        """Chunk `index` of the call: recorded, or `sample()` run now (host arrays)."""

        def fields() -> dict[str, Any]:
            rollouts = sample()
            return {f.name: getattr(rollouts, f.name) for f in _ARRAY_FIELDS}

        outputs = self._journal.run(f"{self._prefix}/chunk{index}", fields)
        return Rollouts(**outputs, samples_per_prompt=self._n)


_ARRAY_FIELDS = [f for f in dataclasses.fields(Rollouts) if f.name != "samples_per_prompt"]


def to_checkpoint(units: list[tuple[str, Outputs]]) -> tuple[dict[str, Any], list[dict]]:
    """(Orbax item of the arrays, JSON description) of a journal's units."""
    arrays: dict[str, Any] = {"num_units": np.asarray(len(units), np.int64)}
    described = []
    for i, (name, outputs) in enumerate(units):
        keys = sorted(outputs)
        stored = {str(j): outputs[k] for j, k in enumerate(keys) if outputs[k].size}
        empty = {
            str(j): {"shape": list(outputs[k].shape), "dtype": outputs[k].dtype.str}
            for j, k in enumerate(keys)
            if not outputs[k].size
        }
        if stored:
            arrays[f"u{i:05d}"] = stored
        described.append({"name": name, "keys": keys, "empty": empty})
    return arrays, described


def from_checkpoint(arrays: Mapping[str, Any], described: list[dict]) -> list[tuple[str, Outputs]]:
    """The units `to_checkpoint` stored."""
    if int(arrays["num_units"]) != len(described):
        raise ValueError(
            f"in-step checkpoint: {int(arrays['num_units'])} units of arrays, "
            f"{len(described)} described"
        )
    units = []
    for i, unit in enumerate(described):
        stored = arrays.get(f"u{i:05d}", {})
        outputs = {}
        for j, key in enumerate(unit["keys"]):
            if str(j) in unit["empty"]:
                spec = unit["empty"][str(j)]
                outputs[key] = np.zeros(spec["shape"], np.dtype(spec["dtype"]))
            else:
                outputs[key] = np.asarray(stored[str(j)])
        units.append((unit["name"], outputs))
    return units
