"""Node records and their ``.done`` links: how they are written and read back.

A record (``{task}.json``) is written after the node's outputs, by an atomic
rename; the ``.done`` link after the record (docs/design.md §3, §5.4).  A
record that cannot be read (truncated by a half-finished copy, a full quota)
is a :class:`StoreError` naming the file and the way out, never a raw
``JSONDecodeError``.  Each record carries a ``seq`` that orders the store
index's entries of its node, and :func:`write_record` tells the index of
what it wrote (docs/design.md §14.1); :func:`node_summary` is what the index
keeps of a record for listings.  The record's fields are
:class:`~dscheduler.store.record.Record`'s: :func:`read_node` gives one,
:func:`write_record` writes one (or a dict in that format, as tools do).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import settings
from ..errors import StoreError
from . import atomic
from .layout import NodePaths, done_name, done_task, record_task, walk_node_dirs
from .record import DAMAGED, Record, RecordFormError

REPAIR_HINT = (
    "run `dscheduler verify --repair` to demote damaged nodes so that the next run "
    "redoes them (it keeps every good result)"
)


def damaged(path: Path, err: BaseException | str) -> StoreError:
    """The error for a store file that exists but cannot be read."""
    why = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return StoreError(f"{path} is damaged ({why}); {REPAIR_HINT}", path=path, why=why)


#: How a float JSON has no number for is written: ``{"$float": "NaN"}`` (also
#: ``"Infinity"``, ``"-Infinity"``, the names Python's json reads).  Strict JSON readers
#: refuse a bare ``NaN``; a metric or a task's value may be one (docs/design.md §11).
FLOAT_TAG = "$float"
_TAG_TEXT = f'"{FLOAT_TAG}"'  # how the tag appears in JSON text
_TAG_BYTES = _TAG_TEXT.encode()
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class JSONFormError(ValueError):
    """A value with no lossless JSON form; ``path`` names the field (``value['a'][2]``)."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path, self.why = path, why


def _json_key(key: Any) -> str | None:
    """The text json writes for a dict key, or None for a key json refuses."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool):
        return json.dumps(key)
    if isinstance(key, int | float):
        return float.__repr__(key) if isinstance(key, float) else int.__repr__(key)
    return None


def key_collision(value: Any, path: str = "value") -> JSONFormError | None:
    """The first dict in ``value`` with two keys json writes as one string (``1`` and
    ``"1"``: the file would keep one of them), as an error naming its path; else None."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            seen: dict[str, Any] = {}
            for key, inner in item.items():
                text = _json_key(key)
                if text in seen:
                    return JSONFormError(
                        f"{where}[{key!r}]", f"the keys {seen[text]!r} and {key!r} are both "
                        f"written as the JSON key {text!r}, so one would be lost; JSON "
                        "object keys are strings: use distinct str keys")
                if text is not None:
                    seen[text] = key
                if isinstance(inner, dict | list | tuple):
                    stack.append((inner, f"{where}[{key!r}]"))
        else:
            stack.extend((x, f"{where}[{i}]") for i, x in enumerate(item)
                         if isinstance(x, dict | list | tuple))
    return None


def has_non_str_keys(value: Any) -> bool:
    """Whether some dict inside ``value`` has a key that is not a str (a quick walk)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                if type(key) is not str:
                    return True
                if isinstance(inner, dict | list | tuple):
                    stack.append(inner)
        else:
            stack.extend(x for x in item if isinstance(x, dict | list | tuple))
    return False


def _tagged(value: Any, path: str, default: Callable[[Any], Any] | None) -> Any:
    """``value`` with each non-finite float as ``{FLOAT_TAG: name}``; a dict that already
    has that form is refused (it would read back as a float)."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {FLOAT_TAG: "NaN" if value != value else ("Infinity" if value > 0
                                                          else "-Infinity")}
    if value is None or isinstance(value, str | int):
        return value
    if isinstance(value, dict):
        if len(value) == 1 and FLOAT_TAG in value:
            raise JSONFormError(path, f"a dict whose only key is {FLOAT_TAG!r} is how "
                                "dscheduler writes NaN and Infinity; rename the key")
        return {k: _tagged(v, f"{path}[{k!r}]", default) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_tagged(v, f"{path}[{i}]", default) for i, v in enumerate(value)]
    if default is None:
        raise TypeError(type(value).__name__)
    return _tagged(default(value), path, default)


def dumps(value: Any, path: str = "value", *, default: Callable[[Any], Any] | None = None,
          separators: tuple[str, str] | None = None) -> str:
    """``value`` as strict JSON (no ``NaN`` tokens): non-finite floats tagged
    (:data:`FLOAT_TAG`), read back equal by :func:`loads`.

    The common case is one call of json's C encoder: the tagging walk runs only
    when it refuses a NaN or the text holds the tag.  A JSONFormError names the
    field of a dict that looks like a tag; key collisions are checked by the
    caller (:func:`key_collision`: records hold no dicts a task chose the keys of).
    """
    try:
        text = json.dumps(value, allow_nan=False, default=default, separators=separators)
        if _TAG_TEXT not in text:
            return text
    except ValueError as err:
        if "Out of range float" not in str(err):
            raise
    return json.dumps(_tagged(value, path, default), allow_nan=False, separators=separators)


def _untag(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and FLOAT_TAG in obj and obj[FLOAT_TAG] in _NONFINITE:
        return _NONFINITE[obj[FLOAT_TAG]]
    return obj


def loads(data: bytes | str) -> Any:
    """JSON written by :func:`dumps` (or by older versions, ``NaN`` tokens and all)."""
    tagged = (_TAG_BYTES in data) if isinstance(data, bytes) else (_TAG_TEXT in data)
    return json.loads(data, object_hook=_untag) if tagged else json.loads(data)


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path``; None when there is none; StoreError when it is damaged."""
    try:
        data = loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as err:
        raise damaged(path, err) from None
    if data is not None and not isinstance(data, dict):
        raise damaged(path, f"a JSON {type(data).__name__}, not an object")
    return data


def read_node(path: Path, *, listed: bool = False) -> Record | None:
    """The node record at ``path``; None when there is none; StoreError when it is
    damaged (unreadable, or not a record's structure).  ``listed``: None also for a
    JSON object with no ``attempts`` (not a record a listing shows), unless damaged."""
    data = read_record(path)
    if data is None or (listed and "attempts" not in data and data.get("state") != DAMAGED):
        return None
    try:
        return Record.from_json(data)
    except RecordFormError as err:
        raise damaged(path, str(err)) from None


def as_record(record: Record | dict[str, Any]) -> Record:
    """``record`` as a Record: tools and tests may hand a dict in the stored format."""
    return record if isinstance(record, Record) else Record.from_json(record)


def next_seq(previous: Record | None) -> int:
    """The ``seq`` of a node's next record: above its previous record's, at least the time in us.

    ``seq`` orders a node's index entries (:mod:`dscheduler.store.index`).  A
    record's writers hold the node's lease one after another, so counting up
    from the previous record orders them whatever the hosts' clocks say; the
    clock is a floor for records written before there was an index, or lost.
    """
    return max(record_seq(previous) + 1, time.time_ns() // 1000)


def record_seq(record: Record | None) -> int:
    """A record's ``seq``; 0 for none, or for a record written before there was one."""
    seq = record.seq if record is not None else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else 0


def node_summary(record: Record | dict[str, Any], path: Path | None = None,
                 root: Path | None = None) -> dict[str, Any]:
    """The small, JSON-able dict a listing needs of one node record.

    What a store index keeps per node for ``store.runs()``: ids, label, state,
    version, timings of the last attempt, params, metrics (last values), tags,
    the code digest, upstream keys, the config's scalar fields and the record's
    path relative to the store root.
    """
    record = as_record(record)
    attempts = record.attempts
    last = attempts[-1] if attempts else None
    config = record.config if isinstance(record.config, dict) else {}
    where = None
    if path is not None:
        where = path.relative_to(root).as_posix() if root is not None else str(path)
    return {
        "key": record.key, "name": record.name, "task": record.task,
        "case": record.case, "run_id": record.run_id,
        "env_id": record.env_id, "label": record.label or "",
        "state": record.state, "version": record.version,
        "attempts": len(attempts), "host": last.host if last else None,
        "start": attempts[0].start if attempts else None,
        "end": last.end if last else None, "seconds": last.seconds if last else None,
        "params": record.params, "metrics": record.metrics,
        "tags": record.tags,
        "code": record.code_digest,
        "upstream": record.upstream,
        "config": {k: v for k, v in config.items()
                   if v is None or isinstance(v, str | int | float | bool)},
        "record": where,
    }


def record_text(record: Record | dict[str, Any]) -> bytes:
    """A node record's text: compact JSON.

    Indented JSON goes through json's pure-Python encoder, five times slower,
    a third of a tiny task's cost on a worker (docs/benchmarks.md).
    """
    data = record.to_json() if isinstance(record, Record) else record
    return dumps(data, "record", separators=(",", ":"), default=str).encode()


def write_record_text(paths: NodePaths, text: bytes, *, final: bool = True) -> None:
    """Write a node's record (:func:`record_text`) atomically; fsync only when the
    setting ``task.fsync`` says so (docs/design.md §7 gives the reasons)."""
    atomic.write_bytes(paths.record, text, durable=bool(final and settings.get("task.fsync")))


_listeners: list[Callable[[NodePaths, Record], None]] = []


def on_write(listener: Callable[[NodePaths, Record], None]) -> None:
    """Call ``listener(paths, record)`` after each :func:`write_record` that announces
    itself: the store index listens (:mod:`dscheduler.store.index`), which this
    module cannot import (the index reads records)."""
    _listeners.append(listener)


def write_record(paths: NodePaths, record: Record | dict[str, Any], *, final: bool = True,
                 announce: bool = True) -> None:
    """Write a node's record atomically (see :func:`write_record_text`), with a ``seq``
    (the time, unless it has one), and tell the store index unless ``announce`` is
    False (the executor writes the index entries itself, in its own order).  A dict
    (tools, tests) is written as it is and announced as the Record it reads as."""
    if isinstance(record, dict):
        record.setdefault("seq", next_seq(None))
    elif record.seq is None:
        record.seq = next_seq(None)
    write_record_text(paths, record_text(record), final=final)
    if announce:
        typed = as_record(record)
        for listener in _listeners:
            listener(paths, typed)


def done_key(paths: NodePaths) -> str | None:
    """The key the ``.done`` link points at, or None."""
    try:
        return os.readlink(paths.done)
    except OSError:
        return None


def set_done(paths: NodePaths, key: str) -> None:
    """Point ``.{task}.done`` at ``key``, after the record.

    Creating a symlink is atomic by itself; only an existing link (healing
    after a crash) needs one made aside and renamed over it.
    """
    try:
        os.symlink(key, paths.done)
    except FileExistsError:
        tmp = atomic.temp_sibling(paths.done)
        os.symlink(key, tmp)
        os.replace(tmp, paths.done)


def clear_done(paths: NodePaths) -> None:
    """Remove the ``.done`` link: the node no longer counts as finished."""
    paths.done.unlink(missing_ok=True)


def node_folders(roots: list[Path]) -> list[tuple[Path, list[str]]]:
    """Every folder under ``roots`` that may hold node records, with its file names
    (:func:`~dscheduler.store.layout.walk_node_dirs`, as a list for thread pools)."""
    return [(Path(folder), files) for folder, files in walk_node_dirs(roots)]


def nodes_in(folder: Path, names: list[str]) -> list[tuple[NodePaths, str | None]]:
    """The nodes in ``folder`` (a record or a ``.done`` link), each with its link's target."""
    present = set(names)
    tasks = {t for t in map(record_task, names) if t}
    tasks |= {t for t in map(done_task, names) if t}
    out = []
    for task in sorted(tasks):
        link = None
        if done_name(task) in present:
            try:
                link = os.readlink(folder / done_name(task))
            except OSError:
                link = None
        out.append((NodePaths(folder, task), link))
    return out
