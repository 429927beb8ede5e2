"""Shape and group-id checks shared by the RL functions.

Shapes are static under `jax.jit`, so these checks run at trace time and cost nothing per step.
Group-id range checks need concrete values and are skipped while tracing (an out-of-range id would
otherwise be silently dropped by `segment_sum`).
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np


def check_shapes(
    where: str,
    tokens: Mapping[str, jax.typing.ArrayLike | None],
    rows: Mapping[str, jax.typing.ArrayLike | None],
) -> tuple[int, int]:
    """Checks that token arrays are [N, L] and row arrays are [N] with one N and one L.

    Args:
      where: name of the calling function, used in error messages.
      tokens: name -> array expected to be [N, L] (None entries are skipped).
      rows: name -> array expected to be [N] (None entries are skipped).

    Returns:
      (N, L).

    Raises:
      ValueError: naming the function and the offending field.
    """
    n_rows = n_pos = None
    ref_name = None
    for name, x in tokens.items():
        if x is None:
            continue
        shape = np.shape(x)
        if len(shape) != 2:
            raise ValueError(f"{where}: `{name}` must be [N, L], got shape {shape}")
        if n_rows is None:
            n_rows, n_pos, ref_name = shape[0], shape[1], name
        elif shape != (n_rows, n_pos):
            raise ValueError(
                f"{where}: `{name}` has shape {shape} but `{ref_name}` has {(n_rows, n_pos)}"
            )
    for name, x in rows.items():
        if x is None:
            continue
        shape = np.shape(x)
        if n_rows is None:
            n_rows, ref_name = (shape[0] if shape else None), name
        if shape != (n_rows,):
            raise ValueError(f"{where}: `{name}` must be [N] with N={n_rows}, got shape {shape}")
    return n_rows, n_pos


def check_group_ids(where: str, group_ids: jax.typing.ArrayLike) -> None:
    """Checks that group ids are integers in [0, N) when their values are known (not traced)."""
    dtype = jnp.asarray(group_ids).dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"{where}: `group_ids` must be integers, got {dtype}")
    if isinstance(group_ids, jax.core.Tracer):
        return
    ids = np.asarray(group_ids)
    bad = np.flatnonzero((ids < 0) | (ids >= ids.shape[0]))
    if bad.size:
        row = bad[0]
        raise ValueError(
            f"{where}: `group_ids` must lie in [0, N={ids.shape[0]}); row {row} has {ids[row]}"
        )
