"""StepJournal without a model: units recorded with a stop check after each, replayed in order
from their checkpoint form (host arrays, empty ones included), and a step that no longer
matches its journal refused with the checkpoint named."""

import numpy as np
import pytest

from tempo_jax.tempo import step_journal
from tempo_jax.tempo.step_journal import Interrupted, JournalMismatch, StepJournal


class _Stop:
    """A guard that asks to stop at its `at`-th check (1-based; 0 = never)."""

    def __init__(self, at: int = 0):
        self.at, self.checks = at, 0

    def __call__(self) -> bool:
        self.checks += 1
        return self.checks == self.at


def _grade():
    return {"rewards": np.array([1.0, -1.0], np.float32), "pool_tasks": np.int64(2)}


def _update(state):
    return state + 1, {"loss": np.float32(state) / 2, "empty": np.zeros((0, 3), np.int32)}


def _interrupted_step() -> Interrupted:
    """A step (grade, update0, update1) stopped at the boundary after update0."""
    journal = StepJournal("step 3", _Stop(at=2))
    journal.run("grade", _grade)
    with pytest.raises(Interrupted) as stop:
        journal.update("update0", "policy", 10, _update)  # its boundary raises
    assert stop.value.journal is journal
    return stop.value


def test_a_stopped_step_records_its_units_and_the_newest_state():
    stop = _interrupted_step()
    assert str(stop) == "stop requested in step 3 after update0"
    assert [name for name, _ in stop.journal.units] == ["grade", "update0"]
    assert stop.journal.latest == {"policy": 11}  # what the in-step checkpoint saves


def test_replay_from_the_checkpoint_form_returns_the_recorded_outputs_then_computes():
    arrays, described = step_journal.to_checkpoint(_interrupted_step().journal.units)
    assert "u00001" in arrays and described[1]["empty"] == {
        "0": {"shape": [0, 3], "dtype": np.dtype(np.int32).str}
    }
    units = step_journal.from_checkpoint(arrays, described)
    guard = _Stop()
    journal = StepJournal("step 3", guard, units, where="DIR/in_step_checkpoints/0")

    def never():
        raise AssertionError("a recorded unit ran again")

    graded = journal.run("grade", never)
    assert graded["rewards"].dtype == np.float32 and graded["rewards"].tolist() == [1.0, -1.0]
    assert int(graded["pool_tasks"]) == 2
    # The restored state already holds update0: it comes back as given, with update0's metrics.
    state, metrics = journal.update("update0", "policy", 11, never)
    assert state == 11 and float(metrics["loss"]) == 5.0
    assert metrics["empty"].shape == (0, 3) and metrics["empty"].dtype == np.int32
    assert guard.checks == 0  # replayed units have no boundary (the same on every host)
    state, metrics = journal.update("update1", "policy", state, _update)
    assert state == 12 and float(metrics["loss"]) == 5.5 and guard.checks == 1
    journal.finish()
    assert journal.latest == {"policy": 12}


def test_a_step_that_no_longer_matches_its_journal_is_refused_naming_the_checkpoint():
    units = _interrupted_step().journal.units
    where = "DIR/in_step_checkpoints/0"
    journal = StepJournal("step 3", _Stop(), units, where=where)
    with pytest.raises(JournalMismatch, match=r"recorded unit 'grade' next, but .* 'scores'"):
        journal.run("scores", _grade)
    short = StepJournal("step 3", _Stop(), units, where=where)
    short.run("grade", _grade)
    with pytest.raises(JournalMismatch, match=f"ended after 1 units .* {where} recorded 2"):
        short.finish()
    arrays, described = step_journal.to_checkpoint(units)
    with pytest.raises(ValueError, match="2 units of arrays, 1 described"):
        step_journal.from_checkpoint(arrays, described[:1])
