"""One way to read and write config dataclasses: unknown keys and mistyped scalars are refused, naming the valid ones.

Configs travel inside stores, checkpoints and worlds as JSON; reading one back goes through `from_dict`,
so a hand-edited `"width": "banana"` is a message at the boundary, not a TypeError deep in the arithmetic.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

from .errors import InputError

C = TypeVar("C")
_SCALARS = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def from_dict(cls: type[C], data: dict[str, Any], what: str) -> C:
    """`cls(**data)` after checking every key is a field and every scalar field has its type; `what` names it."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(f"{what}: unknown option(s) {unknown}; known: {sorted(fields)}")
    for name, value in data.items():
        if not fits(value, fields[name].type):
            raise InputError(f"{what}: option {name} must be {fields[name].type}, got {value!r}")
    return cls(**data)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as JSON-able constructor arguments (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def fits(value: Any, annotation: Any) -> bool:
    """Scalar annotations are checked (bool is not an int here); others pass and are left to the config."""
    want = _SCALARS.get(str(annotation))
    if want is None:
        return True
    return isinstance(value, want) and (want == (bool,) or not isinstance(value, bool))
