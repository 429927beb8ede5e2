"""Sampling parameters: host-side `SamplingParams` and the per-row arrays the jitted code reads.

Every parameter is an array over rows, so one compiled sampler serves any mix of values
(changing a temperature never recompiles). A field may be given as a scalar (every row), as B
values (one per prompt, shared by its n samples) or as N = B * n values (one per output row).

Semantics of one row:
  greedy or temperature == 0: the argmax of the logits.
  otherwise: logits / temperature, restricted to the top_k largest (top_k == 0: no top-k limit),
  then to the smallest prefix of those, in decreasing order, whose probability (renormalised
  over the top-k set) reaches top_p (top_p == 1: no nucleus limit; the first token is always
  kept, so top_p -> 0 is greedy); sample from what is left, renormalised.
  Whenever top_k > 0 or top_p < 1 the candidates are first cut to the sampler's static
  `max_top_k` largest logits (one `lax.top_k`, so only max_top_k values are ever sorted);
  rows with top_k == 0 and top_p == 1 sample from the full vocabulary with no sort at all.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import numpy as np


@flax.struct.dataclass
class RowSamplingParams:
    """Per-row sampling parameters as arrays (a pytree for jit).

    Attributes:
      temperature: [N] float32, >= 0.
      top_k: [N] int32, 0 = no top-k limit, else 1..max_top_k.
      top_p: [N] float32 in [0, 1].
      greedy: [N] bool, argmax whatever the other fields say (also implied by temperature 0).
    """

    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array
    greedy: jax.Array


def _rows(name: str, value, dtype, num_prompts: int, n: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim == 0:
        out = np.full((num_prompts * n,), arr)
    elif arr.ndim == 1 and arr.shape[0] == num_prompts * n:
        out = arr
    elif arr.ndim == 1 and arr.shape[0] == num_prompts:
        out = np.repeat(arr, n)
    else:
        raise ValueError(
            f"SamplingParams.{name}: expected a scalar, {num_prompts} values (one per prompt) or "
            f"{num_prompts * n} values (one per row), got shape {arr.shape}"
        )
    if dtype == np.int32 and not np.issubdtype(out.dtype, np.integer):
        if not np.all(np.equal(np.mod(out, 1), 0)):
            raise ValueError(f"SamplingParams.{name}: expected integers, got {out}")
    return out.astype(dtype)


def _first_bad(name: str, bad: np.ndarray, values: np.ndarray, n: int, rule: str) -> None:
    if np.any(bad):
        row = int(np.argmax(bad))
        raise ValueError(
            f"SamplingParams.{name}[row {row}] (prompt {row // n}, sample {row % n}) = "
            f"{values[row]}: {rule}"
        )


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample; see the module docstring for the exact semantics.

    Attributes:
      temperature: scalar or [B] or [N]; >= 0, 0 means greedy. Default 1.
      top_k: scalar or [B] or [N]; 0 (default) means no top-k limit, else at most the
        sampler's max_top_k.
      top_p: scalar or [B] or [N]; in [0, 1], 1 (default) means no nucleus limit.
      greedy: scalar or [B] or [N] bool; True forces the argmax.
    """

    temperature: float | np.ndarray = 1.0
    top_k: int | np.ndarray = 0
    top_p: float | np.ndarray = 1.0
    greedy: bool | np.ndarray = False

    @classmethod
    def greedy_decoding(cls) -> SamplingParams:
        return cls(greedy=True)

    def rows(self, num_prompts: int, n: int, max_top_k: int) -> RowSamplingParams:
        """Validated per-row numpy arrays [N = num_prompts * n].

        Raises:
          ValueError: naming the field and the first bad row.
        """
        temperature = _rows("temperature", self.temperature, np.float32, num_prompts, n)
        top_k = _rows("top_k", self.top_k, np.int32, num_prompts, n)
        top_p = _rows("top_p", self.top_p, np.float32, num_prompts, n)
        greedy = _rows("greedy", np.asarray(self.greedy, bool), np.bool_, num_prompts, n)
        _first_bad(
            "temperature",
            ~np.isfinite(temperature) | (temperature < 0),
            temperature,
            n,
            "must be finite and >= 0",
        )
        _first_bad(
            "top_k",
            (top_k < 0) | (top_k > max_top_k),
            top_k,
            n,
            f"must be 0 (no limit) or in [1, max_top_k={max_top_k}] (the sampler's static cap)",
        )
        _first_bad("top_p", ~((top_p >= 0) & (top_p <= 1)), top_p, n, "must be in [0, 1]")
        return RowSamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)
