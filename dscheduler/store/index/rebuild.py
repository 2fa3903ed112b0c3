"""Rebuilding the index from the truth: records, ``.done`` links and ``run.json`` files.

Used when the snapshot is missing or unreadable, and by ``dscheduler index rebuild``
(docs/design.md §14.1).  Under the index lease (waited for), a pool of threads walks ``runs/``
and ``tasks/`` and makes one entry per node, with its record's ``seq`` and
:func:`~dscheduler.store.records.node_summary`:

* a ``.done`` link pointing at its succeeded record's key: ``succeeded``;
* a record in another state: that state (an unreadable one: ``damaged``);
* a succeeded record without its link: ``unlinked``, one ``seq`` below the record's.

Segment entries newer than the walk's start less twice ``task.lease_ttl`` are laid over those;
older ones are forgotten in favour of the files (results deleted by hand included).
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ... import settings
from ...errors import StoreError
from ..layout import RUN_RECORD, Layout, NodePaths
from ..lease import Lease
from ..record import Record
from ..records import (
    loads,
    node_folders,
    node_summary,
    nodes_in,
    read_node,
    read_record,
    record_seq,
)
from .entries import DAMAGED, RUN, SUCCEEDED, UNLINKED, Entry, Merged
from .segments import LOG, SEALED, names, read_tail
from .snapshot import Corrupt, Missing, View, cleanup, load, publish, read_header, stem

THREADS = 8


def pending_record(run: dict[str, Any]) -> Record:
    """What a listing shows of a run (its ``run.json`` dict) none of whose nodes has a
    record yet: a pseudo-record in state ``pending``."""
    return Record(run_id=run.get("run_id"), env_id=run.get("env_id"),
                  label=run.get("label") or "", config=run.get("config"), state="pending")


def run_entry(layout: Layout, run: dict[str, Any]) -> Entry:
    """The entry of a run (its ``run.json``): the summary a listing shows of a run none
    of whose nodes has a record yet (state ``pending``)."""
    path = layout.run(str(run["run_id"])).record
    return Entry(layout.run_id_path(str(run["run_id"])), 0, RUN,
                 str(run.get("config_digest", "")),
                 node_summary(pending_record(run), path, layout.root))


def damaged_entry(layout: Layout, paths: NodePaths, why: str, seq: int, key: str = "") -> Entry:
    """The entry of a node whose record cannot be read."""
    path = layout.node_id(paths)
    pseudo = Record(state=DAMAGED, task=paths.task, damaged=why,
                    run_id=layout.run_of_node_id(path))
    return Entry(path, seq, DAMAGED, key, node_summary(pseudo, paths.record, layout.root))


def _folder_entries(layout: Layout, folder: Path, files: list[str]) -> list[Entry]:
    out = []
    if RUN_RECORD in files:
        path = (folder / RUN_RECORD).relative_to(layout.root).as_posix()
        if layout.run_of_id(path) is not None:
            try:
                run = read_record(folder / RUN_RECORD)
            except StoreError:
                run = None
            if run and "run_id" in run:
                out.append(run_entry(layout, run))
    for paths, link in nodes_in(folder, files):
        try:
            record = read_node(paths.record)
        except StoreError as err:
            out.append(damaged_entry(layout, paths, str(err.why), 0, link or ""))
            continue
        if record is None or not isinstance(record.key, str):
            continue
        state, key, seq = str(record.state), record.key, record_seq(record)
        if state == SUCCEEDED and link != key:
            state, seq = UNLINKED, seq - 1
        out.append(Entry(layout.node_id(paths), seq, state, key,
                         node_summary(record, paths.record, layout.root)))
    return out


def scan(layout: Layout) -> Merged:
    """An entry for every node and run the store's files describe."""
    merged = Merged({})
    folders = node_folders([layout.runs_dir, layout.tasks_dir])
    with ThreadPoolExecutor(THREADS) as pool:
        for batch in pool.map(lambda item: _folder_entries(layout, *item), folders):
            for entry in batch:
                merged.add(entry)
    return merged


def _last_generation(layout: Layout) -> int:
    found = [0]
    with contextlib.suppress(Missing, Corrupt):
        found.append(int(read_header(layout).get("generation", 0)))
    found.extend(layout.index_summaries_files())
    return max(found)


def collect(layout: Layout) -> View:
    """The index built from the store's files and recent segment entries, unpublished."""
    since = int((time.time() - 2 * float(settings.get("task.lease_ttl"))) * 1e6)
    merged = scan(layout)
    view = View(merged.values, {"generation": _last_generation(layout), "segments": {}},
                merged=merged)
    for name in names(layout):
        data = read_tail(layout.index_segment(name), 0)
        if data is None:
            continue
        for raw in data.splitlines():
            try:
                entry = Entry.from_list(loads(raw))
            except (ValueError, TypeError, UnicodeDecodeError):
                view.skipped += 1
                continue
            if entry.seq >= since:
                merged.add(entry)
        if name.endswith(LOG):
            view.offsets[stem(name)] = len(data)
        elif name.endswith(SEALED):
            view.sealed.append(name)
    return view


def rebuild(layout: Layout, timeout: float | None = None, *, if_missing: bool = False) -> View:
    """Rebuild and publish the index (an empty view, nothing written, without a store).

    ``if_missing``: only when there is no readable snapshot once the lease is held.
    """
    if not layout.root.is_dir():
        return View({}, {"generation": 0, "segments": {}}, merged=Merged({}))
    # A holder on this host that is gone is broken at once, not after its ttl.
    lease = Lease(layout.lease_path("index"), owner="index rebuild", break_dead_local=True)
    lease.acquire(timeout=timeout)
    try:
        if if_missing:
            try:
                return load(layout)
            except (Missing, Corrupt):
                pass
        view = collect(layout)
        view.header = publish(layout, view, lease)
        cleanup(layout, view, view.generation)
        view.summaries = {p: s for p, s in (view.merged.summaries if view.merged else {}).items()
                          if s}
        return view
    finally:
        lease.release()
