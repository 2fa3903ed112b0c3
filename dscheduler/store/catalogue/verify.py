"""Checking a store: every finished node's record, value and ``.done`` link (docs/design.md §3).

A node is finished when its ``.done`` link exists or its record says ``succeeded``.
:func:`verify` reports each finished node whose record or value is missing or unreadable, or
whose link is missing or points at another key.  ``repair=True`` mends without losing anything:
a good record and value get their link set; any other node is *demoted* so the next run redoes
it (link removed; a readable record rewritten ``damaged``, attempts kept; an unreadable one
moved aside to ``{task}.json.damaged-{time}``).  Nothing is deleted.

Values are checked by reading JSON values whole and Zarr metadata (the store's and its arrays'
``zarr.json``): a value the record says is zarr v3 must be, and one written with every chunk
(record ``all_chunks``) must have a file per chunk of its grid.  ``deep=True`` also reads and
decodes every chunk.  Directories are checked by a pool of threads.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import StoreError
from ..index import Index
from ..layout import Layout, NodePaths
from ..record import DAMAGED, SUCCEEDED, Record
from ..records import loads, next_seq, node_folders, nodes_in, read_node, write_record
from ..values import inline_text, missing_chunks, unreadable_chunk

THREADS = 8


@dataclass
class Problem:
    """One finished node whose files are not all right."""

    path: Path  # the node's record
    why: str
    action: str = ""  # what repair did


@dataclass
class Report:
    checked: int = 0  # finished nodes looked at
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        repaired = sum(1 for p in self.problems if p.action)
        text = (f"checked {self.checked} finished node(s) in {self.seconds:.1f} s: "
                f"{len(self.problems)} problem(s)")
        if repaired:
            text += f", {repaired} repaired"
        elif self.problems:
            text += "; `dscheduler verify --repair` mends them (the next run redoes demoted nodes)"
        return text


def _zarr_meta(folder: Path) -> dict[str, Any]:
    """A Zarr node's metadata: v3 ``zarr.json``, else v2 ``.zgroup``/``.zarray`` (old envs
    write Zarr 2 through ``ds.output()``)."""
    for name, kind in (("zarr.json", None), (".zgroup", "group"), (".zarray", "array")):
        try:
            meta = json.loads((folder / name).read_bytes())
        except FileNotFoundError:
            continue
        return meta if kind is None else {**meta, "node_type": kind}
    raise FileNotFoundError(2, "no Zarr metadata", str(folder / "zarr.json"))


#: Record ``type`` of the values :func:`~.values.save_value` writes: always zarr v3.
_V3_TYPES = ("numpy.ndarray", "dict", "xarray.Dataset", "xarray.DataArray")


def _zarr_readable(path: Path, output: dict[str, Any], deep: bool) -> str | None:
    """Why the Zarr store at ``path`` cannot be opened, or None: its metadata, its
    format, its chunk files (when written with every chunk), their bytes if ``deep``."""
    try:
        meta = _zarr_meta(path)
        v3 = output.get("zarr_format") == 3 or output.get("type") in _V3_TYPES
        if v3 and meta.get("zarr_format") != 3:
            found = meta.get("zarr_format", "unknown")
            return (f"its value {path.name} is a Zarr v{found} store, but its record says "
                    "zarr v3 (the format dscheduler writes)")
        if meta.get("node_type") == "group":
            for child in os.scandir(path):
                if child.is_dir():
                    _zarr_meta(Path(child.path))
        why = missing_chunks(path, meta) if output.get("all_chunks") else None
        if why is None and deep:
            why = unreadable_chunk(path)
    except FileNotFoundError as err:
        return f"its Zarr store is incomplete ({Path(err.filename).name} missing)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"its Zarr store is unreadable ({type(err).__name__}: {err})"
    return None if why is None else f"its value {path.name} is damaged: {why}"


def _value_problem(paths: NodePaths, output: Any, deep: bool = False) -> str | None:
    text = inline_text(output)
    if text is not None:
        try:
            loads(text)
        except ValueError as err:
            return f"its value, kept in its record, is unreadable ({err})"
        return None
    if not isinstance(output, dict) or "path" not in output:
        return "its record describes no stored value"
    path = paths.dir / str(output["path"])
    if output.get("kind") == "json":
        try:
            loads(path.read_bytes())
        except FileNotFoundError:
            return f"its value {path.name} is missing"
        except (OSError, ValueError) as err:
            return f"its value {path.name} is unreadable ({type(err).__name__}: {err})"
        return None
    if not path.is_dir():
        return f"its value {path.name} is missing"
    return _zarr_readable(path, output, deep)


def _check(paths: NodePaths, link: str | None, repair: bool, index: Index,
           deep: bool = False) -> tuple[bool, Problem | None]:
    """(whether the node is finished, its problem or None), repaired if asked."""
    try:
        record = read_node(paths.record)
    except StoreError as err:  # a damaged record counts as finished: it may say "succeeded"
        problem = Problem(paths.record, f"its record is unreadable ({err.why})")
        if repair:
            # The index hears of it before anything changes (docs/design.md §14).
            index.damaged(paths, problem.why, link or "")
            aside = paths.record.with_name(f"{paths.record.name}.damaged-{int(time.time())}")
            os.replace(paths.record, aside)
            problem.action = f"demoted; the record was moved to {aside.name}"
        return True, problem
    succeeded = record is not None and record.state == SUCCEEDED
    if link is None and not succeeded:
        return False, None  # not finished: failed, running or never run
    if record is None:
        problem = Problem(paths.record, f"its .done link points at {link} but there is no record")
        return True, _demote(paths, None, problem, repair, index)
    if not succeeded:
        problem = Problem(paths.record, f"its .done link exists but the record says "
                                        f"{record.state!r}")
        return True, _demote(paths, None, problem, repair, index)
    why = _value_problem(paths, record.output, deep)
    if why is not None:
        return True, _demote(paths, record, Problem(paths.record, why), repair, index)
    key = str(record.key)
    if link == key:
        return True, None
    problem = Problem(paths.record, "its .done link is missing" if link is None
                      else f"its .done link points at {link}, the record at {key}")
    if repair:
        index.done(paths, record)
        problem.action = "link set"
    return True, problem


def _demote(paths: NodePaths, record: Record | None, problem: Problem,
            repair: bool, index: Index) -> Problem:
    if repair:
        if record is None:
            index.damaged(paths, problem.why)
        else:
            record.state, record.damaged, record.seq = DAMAGED, problem.why, next_seq(record)
            index.undone(paths, record)  # the index first, then the link goes
            write_record(paths, record, announce=False)
        problem.action = "demoted: the next run redoes it"
    return problem


def verify(layout: Layout, run_id: str | None = None, repair: bool = False,
           deep: bool = False) -> Report:
    """Check every finished node of the store (or of one run); repair when asked;
    ``deep``: read every chunk of every Zarr value too."""
    start = time.perf_counter()
    roots = [layout.run(run_id).dir] if run_id else [layout.runs_dir, layout.tasks_dir]
    if run_id and not roots[0].is_dir():
        raise StoreError(f"no run {run_id} in {layout.root}")
    folders = node_folders(roots)
    index = Index(layout)

    def check_folder(item: tuple[Path, list[str]]) -> list[tuple[bool, Problem | None]]:
        return [_check(paths, link, repair, index, deep) for paths, link in nodes_in(*item)]

    report = Report()
    with ThreadPoolExecutor(THREADS) as pool:
        found = [f for batch in pool.map(check_folder, folders) for f in batch]
    report.problems = [p for _, p in found if p is not None]
    report.checked = sum(1 for finished, _ in found if finished)
    report.seconds = time.perf_counter() - start
    return report
