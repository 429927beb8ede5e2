"""Traced and compiled functions shared by every run of one process.

The step functions (`tempo.functions.RunFunctions`) and the sampler's executables are built per
run object. A second run in the same process (a restarted Trainer, an evaluation, a test) would
trace and lower each of them again and load it from the persistent compilation cache, which
saves only the XLA compile; at small shapes the trace and lowering are most of a function's
start-up. Each builder therefore goes through `shared(key, build)`, with a key that holds
everything its trace depends on (graphdef, static settings, mesh, `rules_key(rules)`, argument
shapes, dtypes and shardings). Keys must not hold arrays.

The paged engine (`sampling.engine`) keeps its jitted calls per Engine: sharing them across
Engines measured no gain on its tests (which already share their engines).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import jax

T = TypeVar("T")

MAX_ENTRIES = 128  # past this, the least recently used entry is dropped
_ENTRIES: dict[Hashable, Any] = {}


def shared(key: Hashable, build: Callable[[], T]) -> T:
    """The value built for `key` in this process, `build()` on first use."""
    if key in _ENTRIES:
        _ENTRIES[key] = value = _ENTRIES.pop(key)  # most recently used last
        return value
    _ENTRIES[key] = value = build()
    if len(_ENTRIES) > MAX_ENTRIES:
        _ENTRIES.pop(next(iter(_ENTRIES)))
    return value


def tree_key(tree: Any) -> tuple[Any, tuple[Any, ...]]:
    """(treedef, per leaf (shape, dtype, sharding)) of a pytree of arrays or ShapeDtypeStructs."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((x.shape, str(x.dtype), getattr(x, "sharding", None)) for x in leaves)
