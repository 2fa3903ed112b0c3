"""Atomic writes and removals: a reader on any host sees a whole file or none.

Writes go to a finished temporary sibling, then one rename (or ``os.link``
for create-once); removals rename first, then delete (docs/design.md §7).
Only a file nobody opens before a later write names it (:func:`write_new`: a
node's value in the directory its attempt made) is written in place.
Modes never follow the umask: a private store's dirs are 0755 and files 0644,
a group store's (its root setgid and group-writable, :func:`learn_root`) 02775
and 0664; nothing is ever world-writable (docs/design.md §3).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
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


#: The umask taken when it cannot be read: every bit, so that every mode is set explicitly.
_UNKNOWN_UMASK = 0o777


def _umask() -> int:
    """This process's umask, from the ``Umask:`` line of ``/proc/self/status`` (proc(5),
    Linux 4.7 and later).  Python can read it only by setting it (``os.umask``), for every
    thread at once, which would give files other threads create meanwhile the wrong modes.
    Where the line is missing, :data:`_UNKNOWN_UMASK`: modes are then always set, which is
    correct and costs a ``chmod`` per file (docs/design.md §3)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return _UNKNOWN_UMASK


_umasks: dict[int, int] = {}  # by pid


def umask() -> int:
    """This process's umask, read once per process."""
    pid = os.getpid()
    if pid not in _umasks:
        _umasks[pid] = _umask()
    return _umasks[pid]


@dataclass(frozen=True)
class Modes:
    """The modes of what a store holds: ``dir`` for directories, ``file`` for files."""

    dir: int
    file: int

    @property
    def group(self) -> bool:
        return bool(self.dir & stat.S_ISGID)


PRIVATE = Modes(0o755, 0o644)
#: setgid: every directory and file made below takes the root's group (Linux, NFS, Lustre).
GROUP = Modes(0o2775, 0o664)

_known: dict[str, Modes] = {}  # store roots this process has looked at
_group_roots: tuple[str, ...] = ()  # "{root}/" of each group store among them


def is_group_root(st_mode: int) -> bool:
    """Whether a store root's mode makes it a group store: setgid and group-writable."""
    return bool(st_mode & stat.S_ISGID) and bool(st_mode & stat.S_IWGRP)


def learn_root(root: Path, *, again: bool = False) -> Modes:
    """The modes of the store at ``root``, read off its directory once per process
    (``again``: read anew); PRIVATE while it does not exist (``Store.ensure`` decides).

    Sharing is a property of the store, not of a writer's settings: a member
    joining a group store writes group modes without configuring anything.
    """
    global _group_roots
    key = str(root)
    if not again and key in _known:
        return _known[key]
    try:
        st = os.stat(root)
    except OSError:
        return PRIVATE
    modes = _known[key] = GROUP if is_group_root(st.st_mode) else PRIVATE
    prefix = key.rstrip("/") + "/"
    others = tuple(r for r in _group_roots if r != prefix)
    _group_roots = (*others, prefix) if modes.group else others
    return modes


def modes_for(path: Path | str) -> Modes:
    """The modes of ``path``: GROUP inside a group store this process knows, else PRIVATE.
    No syscall: a tiny task writes several files (docs/design.md §14.2)."""
    if _group_roots and str(path).startswith(_group_roots):
        return GROUP
    return PRIVATE


def _mkdir(path: Path, modes: Modes) -> None:
    """``os.mkdir`` with ``modes.dir`` exactly; chmod only when the umask took bits away."""
    os.mkdir(path, modes.dir & 0o777)  # setgid comes from the parent, not from mkdir
    if modes.dir & 0o777 & umask():
        os.chmod(path, modes.dir)


def make_dirs(path: Path) -> None:
    """Make directory ``path`` and its missing parents with the store's mode (``Path.mkdir``
    gives parents the umask's mode: world-writable under umask 000)."""
    try:
        _mkdir(path, modes_for(path))
    except FileExistsError:
        pass
    except FileNotFoundError:
        make_dirs(path.parent)
        with contextlib.suppress(FileExistsError):
            _mkdir(path, modes_for(path))


def _create(path: Path, mode: int, append: bool = False) -> int:
    """Create ``path`` exclusively and open it for writing, with exactly ``mode``
    (group-writable too in a group store).

    Its directory is made only when missing, and the mode is set only when
    the umask would take bits away: each is a round trip on a shared
    filesystem, and a tiny task writes several files (docs/benchmarks.md).
    """
    if modes_for(path).group:
        mode |= (mode & 0o200) >> 3  # the group may write what the owner may
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | (os.O_APPEND if append else 0)
    try:
        fd = os.open(path, flags, mode)
    except FileNotFoundError:
        make_dirs(path.parent)
        fd = os.open(path, flags, mode)
    if mode & umask():
        os.fchmod(fd, mode)
    return fd


def create_file(path: Path, *, append: bool = False) -> int:
    """A new file at ``path`` (``O_EXCL``; FileExistsError when there is one), open for
    writing with the store's file mode, its directory made when missing; the fd."""
    return _create(path, 0o644, append)


def open_append(path: Path) -> int:
    """``path`` open for appending (a log), created with the store's file mode when missing
    and its directory made with the store's mode: ``open(path, "ab")`` takes the umask's."""
    try:
        return _create(path, 0o644, append=True)
    except FileExistsError:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)


def fix_tree(root: Path, *, always: bool = False) -> None:
    """Give a tree that other code wrote with ``open()`` and ``mkdir`` (Zarr, a task's
    files) the store's modes before it is renamed into place.

    Nothing is looked at when this process's umask already gives those modes
    (``always``: the tree's modes were set otherwise, e.g. a venv's).
    Executable files keep their x bits; symlinks and special files are left.
    """
    modes = modes_for(root)
    mask = umask()
    if not always and 0o777 & ~mask == modes.dir & 0o777 and 0o666 & ~mask == modes.file:
        return
    st = os.lstat(root)
    if stat.S_IMODE(st.st_mode) != modes.dir:
        os.chmod(root, modes.dir)
    stack = [os.fspath(root)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                    want = modes.dir
                elif stat.S_ISREG(st.st_mode):
                    want = modes.file | (0o111 if st.st_mode & 0o100 else 0)
                else:
                    continue
                if stat.S_IMODE(st.st_mode) != want:
                    os.chmod(entry.path, want)


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


def write_new(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to a new file ``path`` in place (``O_EXCL``), without a temporary
    name: only for a file no reader opens before something written after it names
    it (a node's value in a directory its attempt made, before its record).  A
    failed write removes the file."""
    fd = _create(path, 0o644)
    try:
        _write_all(fd, data, durable)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def make_new_dir(path: Path) -> bool:
    """Make directory ``path`` (and missing parents) with the store's mode; True when
    this call made it, False when it existed.  ``mkdir`` is exclusive on every
    filesystem, so one caller alone learns that the directory is new."""
    try:
        _mkdir(path, modes_for(path))
    except FileExistsError:
        return False
    except FileNotFoundError:
        make_dirs(path.parent)
        try:
            _mkdir(path, modes_for(path))
        except FileExistsError:
            return False
    return True


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
    make_dirs(final.parent)
    tmp = temp_sibling(final)
    _mkdir(tmp, modes_for(tmp))
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
