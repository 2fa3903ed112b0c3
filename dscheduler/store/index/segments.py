"""Segments: each writer process appends index entries to a file of its own (docs/design.md §14.1).

A process's first entry for a store creates ``index/segments/{unix time}-{host}-{pid}-{random}.log``
exclusively (``O_EXCL``): no two writers share a file, and no lock is needed.  Each
:meth:`SegmentWriter.append` is one ``write`` of whole lines to a file opened ``O_APPEND``.  A
writer starts a new segment after ``index.segment_seconds`` or ``index.segment_bytes``, and
abandons one after a failed or short write (a torn line is never followed by another entry).

Entries that make a node unfinished (``durable=True``) are fsynced, then the writer checks by
name that its segment was not sealed meanwhile (:mod:`.snapshot`), else writes them again into a
new segment: such an entry is in a file compaction will read, or in the snapshot, before the
change it announces is made.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from ... import settings
from .. import atomic
from ..layout import Layout
from .entries import Entry

LOG = ".log"
SEALED = ".sealed"
CHECK_EVERY = 10.0  # seconds between checks that a writer's segment still exists


def created(name: str) -> float:
    """When the segment ``name`` was started (from its name); 0 when unknown."""
    head = name.split("-", 1)[0]
    return float(head) if head.isdigit() else 0.0


def names(layout: Layout) -> list[str]:
    """Segment files present (open and sealed), oldest first."""
    try:
        found = os.listdir(layout.index_segments_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in found if n.endswith((LOG, SEALED)) and not n.startswith("."))


def read_tail(path: Path, offset: int) -> bytes | None:
    """The whole lines of ``path`` after ``offset``; None when the file is gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        if offset:
            os.lseek(fd, offset, os.SEEK_SET)
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    return data[: data.rfind(b"\n") + 1]


class SegmentWriter:
    """This process's segment of one store's index (thread-safe)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.lock = threading.Lock()
        self.fd: int | None = None
        self.path: Path | None = None
        self.started = self.checked = 0.0
        self.size = 0

    def append(self, entries: Iterable[Entry], *, durable: bool = False) -> None:
        """Append ``entries``; with ``durable``, on disk and in a live segment on return."""
        self.append_lines(b"".join(e.line() for e in entries), durable=durable)

    def append_lines(self, data: bytes, *, durable: bool = False) -> None:
        """Append whole segment lines (:meth:`Entry.line`) made elsewhere."""
        if not data:
            return
        with self.lock:
            for attempt in range(3):
                fd, path = self._segment()
                try:
                    if os.write(fd, data) != len(data):
                        raise OSError(f"short write to {path}")
                    self.size += len(data)
                    if durable:
                        os.fsync(fd)
                        os.stat(path)  # FileNotFoundError: sealed meanwhile
                    return
                except OSError:
                    self._close()
                    if attempt == 2:
                        raise

    def _segment(self) -> tuple[int, Path]:
        now = time.time()
        if self.fd is not None and self.path is not None:
            if (now - self.started > float(settings.get("index.segment_seconds"))
                    or self.size > int(settings.get("index.segment_bytes"))):
                self._close()
            elif now - self.checked > CHECK_EVERY:
                # Gone when someone removed the index: write where a reader looks.
                self.checked = now
                if not self.path.exists():
                    self._close()
        if self.fd is None or self.path is None:
            name = f"{int(now)}-{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}{LOG}"
            path = self.layout.index_segment(name)
            self.fd = atomic.create_file(path, append=True)  # the store's mode
            self.path, self.started, self.checked, self.size = path, now, now, 0
        return self.fd, self.path

    def _close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        self.fd, self.path = None, None

    def close(self) -> None:
        with self.lock:
            self._close()


_writers: dict[tuple[int, str], SegmentWriter] = {}  # least recently used first
_writers_lock = threading.Lock()
#: Writers (each an open segment) a process keeps: a worker serving computes into
#: one fresh store after another would otherwise hold a file open per store, for ever.
KEEP_WRITERS = 8


def writer(layout: Layout) -> SegmentWriter:
    """This process's writer for the store at ``layout.root`` (a new one after fork); the
    least recently used beyond :data:`KEEP_WRITERS` are closed (a closed writer that is
    used again starts a new segment)."""
    key = (os.getpid(), str(layout.root))
    with _writers_lock:
        found = _writers.pop(key, None)
        if found is None:
            found = SegmentWriter(Layout(layout.root))
        _writers[key] = found
        while len(_writers) > KEEP_WRITERS:
            _writers.pop(next(iter(_writers))).close()
        return found


@atexit.register
def _close_all() -> None:
    with _writers_lock:
        for w in _writers.values():
            w.close()
