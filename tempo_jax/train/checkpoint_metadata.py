"""Checkpoint metadata as JSON that comes back exactly: tuples stay tuples (stored as
{"__tuple__": [...]}), and anything JSON would silently change is refused, naming its path."""

from __future__ import annotations

import math
from typing import Any

_TUPLE_KEY = "__tuple__"


def encode_metadata(value: Any, where: str = "metadata") -> Any:
    """Checks that `value` comes back from JSON identical; tuples become {"__tuple__": [...]}.

    Tuples are kept (configs hold them, e.g. `eval.ks = (1, 2, 4, 8)`); anything else JSON would
    silently change (numpy scalars, int subclasses, non-str keys, NaN) is rejected naming its path.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if type(value) is not int:  # IntEnum, np.int64 (not an int subclass) etc.
            raise TypeError(f"{where}: {type(value).__name__} is not a plain int")
        return value
    if isinstance(value, float):
        if type(value) is not float:
            raise TypeError(f"{where}: {type(value).__name__} is not a plain float")
        if not math.isfinite(value):
            raise ValueError(f"{where}: non-finite float {value} cannot be stored in JSON")
        return value
    if isinstance(value, (list, tuple)):
        encoded = [encode_metadata(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if type(value) is tuple:
            return {_TUPLE_KEY: encoded}
        if type(value) is list:
            return encoded
    if type(value) is dict:
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: key {k!r} is not a str (JSON would turn it into one)")
            if k == _TUPLE_KEY:
                raise ValueError(f"{where}: key {_TUPLE_KEY!r} is reserved for tuples")
            out[k] = encode_metadata(v, f"{where}[{k!r}]")
        return out
    raise TypeError(
        f"{where}: {type(value).__name__} is not JSON-exact (use int/float/str/bool/None/list/"
        "tuple/dict; convert numpy scalars with int()/float(), RNG keys with "
        "jax.random.key_data(key).tolist(), a ConfigDict with .to_dict())"
    )


def decode_metadata(value: Any) -> Any:
    if isinstance(value, list):
        return [decode_metadata(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {_TUPLE_KEY}:
            return tuple(decode_metadata(v) for v in value[_TUPLE_KEY])
        return {k: decode_metadata(v) for k, v in value.items()}
    return value
