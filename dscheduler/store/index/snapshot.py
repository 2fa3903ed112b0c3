"""The snapshot: the index compacted into one file, read with the segments (docs/design.md §14.1).

``index/snapshot.json`` is two lines: a header (format, generation, entry count, the summaries
file, and per segment the offset up to which it is folded in), then one JSON object mapping path
to ``"state seq key"``.  Summaries are in ``index/summaries-{generation}.json`` (:mod:`.columns`),
written before the snapshot naming it.  A snapshot of another format is unreadable, so rebuilt.

:func:`load` reads the snapshot, lists ``segments/``, reads each from its offset (whole lines),
merges with :class:`~.entries.Merged`, then reopens the snapshot: another file means it reads
again.  :func:`compact`, under ``locks/index.lease`` (never waited for; a dead local holder's is
broken at once), reads likewise, seals segments older than ``index.seal_after`` (renamed
``.sealed``) and reads what they gained, writes the summaries, then the snapshot (fsynced,
renamed into place), then deletes sealed segments and summaries two generations old.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import settings
from ...errors import StoreError
from .. import atomic
from ..layout import Layout
from ..lease import Lease
from . import columns
from .columns import Table
from .entries import Merged
from .entries import finished as is_finished
from .segments import LOG, SEALED, created, names, read_tail

FORMAT = 2  # 2: summaries in columns (.columns); 1: a line per summary
RETRIES = 8


class Missing(Exception):
    """There is no snapshot: the index must be rebuilt from the records."""


class Corrupt(Exception):
    """The snapshot cannot be read: the index must be rebuilt from the records."""


def stem(name: str) -> str:
    """A segment's name without ``.log`` or ``.sealed``: sealing keeps its offset."""
    return name.rsplit(".", 1)[0]


@dataclass
class View:
    """The index as one reader saw it: the merged entries, and what compaction needs."""

    values: dict[str, str]
    header: dict[str, Any]
    offsets: dict[str, int] = field(default_factory=dict)  # stem -> bytes in `values`
    merged: Merged | None = None
    pending: int = 0  # bytes of segment entries read beyond the snapshot
    skipped: int = 0  # segment lines that were not entries
    sealed: list[str] = field(default_factory=list)  # .sealed files read
    summaries: dict[str, dict[str, Any]] | None = None
    ident: tuple[int, ...] | None = None  # the snapshot file read

    def finished(self, path: str, key: str) -> bool:
        return is_finished(self.values.get(path), key)

    @property
    def generation(self) -> int:
        return int(self.header.get("generation", 0))

    def wants_compaction(self) -> bool:
        """Whether segments hold enough that compaction pays, or some can be sealed."""
        if self.pending > int(settings.get("index.compact_bytes")) or self.sealed:
            return True
        oldest = time.time() - float(settings.get("index.seal_after"))
        return any(created(s) < oldest for s in self.offsets)


def _identity(fd: int) -> tuple[int, ...]:
    st = os.fstat(fd)
    return st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns


def identity(layout: Layout) -> tuple[int, ...] | None:
    """The snapshot file's identity (a rename gives another); None when missing."""
    try:
        fd = os.open(layout.index_snapshot, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return _identity(fd)
    finally:
        os.close(fd)


def parse_header(line: bytes) -> dict[str, Any]:
    try:
        header = json.loads(line)
    except (ValueError, UnicodeDecodeError) as err:
        raise Corrupt(f"header: {err}") from None
    if not isinstance(header, dict) or not isinstance(header.get("segments"), dict):
        raise Corrupt(f"header: not an index of format {FORMAT}")
    if header.get("format") != FORMAT:
        raise Corrupt(f"an index of format {header.get('format')!r}; this version of "
                      f"dscheduler reads format {FORMAT}")
    return header


def read_header(layout: Layout) -> dict[str, Any]:
    """The snapshot's first line only (raises Missing or Corrupt)."""
    try:
        with open(layout.index_snapshot, "rb") as f:
            line = f.readline()
    except FileNotFoundError:
        raise Missing from None
    return parse_header(line)


def _read_snapshot(layout: Layout) -> tuple[dict[str, Any], dict[str, str], tuple[int, ...]]:
    try:
        fd = os.open(layout.index_snapshot, os.O_RDONLY)
    except FileNotFoundError:
        raise Missing from None
    try:
        ident = _identity(fd)
        chunks = []
        while chunk := os.read(fd, 1 << 24):
            chunks.append(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    cut = data.find(b"\n")
    header = parse_header(data[:cut])
    try:
        values = json.loads(data[cut + 1:])
    except (ValueError, UnicodeDecodeError) as err:
        raise Corrupt(f"entries: {err}") from None
    if not isinstance(values, dict) or len(values) != header.get("entries"):
        raise Corrupt("entries: not the number the header states")
    return header, values, ident


def load(layout: Layout) -> View:
    """The index: the snapshot with every segment's newer entries (raises Missing, Corrupt)."""
    for _ in range(RETRIES):
        header, values, ident = _read_snapshot(layout)
        view = _with_segments(layout, header, values)
        if view is None or identity(layout) != ident:
            continue  # a compaction published meanwhile: read the new one
        view.ident = ident
        return view
    raise StoreError(f"the index {layout.index_dir} kept changing while it was read; "
                     "try again, or run `dscheduler index rebuild`")


def _with_segments(layout: Layout, header: dict[str, Any], values: dict[str, str],
                   start_all_at: int | None = None) -> View | None:
    """``values`` with the newer entries of every segment; None if a segment vanished."""
    known = header["segments"]
    merged = Merged(values)
    view = View(values, header, merged=merged)
    for name in names(layout):
        offset = known.get(stem(name), 0) if start_all_at is None else start_all_at
        data = read_tail(layout.index_segment(name), offset)
        if data is None:
            return None  # sealed or deleted by a compaction: its snapshot is newer
        view.skipped += merged.add_lines(data)
        view.pending += len(data)
        if name.endswith(SEALED):
            view.sealed.append(name)
        else:
            view.offsets[stem(name)] = offset + len(data)
    return view


def read_table(layout: Layout, view: View, skip: Callable[[str], bool] | None = None
               ) -> Table | None:
    """Every summary (but those of paths ``skip`` names) as columns: the snapshot's
    summaries file with the segments' laid over it; None when that file is gone (a
    compaction removed it meanwhile).  Its columns are parsed when asked for."""
    changed = view.merged.summaries if view.merged is not None else {}
    extra = [(p, s) for p, s in changed.items() if s and (skip is None or not skip(p))]
    name = str(view.header.get("summaries") or "")
    if not name:
        return Table([], extra)
    found: list[tuple[columns.Block, list[int] | None]] = []
    try:
        with open(layout.index_dir / name, "rb", buffering=1 << 20) as f:  # NFS: few reads
            for block in columns.blocks(f):
                keep = block.live(changed, skip)
                if keep is not None and len(keep) < block.rows:
                    if keep:
                        found.append((block, keep))
                else:
                    found.append((block, None))
    except FileNotFoundError:
        return None
    except ValueError as err:
        raise Corrupt(f"summaries: {err}") from None
    return Table(found, extra, str(layout.index_dir / name))


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside (it walks every object each time many new
    containers were made: parsing 100,000 summaries took three times as long)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _write_summaries(layout: Layout, view: View, target: Path) -> None:
    """The summaries file of a new snapshot (:func:`.columns.write`): the old one's,
    those of paths the segments changed replaced (or dropped), then the new paths."""
    changed = dict(view.merged.summaries) if view.merged is not None else {}
    name = view.header.get("summaries")
    tmp = atomic.temp_sibling(target)
    try:
        with open(atomic.create_file(tmp), "wb") as out, \
                (open(layout.index_dir / name, "rb", buffering=1 << 20) if name
                 else contextlib.nullcontext()) as old:
            columns.write(old, out, changed, lambda p: layout.run_of_id(p) is not None)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def publish(layout: Layout, view: View, lease: Lease) -> dict[str, Any]:
    """Write the summaries file, then the snapshot; the new header."""
    generation = view.generation + 1
    summary_file = layout.index_summaries(generation)
    header = {
        "format": FORMAT,
        "generation": generation,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "entries": len(view.values),
        "summaries": summary_file.name,
        "segments": view.offsets,
    }
    atomic.make_dirs(layout.index_dir)
    try:
        _write_summaries(layout, view, summary_file)
    except (FileNotFoundError, ValueError) as err:
        raise Corrupt(f"summaries: {err}") from None
    body = json.dumps(header, separators=(",", ":")) + "\n" + json.dumps(
        view.values, separators=(",", ":")) + "\n"
    lease.check()  # never publish after another compactor took over
    atomic.write_bytes(layout.index_snapshot, body.encode())
    return header


def cleanup(layout: Layout, view: View, generation: int) -> None:
    """After publishing: delete folded sealed segments and summaries two generations old."""
    for name in view.sealed:
        layout.index_segment(name).unlink(missing_ok=True)
    keep = {layout.index_summaries(generation).name,
            layout.index_summaries(generation - 1).name}
    for old in layout.index_summaries_files().values():
        if old.name not in keep:
            old.unlink(missing_ok=True)


def seal_old(layout: Layout, view: View) -> None:
    """Seal segments started before ``index.seal_after`` and fold in what they gained."""
    oldest = time.time() - float(settings.get("index.seal_after"))
    if view.merged is None:
        return
    for name in names(layout):
        if not name.endswith(LOG) or created(name) >= oldest:
            continue
        sealed = stem(name) + SEALED
        try:
            os.rename(layout.index_segment(name), layout.index_segment(sealed))
        except FileNotFoundError:
            continue
        data = read_tail(layout.index_segment(sealed), view.offsets.pop(stem(name), 0)) or b""
        view.skipped += view.merged.add_lines(data)
        view.sealed.append(sealed)


def compact(layout: Layout) -> bool:
    """Fold segments into a new snapshot; False when another compaction holds the lease.

    Raises Missing or Corrupt when there is no readable snapshot to start from.
    """
    # A holder on this host that is gone is broken at once, not after its ttl.
    lease = Lease(layout.lease_path("index"), owner="index compaction", break_dead_local=True)
    if not lease.try_acquire():
        return False
    try:
        view = load(layout)
        seal_old(layout, view)
        header = publish(layout, view, lease)
        cleanup(layout, view, header["generation"])
        return True
    finally:
        lease.release()
