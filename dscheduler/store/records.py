"""Node records and their ``.done`` links: how they are written and read back.

A record (``{task}.json``) is written after the node's outputs, by an atomic
rename; the ``.done`` link after the record (docs/design.md §3, §5.4).  A
record that cannot be read (truncated by a half-finished copy, a full quota)
is a :class:`StoreError` naming the file and the way out, never a raw
``JSONDecodeError``.  Each record carries a ``seq`` that orders the store
index's entries of its node, and :func:`write_record` tells the index of
what it wrote (docs/design.md §14.1); :func:`node_summary` is what the index
keeps of a record for listings.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import settings
from ..errors import StoreError
from . import atomic
from .layout import NodePaths, done_name, done_task, record_task, walk_node_dirs

REPAIR_HINT = (
    "run `dscheduler verify --repair` to demote damaged nodes so that the next run "
    "redoes them (it keeps every good result)"
)


def damaged(path: Path, err: BaseException | str) -> StoreError:
    """The error for a store file that exists but cannot be read."""
    why = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return StoreError(f"{path} is damaged ({why}); {REPAIR_HINT}", path=path, why=why)


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path``; None when there is none; StoreError when it is damaged."""
    try:
        data = atomic.read_json(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise damaged(path, err) from None
    if data is not None and not isinstance(data, dict):
        raise damaged(path, f"a JSON {type(data).__name__}, not an object")
    return data


def next_seq(previous: dict[str, Any] | None) -> int:
    """The ``seq`` of a node's next record: above its previous record's, at least the time in us.

    ``seq`` orders a node's index entries (:mod:`dscheduler.store.index`).  A
    record's writers hold the node's lease one after another, so counting up
    from the previous record orders them whatever the hosts' clocks say; the
    clock is a floor for records written before there was an index, or lost.
    """
    return max(record_seq(previous) + 1, time.time_ns() // 1000)


def record_seq(record: dict[str, Any] | None) -> int:
    """A record's ``seq``; 0 for none, or for a record written before there was one."""
    seq = (record or {}).get("seq")
    return seq if isinstance(seq, int) else 0


def node_summary(record: dict[str, Any], path: Path | None = None,
                 root: Path | None = None) -> dict[str, Any]:
    """The small, JSON-able dict a listing needs of one node record.

    What a store index keeps per node for ``store.runs()``: ids, label, state,
    version, timings of the last attempt, params, metrics (last values), tags,
    the code digest, upstream keys, the config's scalar fields and the record's
    path relative to the store root.
    """
    attempts = record.get("attempts") or [{}]
    last = attempts[-1] if isinstance(attempts[-1], dict) else {}
    first = attempts[0] if isinstance(attempts[0], dict) else {}
    call = record.get("call")
    call = call if isinstance(call, dict) else {}
    config = record.get("config")
    config = config if isinstance(config, dict) else {}
    where = None
    if path is not None:
        where = path.relative_to(root).as_posix() if root is not None else str(path)
    return {
        "key": record.get("key"), "name": record.get("name"), "task": record.get("task"),
        "case": record.get("case"), "run_id": record.get("run_id"),
        "env_id": record.get("env_id"), "label": record.get("label") or "",
        "state": record.get("state"), "version": record.get("version"),
        "attempts": len(record.get("attempts") or []), "host": last.get("host"),
        "start": first.get("start"), "end": last.get("end"), "seconds": last.get("seconds"),
        "params": record.get("params") or {}, "metrics": record.get("metrics") or {},
        "tags": record.get("tags") or {},
        "code": (call.get("code") or {}).get("digest") if call else None,
        "upstream": record.get("upstream") or [],
        "config": {k: v for k, v in config.items()
                   if v is None or isinstance(v, str | int | float | bool)},
        "record": where,
    }



def record_text(record: dict[str, Any]) -> bytes:
    """A node record's text: compact JSON.

    Indented JSON goes through json's pure-Python encoder, five times slower,
    a third of a tiny task's cost on a worker (docs/benchmarks.md).
    """
    return json.dumps(record, separators=(",", ":"), default=str).encode()


def write_record_text(paths: NodePaths, text: bytes, *, final: bool = True) -> None:
    """Write a node's record (:func:`record_text`) atomically; fsync only when the
    setting ``task.fsync`` says so (docs/design.md §7 gives the reasons)."""
    atomic.write_bytes(paths.record, text, durable=bool(final and settings.get("task.fsync")))


_listeners: list[Callable[[NodePaths, dict[str, Any]], None]] = []


def on_write(listener: Callable[[NodePaths, dict[str, Any]], None]) -> None:
    """Call ``listener(paths, record)`` after each :func:`write_record` that announces
    itself: the store index listens (:mod:`dscheduler.store.index`), which this
    module cannot import (the index reads records)."""
    _listeners.append(listener)


def write_record(paths: NodePaths, record: dict[str, Any], *, final: bool = True,
                 announce: bool = True) -> None:
    """Write a node's record atomically (see :func:`write_record_text`), with a ``seq``
    (the time, unless it has one), and tell the store index unless ``announce`` is
    False (the executor writes the index entries itself, in its own order)."""
    record.setdefault("seq", next_seq(None))
    write_record_text(paths, record_text(record), final=final)
    if announce:
        for listener in _listeners:
            listener(paths, record)


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
