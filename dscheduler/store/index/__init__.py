"""The store index: which nodes are finished, and a summary of each, in a few files.

A cache of the records and ``.done`` links, which stay the truth (docs/design.md §14.1)::

    index/snapshot.json            compacted entries, replaced by one rename
    index/summaries-{gen}.json     the entries' summaries, in columns (listing only)
    index/segments/{t}-{host}-{pid}-{rand}.log   one append-only file per writer

Writers append to a segment of their own (:mod:`.segments`); readers merge the snapshot with
every segment, highest ``seq`` winning per node (:mod:`.entries`); compaction folds segments into
a new snapshot under a lease (:mod:`.snapshot`); a missing or unreadable snapshot is rebuilt from
the records (:mod:`.rebuild`).  The index never calls a node finished that is not: an entry that
unfinishes a node is fsynced before its ``.done`` link goes, a ``succeeded`` one appended after
the link is made; a crash can only leave "not finished" for a finished node, and planning then
reads its record and link (``Index.restore`` puts such entries back).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from ...errors import LeaseError, StoreError
from ..layout import Layout, NodePaths
from ..lease import Lease
from ..record import Record
from ..records import (
    as_record,
    clear_done,
    done_key,
    next_seq,
    node_summary,
    on_write,
    read_node,
    record_seq,
    set_done,
)
from . import snapshot
from .columns import Table
from .entries import RUN, RUNNING, SUCCEEDED, UNLINKED, Entry, finished, order
from .rebuild import damaged_entry, rebuild, run_entry
from .segments import writer
from .snapshot import Corrupt, Missing, View

__all__ = ["RUN", "RUNNING", "SUCCEEDED", "Entry", "Index", "Table", "View", "finished",
           "run_entry"]

log = logging.getLogger("dscheduler.index")


class Index:
    """The index of the store at ``layout`` (see the module's docstring)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    # -- reading ----------------------------------------------------------------------

    def load(self) -> View:
        """Every entry, merged; rebuilt from the records when the snapshot is missing or bad."""
        try:
            return snapshot.load(self.layout)
        except (Missing, Corrupt) as err:
            if isinstance(err, Corrupt):
                log.warning("index of %s unreadable (%s): rebuilding it from the records",
                            self.layout.root, err)
            return self.rebuild()

    def table(self, view: View, skip: Callable[[str], bool] | None = None) -> Table | None:
        """The summaries of ``view``'s entries as columns (:mod:`.columns`), but those of
        paths ``skip`` names; None when compactions removed its summaries file meanwhile
        (load again)."""
        if view.summaries is not None:  # a rebuild's, in memory
            return Table.of((p, s) for p, s in view.summaries.items()
                            if skip is None or not skip(p))
        try:
            found = snapshot.read_table(self.layout, view, skip)
        except Corrupt as err:
            log.warning("index summaries of %s unreadable (%s): rebuilding the index from "
                        "the records", self.layout.root, err)
            return self.table(self.rebuild(), skip)
        if found is None and snapshot.identity(self.layout) == view.ident:
            return self.table(self.rebuild(), skip)  # its own summaries file is gone
        return found

    def size(self) -> int | None:
        """Entries in the snapshot (its header alone is read); None without one."""
        try:
            return int(snapshot.read_header(self.layout).get("entries", 0))
        except (Missing, Corrupt):
            return None

    # -- maintaining ------------------------------------------------------------------

    def rebuild(self, timeout: float | None = None, *, if_missing: bool = False) -> View:
        """Rebuild the index from the store's files and publish it (``if_missing``: only
        when there is no readable snapshot)."""
        return rebuild(self.layout, timeout=timeout, if_missing=if_missing)

    def compact(self) -> bool:
        """Fold segments into a new snapshot; False if another process is compacting."""
        try:
            return snapshot.compact(self.layout)
        except (Missing, Corrupt):
            self.rebuild()
            return True

    def restore(self, found: Iterable[tuple[NodePaths, Record, str | None]],
                node_lease: Callable[[str], Lease]) -> None:
        """Entries for nodes a plan found finished without one (``Plan.unindexed``: paths,
        record, the index's value then), so that the next plan reads the index alone for
        them (docs/design.md §14.1, point 3).  A cache, so failing is logged.

        Usually the entry was lost (a worker killed between its .done link and its
        entry): it is appended again as it was, with the record's seq.  When a newer
        entry says "not finished" (an attempt announced dropping the result, then died
        before it did), a newer "finished" is appended only under the node's lease
        (``node_lease(key16)``), so no attempt is running, and only if record and link
        still say finished.
        """
        entries = []
        try:
            for paths, record, value in found:
                newer = order(value)[0] if value is not None else -1
                if newer < record_seq(record):
                    entries.append(self.entry(paths, record, state=SUCCEEDED))
                    continue
                key = str(record.key)
                lease = node_lease(key[:16])
                if not lease.try_acquire():
                    continue  # an attempt runs: its own entries will tell
                try:
                    again = read_node(paths.record) or Record()
                    if again.key == key and again.state == SUCCEEDED and done_key(paths) == key:
                        entries.append(self.entry(paths, again, state=SUCCEEDED,
                                                  seq=max(next_seq(again), newer + 1)))
                finally:
                    lease.release()
            self.append(entries)
        except (OSError, LeaseError, StoreError) as err:
            log.warning("could not restore index entries of %s: %s", self.layout.root, err)

    # -- writing ----------------------------------------------------------------------

    def append(self, entries: Iterable[Entry], *, durable: bool = False) -> None:
        """Append entries to this process's segment (see :mod:`.segments`)."""
        writer(self.layout).append(entries, durable=durable)

    def append_lines(self, data: bytes) -> None:
        """Append segment lines (:meth:`Entry.line`) that another process made: the
        driver copies its workers' entries (docs/design.md §14.2)."""
        writer(self.layout).append_lines(data)

    def entry(self, paths: NodePaths, record: Record | dict[str, Any], *,
              seq: int | None = None, state: str | None = None) -> Entry:
        """The entry that says what ``record`` (the node's, at ``paths``) says (a dict in
        the stored format, from tools and tests, is read as a Record)."""
        record = as_record(record)
        return Entry(self.layout.node_id(paths), record_seq(record) if seq is None else seq,
                     state or str(record.state), str(record.key),
                     node_summary(record, paths.record, self.layout.root))

    def done(self, paths: NodePaths, record: Record, *, seq: int | None = None) -> Entry:
        """Make the ``.done`` link of a succeeded record, then append its entry."""
        set_done(paths, str(record.key))
        entry = self.entry(paths, record, seq=seq, state=SUCCEEDED)
        self.append([entry])
        return entry

    def undone(self, paths: NodePaths, record: Record) -> Entry:
        """Append a durable entry saying the node is not finished, then remove its link.

        ``record`` is what the node's record becomes (running, damaged): its
        ``seq`` must be above that of the record whose result is dropped
        (:func:`dscheduler.store.records.next_seq`).
        """
        entry = self.entry(paths, record)
        self.append([entry], durable=True)
        clear_done(paths)
        return entry

    def damaged(self, paths: NodePaths, why: str, key: str = "") -> None:
        """Like :meth:`undone`, for a node whose record cannot be read or is missing."""
        self.append([damaged_entry(self.layout, paths, why, next_seq(None), key)], durable=True)
        clear_done(paths)

    def note(self, paths: NodePaths, record: Record) -> Entry:
        """Append the entry of a record that is not finished (running, failed, cancelled)."""
        entry = self.entry(paths, record)
        self.append([entry])
        return entry


def _announced(paths: NodePaths, record: Record) -> None:
    """The entry of a record written with :func:`~dscheduler.store.records.write_record`
    by code that keeps no index itself.  A succeeded record is ``unlinked`` (not
    finished) one ``seq`` below its own until its link is made, as a rebuild has it."""
    if paths.root is None:
        return
    index = Index(Layout(paths.root))
    entry = index.entry(paths, record)
    if entry.state == SUCCEEDED:
        entry = Entry(entry.path, entry.seq - 1, UNLINKED, entry.key, entry.summary)
    try:
        index.append([entry])
    except OSError as err:
        log.warning("could not add %s to the index of %s: %s", entry.path, paths.root, err)


on_write(_announced)
