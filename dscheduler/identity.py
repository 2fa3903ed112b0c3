"""The identity contract: canonical JSON and kind-tagged digests (docs/design.md §2).

Pure functions, stable across processes, machines, hash seeds, dict orderings and releases of
the same ``FORMAT``:

* canonical JSON: keys sorted, separators ``(",", ":")``, ``ensure_ascii=False``, tuples
  as lists, ``Path`` as POSIX, datetimes as ISO 8601 UTC, enums by value; an object with
  ``__ds_identity__`` (RunConfig, Env, ``ds.File`` value) as what it returns, before any
  other pydantic model as ``model_dump(mode="json")``.  NaN/Infinity, bytes, mixed-type
  sets and unknown objects raise :class:`IdentityError` naming the path (``config.a[2]``).
* a digest is sha256 over ``"dscheduler/{FORMAT}/{kind}\\n"`` + canonical JSON;
  the full hex digest is stored in manifests, ids are its first 16 hex chars.

Changing anything here changes every id; ``tests/test_identity.py`` pins golden digests.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from .errors import CollisionError, IdentityError

# "2": objects' own identity before model_dump, so a RunConfig inside a RunConfig
# counts by its ids, as a task argument always did (docs/design.md §2).
FORMAT = "2"
SHORT = 16

# json's public encoder, made once: ``json.dumps`` makes one per call with these
# options.  No circular check: a cycle ends in RecursionError, named by _find_problem.
_encoder = json.JSONEncoder(
    sort_keys=True,
    separators=(",", ":"),
    ensure_ascii=False,
    allow_nan=False,
    check_circular=False,
    default=lambda o: _default(o),
)


def _utc(value: dt.datetime) -> str:
    # Naive datetimes are taken as UTC: configs written by hand rarely carry a zone.
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat()


def _default(obj: Any) -> Any:
    """JSON form of the non-builtin types the contract knows; anything else fails."""
    from pydantic import BaseModel  # local: keeps this module importable alone

    # The hook first: a RunConfig is a pydantic model and a ds.File value a Path, and
    # each is identified by what its hook says (its ids; its content), nothing else.
    hook = getattr(obj, "__ds_identity__", None)
    if hook is not None:
        return hook()
    if isinstance(obj, PurePath):
        return obj.as_posix()
    if isinstance(obj, dt.datetime):
        return _utc(obj)
    if isinstance(obj, dt.date | dt.time):
        return obj.isoformat()
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, set | frozenset):
        kinds = {type(x) for x in obj}
        if len(kinds) <= 1 and kinds <= {str, int, float}:
            return sorted(obj)
    raise TypeError(type(obj).__name__)


def _str_keys(value: Any) -> bool:
    """Whether every mapping inside ``value`` has only str keys.

    json writes an int key as a string, which would make ``{1: x}`` and
    ``{"1": x}`` one text and one digest; the encoder cannot be told to refuse.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            for key in item:
                if type(key) is not str:
                    return False
            item = item.values()
        for inner in item:
            if type(inner) in _CONTAINERS:
                stack.append(inner)
    return True


_CONTAINERS = (dict, list, tuple)


def canonical_json(value: Any, path: str = "value") -> str:
    """The canonical JSON text of ``value``; ``path`` names it in errors."""
    try:
        if type(value) in _CONTAINERS and not _str_keys(value):
            raise TypeError("a mapping key is not a str")
        return _encoder.encode(value)
    except (TypeError, ValueError, RecursionError):
        # The encoder failed: walk the value to name the field that did.
        _find_problem(value, path)
        raise


def _find_problem(value: Any, path: str) -> None:
    """Raise IdentityError at the first value the encoder cannot take."""
    if isinstance(value, float) and not math.isfinite(value):
        raise IdentityError(path, f"{value!r} has no JSON form; use a finite number or null")
    if isinstance(value, str | int | float | bool) or value is None:
        return
    if isinstance(value, Mapping):
        keys = list(value)
        for key in keys:
            if not isinstance(key, str):
                raise IdentityError(
                    f"{path}[{key!r}]", "mapping keys must be strings; quote the key"
                )
        for key in keys:
            _find_problem(value[key], f"{path}.{key}" if path else key)
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _find_problem(item, f"{path}[{i}]")
        return
    if isinstance(value, bytes | bytearray):
        raise IdentityError(path, "bytes have no canonical form; store a str or a file digest")
    if isinstance(value, set | frozenset):
        raise IdentityError(path, "a set of mixed types has no order; use a list")
    try:
        converted = _default(value)
    except IdentityError as err:  # a hook's own problem (a ds.File naming nothing)
        raise IdentityError(path, err.problem) from None
    except TypeError:
        raise IdentityError(
            path,
            f"{type(value).__name__} object {value!r:.60} has no canonical form; "
            "use plain JSON values (str, int, float, bool, None, list, dict), "
            "Path, datetime or a pydantic model",
        ) from None
    _find_problem(converted, path)


def digest(kind: str, value: Any, path: str = "value") -> str:
    """Full sha256 hex digest of ``value`` tagged with ``kind``."""
    text = canonical_json(value, path)
    return hashlib.sha256(f"dscheduler/{FORMAT}/{kind}\n{text}".encode()).hexdigest()


def short_id(full_digest: str) -> str:
    """The id used in paths and keys: the first 16 hex characters."""
    return full_digest[:SHORT]


def check_collision(full_digest: str, stored_full_digest: str | None, where: str = "") -> None:
    """Fail loudly when a stored record for the same short id has another digest."""
    if stored_full_digest is None or stored_full_digest == full_digest:
        return
    raise CollisionError(
        f"short id {short_id(full_digest)} collides{' at ' + where if where else ''}: "
        f"stored digest {stored_full_digest} differs from {full_digest}. "
        "This is either a sha256 prefix collision or a hand-edited record; "
        "move the stored directory aside and run again."
    )
