"""Checkpoints of the training state on Orbax: async saves, keep-N, keep-best, verified restore
(the preflight disk checks are in `checkpoint_preflight`, re-exported here).

The stop-on-signal side of preemption lives in `tempo_jax.train.preemption`. Orbax's save
decision policies: a checkpointer made with `preemption_saves_only` saves through Orbax's
`PreemptionCheckpointingPolicy` (the trainer's in-step checkpoints), and Orbax's preemption
question is answered by the caller's guard (`preempted`), never by JAX's sync point directly.
Regular saves are the caller's decision (`force`): the trainer's rule (every `save_every` steps,
but a save due during a streak of skipped updates waits for a clean step; every evaluated step
with keep-best; the last step) is not a fixed interval or a step list, so `FixedIntervalPolicy`
/ `SpecificStepsPolicy` would only restate part of it, and `ContinuousCheckpointingPolicy`
(save whenever no save is in flight) would write a two-network checkpoint at every step.
Which checkpoints are kept (keep-N, keep-best) is `checkpoint_retention`; the integrity manifest
described below is written and checked by `checkpoint_manifest`.

This module and `checkpoint_retention` (which checkpoints are kept: keep-N, keep-best) are the
only ones that import Orbax, so an Orbax API change touches only these two files.

On-disk layout of `Checkpointer(directory)`::

    directory/
      <step>/                          one finalized checkpoint (a plain integer name, no padding)
        _CHECKPOINT_METADATA           Orbax step metadata (save timestamps)
        commit_success.txt             Orbax commit marker
        tempo_manifest.json            ours: {"files": {path: {"size", "crc32"}}}, see below
        run_metadata/metadata          the JSON metadata dict given to `save` (EM counters, phase,
                                       iterator positions, RNG key data, config); tuples are
                                       stored as {"__tuple__": [...]} so they come back as tuples
        <item>/                        one Orbax PyTree (OCDBT + zarr) per key of `items`,
                                       e.g. policy/, critic/, policy_opt/, critic_opt/
        metrics/                       with `keep_best` only: the `save(metrics=...)` values
                                       Orbax ranks checkpoints by (its own item)
      <step>.orbax-checkpoint-tmp/     a save in flight, or one interrupted by a crash; never read,
                                       reported and removed when the next `Checkpointer` starts

Atomicity is Orbax's: every file is written under the `.orbax-checkpoint-tmp` name, which is
renamed to `<step>` only after all items are written (on POSIX; on GCS Orbax writes in place and
marks completion with `commit_success.txt`). A crash during a save therefore leaves only a tmp
directory, and old checkpoints are deleted (keep-N) only after the new one is finalized.

Directory names alone do not prove a checkpoint is intact (a later truncation, a half-finished
keep-N deletion, a partial copy). So just before Orbax's commit we write `tempo_manifest.json` into
the tmp directory, listing every file below the item directories with its size, and a CRC-32 for
files up to 1 MiB (all metadata, JSON and OCDBT manifests; big array chunks get the size only, so
that verifying an 8B-parameter checkpoint costs a directory walk, not a full read). Because the
manifest is written inside the tmp directory it is part of the atomic commit. A checkpoint is
"good" when every listed file exists with its recorded size and CRC and its metadata JSON parses.
One without a manifest (written by other code, or by an Orbax whose commit hook moved) is verified
by actually reading every array to host memory instead. `restore(step=None)` additionally falls
back past a checkpoint whose restore raises. Not caught: a same-size bit flip inside an array file
over 1 MiB (OCDBT/zarr chunks carry no checksum, so it restores wrong values silently); truncation,
deletion and torn writes, the failures of crashes, full disks and partial copies, are caught.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from tempo_jax.train.checkpoint_manifest import (  # noqa: F401  (MANIFEST_NAME re-exported)
    MANIFEST_NAME,
    verify_manifest,
    write_manifest,
)
from tempo_jax.train.checkpoint_metadata import decode_metadata, encode_metadata
from tempo_jax.train.checkpoint_preflight import (  # noqa: F401  (re-exported)
    DEFAULT_MIN_FREE_BYTES,
    CheckpointDirectoryError,
    check_writable,
    pytree_nbytes,
)
from tempo_jax.train.checkpoint_retention import ranked_metric, retention_options

logger = logging.getLogger(__name__)

METADATA_ITEM = "run_metadata"
_ITEM_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
DEFAULT_ASYNC_TIMEOUT_S = 1200  # Orbax's default
# The step item in which Orbax stores `save(metrics=...)` (reserved: not a restorable item).
ORBAX_METRICS_ITEM = "metrics"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be saved or restored."""


class CorruptCheckpointError(CheckpointError):
    """A finalized checkpoint failed verification."""


class MissingItemError(CheckpointError):
    """`restore` asked for an item the checkpoint does not hold (a caller error, not corruption)."""


def _validate_abstract(item: str, tree: Any) -> None:
    def check(path, leaf):
        if isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding is None:
            raise ValueError(
                f"abstract_items[{item!r}]{jax.tree_util.keystr(path)}: ShapeDtypeStruct has no "
                "sharding; pass sharding=NamedSharding(mesh, spec) (or SingleDeviceSharding)"
            )

    jax.tree_util.tree_map_with_path(check, tree)


class _Manager(ocp.CheckpointManager):
    """Orbax's manager, told by the caller whether the run reached its preemption stop point.

    Orbax asks `reached_preemption(step)` in every save (for its logs and save-decision policies)
    and by default answers with JAX's preemption sync point, using the checkpoint step as the
    id. That protocol needs one caller with consecutive ids (`tempo_jax.train.preemption`), so
    the answer comes from the caller's `PreemptionGuard` instead.
    """

    def __init__(self, directory, *, options, preempted: Callable[[], bool]):
        self._preempted = preempted
        super().__init__(directory, options=options)

    def reached_preemption(self, step: int) -> bool:
        del step
        return self._preempted()


class Checkpointer:
    """Saves and restores `{item name: pytree of arrays}` plus a JSON metadata dict per step.

    Not thread-safe; call from the training loop only. In multi-process runs every process calls
    every method (Orbax synchronizes them); only process 0 writes the manifest.

    Args:
      directory: where checkpoints live (see the module docstring for the layout).
      keep: how many of the newest finalized checkpoints to keep.
      async_save: if True, `save` returns after the device-to-host copy and the write continues
        in the background; if False, `save` returns once the checkpoint is finalized.
      read_only: never write or delete (e.g. for export from someone else's run).
      async_timeout_s: how long a background save may take before Orbax fails it (seconds;
        size it as checkpoint bytes / write bandwidth, with a margin).
      keep_best: a metric name given to `save(metrics=...)` (e.g. "eval/unlabeled/mean@8"); the
        checkpoint with its best value is kept besides the newest `keep`. "" = keep-N only.
      keep_best_mode: "max" (higher is better) or "min".
      preempted: whether the run agreed to stop for a preemption (`PreemptionGuard.agreed`);
        Orbax's `reached_preemption` answers with it. None: never.
      preemption_saves_only: save only when `preempted()` (Orbax's
        `PreemptionCheckpointingPolicy` decides; a save it declines raises): a directory of
        checkpoints made to stop, such as the trainer's in-step checkpoints.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep: int = 3,
        async_save: bool = True,
        read_only: bool = False,
        async_timeout_s: int = DEFAULT_ASYNC_TIMEOUT_S,
        keep_best: str = "",
        keep_best_mode: str = "max",
        preempted: Callable[[], bool] | None = None,
        preemption_saves_only: bool = False,
    ):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        if async_timeout_s < 1:
            raise ValueError(f"async_timeout_s must be >= 1, got {async_timeout_s}")
        retention = retention_options(keep, keep_best, keep_best_mode)
        self.keep_best = keep_best
        self._directory = epath.Path(directory)
        self._async = async_save
        self._read_only = read_only
        self._pending_step: int | None = None
        self._reported: set[tuple[int, str]] = set()
        self._bad_steps: dict[int, str] = {}
        self._read_verified: set[int] = set()
        self._closed = False
        self._force_saves = not preemption_saves_only
        self.restored_step: int | None = None
        self.last_save_blocking_seconds: float | None = None
        if read_only:
            if not self._directory.exists():
                raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
        else:
            check_writable(directory, min_free_bytes=0)
            self._report_unfinished_saves()
        decision = {}
        if preemption_saves_only:
            decision["save_decision_policy"] = (
                ocp.checkpoint_managers.PreemptionCheckpointingPolicy()
            )
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=True,  # Sync mode is async + wait: one code path.
            async_options=ocp.AsyncOptions(
                timeout_secs=async_timeout_s, post_finalization_callback=self._write_manifest
            ),
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
            create=not read_only,
            **retention,
            **decision,
        )
        self._mgr = _Manager(
            self._directory, options=options, preempted=preempted or (lambda: False)
        )

    # ------------------------------------------------------------------ paths and listing

    @property
    def directory(self) -> str:
        return os.fspath(self._directory)

    def step_path(self, step: int) -> str:
        """The directory a finalized checkpoint of `step` lives in."""
        return os.fspath(self._directory / str(step))

    def _finalized_steps(self) -> list[int]:
        if not self._directory.exists():
            return []
        return sorted(ocp.utils.checkpoint_steps(self._directory))

    def _report_unfinished_saves(self) -> None:
        if not self._directory.exists():
            return
        for path in self._directory.iterdir():
            if ocp.utils.TMP_DIR_SUFFIX in path.name:
                logger.warning(
                    "checkpoint directory %s: found unfinished save %s (interrupted by a crash or "
                    "kill); ignoring it, it will be removed",
                    self.directory,
                    os.fspath(path),
                )

    def _report(self, step: int, reason: str) -> None:
        if (step, reason) not in self._reported:
            self._reported.add((step, reason))
            logger.warning(
                "checkpoint %s cannot be used, skipping it: %s",
                self.step_path(step),
                reason,
            )

    def all_steps(self) -> list[int]:
        """Finalized steps that pass verification, ascending; waits for an in-flight save."""
        self._mgr.wait_until_finished()
        good = []
        for step in self._finalized_steps():
            reason = self.verify(step)
            if reason is None:
                good.append(step)
            else:
                self._report(step, reason)
        return good

    def latest_good_step(self) -> int | None:
        """Newest finalized step that passes verification (older corrupt ones are not checked)."""
        self._mgr.wait_until_finished()
        for step in reversed(self._finalized_steps()):
            reason = self.verify(step)
            if reason is None:
                return step
            self._report(step, reason)
        return None

    # ------------------------------------------------------------------ integrity

    def _write_manifest(self) -> None:
        """Orbax's post-finalization hook: runs in the save thread just before the commit."""
        step = self._pending_step
        if step is None or jax.process_index() != 0:
            return
        candidates = sorted(self._directory.glob(f"{step}{ocp.utils.TMP_DIR_SUFFIX}*"))
        step_dir = candidates[-1] if candidates else self._directory / str(step)
        write_manifest(step_dir, step)

    def _item_names(self, step: int) -> list[str]:
        step_dir = self._directory / str(step)
        reserved = (METADATA_ITEM, ORBAX_METRICS_ITEM)
        return sorted(p.name for p in step_dir.iterdir() if p.is_dir() and p.name not in reserved)

    def verify(self, step: int) -> str | None:
        """Checks a finalized checkpoint; returns None if good, else the reason it is not."""
        step_dir = self._directory / str(step)
        if not step_dir.is_dir():
            return f"{step_dir} does not exist"
        if (step_dir / MANIFEST_NAME).exists():
            reason = verify_manifest(step_dir)
        elif step in self._read_verified:
            reason = None
        else:
            reason = self._verify_by_reading(step)
        if reason is not None:
            return reason
        try:
            self._read_metadata(step)
        except Exception as e:  # noqa: BLE001  (any failure to parse means unusable)
            return f"metadata JSON unreadable: {type(e).__name__}: {e}"
        return None

    def _verify_by_reading(self, step: int) -> str | None:
        logger.info(
            "checkpoint %s has no %s; verifying it by reading every array",
            self.step_path(step),
            MANIFEST_NAME,
        )
        try:
            for item in self._item_names(step):
                self._restore_item_to_host(step, item)
        except Exception as e:  # noqa: BLE001
            return f"reading arrays failed: {type(e).__name__}: {e}"
        self._read_verified.add(step)
        return None

    # ------------------------------------------------------------------ save

    def save(
        self,
        step: int,
        items: Mapping[str, Any],
        metadata: Mapping[str, Any],
        metrics: Mapping[str, float] | None = None,
    ) -> str:
        """Starts saving `items` and `metadata` as checkpoint `step`; returns its final directory.

        Blocks for the device-to-host copy of `items` (and, if the previous save is still being
        written, until it finishes); the write itself continues in the background unless
        `async_save=False`. Call `wait()` before relying on the files.

        Args:
          step: the training step, >= 0, larger than every good checkpoint in the directory.
          items: {name: pytree of jax/numpy arrays}, e.g. {"policy": ..., "policy_opt": ...}.
            Names are directory names ([A-Za-z0-9_.-], not "run_metadata").
          metadata: dict of int/float/str/bool/None/list/tuple/str-keyed dict (e.g. EM counters,
            phase, iterator positions, `jax.random.key_data(key).tolist()`, `config.to_dict()`);
            `restore` returns it equal, with the same types (ints stay ints, tuples tuples).
          metrics: {name: value} ranked by `keep_best` (stored with the checkpoint only when
            `keep_best` is set; non-finite values are left out).
        """
        if self._read_only:
            raise CheckpointError(f"checkpointer for {self.directory} is read-only")
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        step = int(step)
        if not items:
            raise ValueError("items is empty; nothing to checkpoint")
        for name in items:
            if (
                not isinstance(name, str)
                or not _ITEM_NAME.match(name)
                or name in (METADATA_ITEM, ORBAX_METRICS_ITEM)
            ):
                raise ValueError(
                    f"item name {name!r} is not allowed (use [A-Za-z0-9_.-], not "
                    f"{METADATA_ITEM!r} or {ORBAX_METRICS_ITEM!r})"
                )
        encoded_metadata = encode_metadata(dict(metadata))
        self._mgr.wait_until_finished()  # So that the manifest hook of the last save is done.
        self._clear_from(step)
        self._pending_step = step
        start = time.perf_counter()
        args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
        args[METADATA_ITEM] = ocp.args.JsonSave(encoded_metadata)
        ranked = None
        if self.keep_best:
            ranked = {
                k: float(v)
                for k, v in (metrics or {}).items()
                if isinstance(v, (int, float, np.number)) and math.isfinite(float(v))
            }
        save_kwargs = {"metrics": ranked} if ranked else {}
        composite = ocp.args.Composite(**args)
        if not self._mgr.save(step, args=composite, force=self._force_saves, **save_kwargs):
            raise CheckpointError(
                f"Orbax declined to save step {step} in {self.directory}"
                + ("" if self._force_saves else " (it saves on preemption only)")
            )
        self.last_save_blocking_seconds = time.perf_counter() - start
        if not self._async:
            self.wait()
        return self.step_path(step)

    def _clear_from(self, step: int) -> None:
        """Deletes corrupt checkpoints at or after `step`; refuses to shadow a good one.

        Corrupt means failing `verify`, or failing a restore that then succeeded on an older step
        with the same abstract state (so a caller's wrong shapes never delete checkpoints).
        """
        for existing in self._finalized_steps():
            if existing < step:
                continue
            reason = self.verify(existing) or self._bad_steps.get(existing)
            if reason is None:
                raise CheckpointError(
                    f"{self.step_path(existing)} is a good checkpoint at step {existing} "
                    f">= {step}; resume from it (restore()) or use a fresh directory"
                )
            logger.warning(
                "deleting corrupt checkpoint %s before saving step %d: %s",
                self.step_path(existing),
                step,
                reason,
            )
            if existing in self._mgr.all_steps():
                self._mgr.delete(existing)
            elif jax.process_index() == 0:
                (self._directory / str(existing)).rmtree()
            self._bad_steps.pop(existing, None)

    def delete(self, step: int) -> None:
        """Deletes finalized checkpoint `step` (after the last save finished)."""
        if self._read_only:
            raise CheckpointError(f"checkpointer for {self.directory} is read-only")
        self._mgr.wait_until_finished()
        self._mgr.delete(step)

    def best_step(self) -> int | None:
        """The kept step with the best `keep_best` metric (None without `keep_best` or without a
        checkpoint that has the metric)."""
        if not self.keep_best:
            return None
        self._mgr.wait_until_finished()
        step = self._mgr.best_step()
        metrics = self._mgr.metrics(step) if step is not None else None
        if metrics is None or ranked_metric(self.keep_best, 1.0, metrics) == -math.inf:
            return None
        return step

    def wait(self) -> None:
        """Blocks until the last save is finalized; raises if it failed."""
        self._mgr.wait_until_finished()
        self._mgr.check_for_errors()

    def close(self) -> None:
        """Waits for the last save and releases Orbax's threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._mgr.wait_until_finished()
        finally:
            self._mgr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ------------------------------------------------------------------ restore

    def metadata(self, step: int) -> dict[str, Any]:
        """The metadata dict saved with finalized checkpoint `step` (no array is read).

        Raises:
          FileNotFoundError: naming the finalized steps when `step` is not one of them.
        """
        self._mgr.wait_until_finished()
        finalized = self._finalized_steps()
        if step not in finalized:
            raise FileNotFoundError(
                f"no finalized checkpoint for step {step} in {self.directory}; "
                f"finalized steps: {finalized}"
            )
        return self._read_metadata(step)

    def _read_metadata(self, step: int) -> dict[str, Any]:
        restored = self._mgr.restore(
            step, args=ocp.args.Composite(**{METADATA_ITEM: ocp.args.JsonRestore()})
        )
        metadata = restored[METADATA_ITEM]
        if not isinstance(metadata, dict):
            raise TypeError(f"expected a JSON object, got {type(metadata).__name__}")
        return decode_metadata(metadata)

    def _restore_item_to_host(self, step: int, item: str) -> Any:
        path = self._directory / str(step) / item
        handler = ocp.PyTreeCheckpointHandler()
        tree = handler.metadata(path).tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        return handler.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))

    def _restore_step(
        self, step: int, abstract_items: Mapping[str, Any] | None, host_items: Sequence[str] = ()
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        available = self._item_names(step)
        if abstract_items is None:
            items = {name: self._restore_item_to_host(step, name) for name in available}
            return items, self._read_metadata(step)
        missing = sorted((set(abstract_items) | set(host_items)) - set(available))
        if missing:
            raise MissingItemError(
                f"checkpoint {self.step_path(step)} has no item(s) {missing}; it holds {available}"
            )
        args = {name: ocp.args.StandardRestore(tree) for name, tree in abstract_items.items()}
        args[METADATA_ITEM] = ocp.args.JsonRestore()
        restored = self._mgr.restore(step, args=ocp.args.Composite(**args))
        items = {name: restored[name] for name in abstract_items}
        items.update({name: self._restore_item_to_host(step, name) for name in host_items})
        return items, decode_metadata(restored[METADATA_ITEM])

    def restore(
        self,
        step: int | None = None,
        abstract_items: Mapping[str, Any] | None = None,
        host_items: Sequence[str] = (),
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restores a checkpoint; sets `self.restored_step`.

        Args:
          step: the step to restore; None means the newest good one, falling back past
            checkpoints that fail verification or whose restore raises (each reported with a
            warning naming its directory and the reason).
          abstract_items: {name: pytree of jax.ShapeDtypeStruct with `sharding`} (e.g. from
            `jax.eval_shape` plus the target mesh's shardings; the mesh may differ from the one
            that saved). Only these items are restored. None restores every item as numpy arrays on
            host, with the nesting Orbax stored (dicts and lists; for export and inspection).
          host_items: with `abstract_items`, names of further items to restore that way (numpy
            on the host), such as host-side data saved with the state.

        Returns:
          (items, metadata): items with the structure and shardings of `abstract_items`, and the
          metadata dict given to `save`.

        Raises:
          FileNotFoundError: the directory holds no finalized checkpoint (or not `step`).
          CorruptCheckpointError: the requested `step` fails verification.
          CheckpointError: step=None and no checkpoint could be restored (all corrupt, or
            `abstract_items` does not match any of them); nothing is marked for deletion.
          MissingItemError: an item of `abstract_items` is not in the checkpoint.
        """
        self._mgr.wait_until_finished()
        if abstract_items is not None:
            for name, tree in abstract_items.items():
                _validate_abstract(name, tree)
        finalized = self._finalized_steps()
        if step is not None:
            if step not in finalized:
                raise FileNotFoundError(
                    f"no finalized checkpoint for step {step} in {self.directory}; "
                    f"finalized steps: {finalized}"
                )
            reason = self.verify(step)
            if reason is not None:
                self._report(step, reason)
                raise CorruptCheckpointError(f"checkpoint {self.step_path(step)}: {reason}")
            out = self._restore_step(step, abstract_items, host_items)
            self.restored_step = step
            return out
        if not finalized:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        failures = []
        failed_restores = {}
        for candidate in reversed(finalized):
            reason = self.verify(candidate)
            if reason is None:
                try:
                    out = self._restore_step(candidate, abstract_items, host_items)
                except MissingItemError:
                    raise
                except Exception as e:  # noqa: BLE001  (fall back to the previous checkpoint)
                    reason = f"restore failed: {type(e).__name__}: {e}"
                    failed_restores[candidate] = reason
                else:
                    # The same abstract state restored an older step, so the newer failures were
                    # the data's fault, not the caller's: `save` may replace those checkpoints.
                    self._bad_steps.update(failed_restores)
                    self.restored_step = candidate
                    return out
            self._report(candidate, reason)
            failures.append(f"step {candidate}: {reason}")
        raise CheckpointError(
            f"no checkpoint in {self.directory} could be restored ({'; '.join(failures)})"
        )
