"""Atomic writes and removals: a reader on any host sees a whole file or none.

Writes go to a finished temporary sibling, then one rename (or ``os.link``
for create-once); removals rename first, then delete (docs/design.md §7).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def temp_name(name: str, token: str | None = None, suffix: str = ".partial") -> str:
    """The hidden name ``.{name}.{token}{suffix}`` of a ``name`` in the making (what
    cleanups sweep); ``token`` is 12 random hex characters unless given."""
    # os.urandom, not uuid4: the same 48 random bits without building a UUID
    # object, a noticeable part of a tiny task's time (docs/benchmarks.md).
    return f".{name}.{token or os.urandom(6).hex()}{suffix}"


def temp_sibling(path: Path, suffix: str = ".partial") -> Path:
    """A unique name beside ``path`` for a file or directory in the making."""
    return path.with_name(temp_name(path.name, suffix=suffix))


def _umask() -> int:
    """This process's umask, read without changing it (``os.umask`` sets it for every
    thread while it reads); 0o022 when /proc is not there."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


_umasks: dict[int, int] = {}  # by pid


def _create(path: Path, mode: int) -> int:
    """Create ``path`` exclusively and open it for writing, with exactly ``mode``.

    Its directory is made only when missing, and the mode is set only when
    the umask would take bits away: each is a round trip on a shared
    filesystem, and a tiny task writes several files (docs/benchmarks.md).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, mode)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, mode)
    pid = os.getpid()
    if pid not in _umasks:
        _umasks[pid] = _umask()
    if mode & _umasks[pid]:
        os.fchmod(fd, mode)
    return fd


def _write_all(fd: int, data: bytes, durable: bool) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    if durable:
        os.fsync(fd)


def write_bytes(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically.

    ``durable=False`` skips the fsync: readers still see the old file or the
    new one, never a part, but a machine crash may lose the write
    (docs/design.md §7 says when that is the right trade).
    """
    tmp = temp_sibling(path)
    try:
        fd = _create(tmp, mode)
        try:
            _write_all(fd, data, durable)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def json_text(obj: Any) -> str:
    """The text of a file people read: indented, sorted keys, a final newline."""
    return json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n"


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically and durably."""
    write_bytes(path, json_text(obj).encode())


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when there is no such file.

    Text that is not JSON raises :class:`ValueError`; callers that read
    records turn it into a :class:`~dscheduler.errors.StoreError`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return json.loads(b"".join(chunks))


def create_exclusive(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data`` in one exclusive open; False when it exists.

    One round trip where :func:`create_once` makes three, but a reader may
    find the file empty or partly written for a moment: only for files whose
    readers wait when they cannot parse one (leases).  ``O_EXCL`` is atomic on
    local filesystems, NFSv3 and later, Lustre and GPFS.
    """
    try:
        fd = _create(path, 0o644)
    except FileExistsError:
        return False
    try:
        _write_all(fd, data, False)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)  # never leave a lease nobody can read
        raise
    os.close(fd)
    return True


def create_once(path: Path, data: bytes, *, durable: bool = True) -> bool:
    """Create ``path`` with ``data`` unless it exists; True when this call created it.

    ``os.link`` of a finished temporary file: the name appears complete or not
    at all, and link fails if the name exists, also on NFS.
    """
    tmp = temp_sibling(path)
    fd = _create(tmp, 0o644)
    try:
        _write_all(fd, data, durable)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def remove(path: Path, suffix: str = ".deleting") -> bool:
    """Remove a file, link or directory: rename it aside, then delete it.

    A reader never sees a half-deleted directory: the name goes away in one
    rename.  True when this call removed it (False: it was not there).
    """
    aside = temp_sibling(path, suffix)
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(os.lstat(aside).st_mode):
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def publish_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; rename it into place on success.

    An existing ``final`` is moved aside first (rename cannot replace a
    non-empty directory), then removed.  On failure the temporary directory
    is deleted and nothing is visible.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(tmp: Path, final: Path) -> None:
    """Rename the finished directory ``tmp`` to ``final``, moving an existing one aside
    first (rename cannot replace a non-empty directory) and removing it after."""
    if final.exists():
        old = temp_sibling(final, ".old")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
