"""Before any checkpoint is written: can the directory hold it (created, writable, enough free
space), and how big is a state. Failing here, before a model is built, names the directory."""

from __future__ import annotations

import math
import os
import shutil
import uuid
from typing import Any

import jax
import numpy as np
from etils import epath

from tempo_jax.train import storage

DEFAULT_MIN_FREE_BYTES = 256 << 20


class CheckpointDirectoryError(OSError):
    """The checkpoint directory is unwritable or nearly full."""


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def check_writable(
    directory: str | os.PathLike, min_free_bytes: int = DEFAULT_MIN_FREE_BYTES
) -> int:
    """Fails early if `directory` cannot hold checkpoints; creates it if missing.

    Args:
      directory: the checkpoint directory (local or a remote epath such as gs://).
      min_free_bytes: required free space in bytes, e.g. twice `pytree_nbytes(state)`. Only checked
        on local filesystems (remote object stores have no meaningful free space).

    Returns:
      Free bytes on the filesystem (-1 for remote paths).

    Raises:
      CheckpointDirectoryError: naming the directory and the reason (cannot create, cannot write,
        or the free space against `min_free_bytes`).
    """
    path = epath.Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointDirectoryError(
            f"checkpoint directory {directory} cannot be created: {e}"
        ) from e
    probe = path / f".write_probe_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"tempo_jax write probe\n")
        probe.unlink()
    except OSError as e:
        raise CheckpointDirectoryError(
            f"checkpoint directory {directory} is not writable: {e}"
        ) from e
    if storage.is_remote(directory):
        return -1
    free = shutil.disk_usage(os.fspath(path)).free
    if free < min_free_bytes:
        raise CheckpointDirectoryError(
            f"checkpoint directory {directory} is nearly full: {_format_bytes(free)} "
            f"({free} bytes) free, need at least {_format_bytes(min_free_bytes)} "
            f"({min_free_bytes} bytes)"
        )
    return free


def pytree_nbytes(tree: Any) -> int:
    """Total bytes of the array leaves of `tree` (global shapes), for sizing `min_free_bytes`."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
        if shape is None or dtype is None:
            continue
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            total += math.prod(shape) * 8
        else:
            total += math.prod(shape) * np.dtype(dtype).itemsize
    return total
