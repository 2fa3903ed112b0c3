"""slowfs: a FUSE passthrough over a directory that behaves like a network filesystem.

    python tests/slowfs.py BACKING MOUNTPOINT [--delay-ms 1] [--attr-timeout 3]
        [--entry-timeout S] [--negative-timeout S] [--page-cache]

Every metadata operation (getattr/lookup, readdir, open, create, mkdir, rename, unlink,
rmdir, link, symlink, readlink, chmod, chown, utimens, truncate, statfs, fsync) sleeps
``--delay-ms`` first, as one round trip to an NFS, Lustre or GPFS server would; data
reads and writes do not.  The kernel caches what an NFS client caches (see ``options``):
attributes, names and missing names, for a few seconds (directory listings are not cached:
libfuse 3.14's high-level API does not pass FOPEN_CACHE_DIR on).  Two mounts
of one backing directory are two "hosts": each sees the other's changes only once its
caches expire.  O_EXCL create, rename, link and fsync pass straight to the backing
filesystem, so they stay atomic; files and directories are owned by the calling uid,
and the kernel checks the real modes (``default_permissions``, ``allow_other``).
It runs in the foreground until unmounted (``fusermount3 -u``), SIGTERM, or its parent
exits; ``auto_unmount`` unmounts it even after kill -9.  Tests use it through
``helpers.slow_mount``; ``bench/slowfs.py`` measures a store on it.
"""

from __future__ import annotations

import argparse
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import mfusepy as fuse

F = TypeVar("F", bound=Callable[..., Any])

STAT_FIELDS = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks",
               "st_blksize", "st_rdev")


def round_trip(method: F) -> F:
    """The method waits one server round trip before it acts."""
    def slow(self: SlowFS, *args: Any) -> Any:
        if self.delay:
            time.sleep(self.delay)
        return method(self, *args)
    slow.__name__ = method.__name__
    return slow  # type: ignore[return-value]


def kind(entry: os.DirEntry[str]) -> int:
    """The file type bits of a directory entry, from its d_type (no stat)."""
    if entry.is_symlink():
        return stat.S_IFLNK
    if entry.is_dir(follow_symlinks=False):
        return stat.S_IFDIR
    return stat.S_IFREG if entry.is_file(follow_symlinks=False) else 0


class SlowFS(fuse.Operations):
    """Passthrough of BACKING with a delay per metadata operation."""

    use_ns = True  # times as integer nanoseconds: what os.stat and os.utime take

    def __init__(self, backing: str, delay: float) -> None:
        self.root = os.path.realpath(backing)
        self.delay = delay

    def _full(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _own(self, full: str) -> None:
        """Give a new file the caller's uid, and its gid unless a setgid parent chose one."""
        uid, gid, _ = fuse.fuse_get_context()
        parent = os.stat(os.path.dirname(full))
        os.lchown(full, uid, -1 if parent.st_mode & stat.S_ISGID else gid)

    # -- attributes --------------------------------------------------------------------

    @round_trip
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        st = os.fstat(fh.fh) if fh is not None else os.lstat(self._full(path))
        attrs = {name: getattr(st, name) for name in STAT_FIELDS}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return attrs

    @round_trip
    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._full(path), mode)
        return 0

    @round_trip
    def chown(self, path: str, uid: int, gid: int) -> int:
        os.lchown(self._full(path), uid, gid)
        return 0

    @round_trip
    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        full = self._full(path)
        if times is None:
            os.utime(full, follow_symlinks=False)
        else:
            os.utime(full, ns=times, follow_symlinks=False)
        return 0

    @round_trip
    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        if fh is not None:
            os.ftruncate(fh.fh, length)
        else:
            os.truncate(self._full(path), length)
        return 0

    @round_trip
    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._full(path))
        return {name: getattr(st, name) for name in (
            "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
            "f_favail", "f_flag", "f_namemax")}

    # -- names -------------------------------------------------------------------------

    @round_trip
    def readlink(self, path: str) -> str:
        return os.readlink(self._full(path))

    @round_trip
    def mkdir(self, path: str, mode: int) -> int:
        full = self._full(path)
        os.mkdir(full, mode)
        self._own(full)
        return 0

    @round_trip
    def rmdir(self, path: str) -> int:
        os.rmdir(self._full(path))
        return 0

    @round_trip
    def unlink(self, path: str) -> int:
        os.unlink(self._full(path))
        return 0

    @round_trip
    def symlink(self, target: str, source: str) -> int:
        """Make the link ``target`` with content ``source`` (mfusepy's names)."""
        full = self._full(target)
        os.symlink(source, full)
        self._own(full)
        return 0

    @round_trip
    def link(self, target: str, source: str) -> int:
        """Make the hard link ``target`` to the existing ``source`` (mfusepy's names)."""
        os.link(self._full(source), self._full(target))
        return 0

    @round_trip
    def rename(self, old: str, new: str) -> int:
        os.rename(self._full(old), self._full(new))
        return 0

    # -- files -------------------------------------------------------------------------

    @round_trip
    def open(self, path: str, fi: Any) -> int:
        fi.fh = os.open(self._full(path), fi.flags)
        fi.direct_io = self.direct_io
        return 0

    @round_trip
    def create(self, path: str, mode: int, fi: Any) -> int:
        full = self._full(path)
        fi.fh = os.open(full, fi.flags | os.O_CREAT, mode)  # O_EXCL passes through in flags
        fi.direct_io = self.direct_io
        self._own(full)
        return 0

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        return os.pread(fi.fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        return os.pwrite(fi.fh, data, offset)

    def flush(self, path: str, fi: Any) -> int:
        return 0

    def release(self, path: str, fi: Any) -> int:
        os.close(fi.fh)
        return 0

    @round_trip
    def fsync(self, path: str, datasync: int, fi: Any) -> int:
        (os.fdatasync if datasync else os.fsync)(fi.fh)
        return 0

    # -- directories -------------------------------------------------------------------

    def opendir(self, path: str) -> int:
        return 0

    @round_trip
    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        # Each name with its inode number: with use_ino an entry of inode 0 is one that
        # readdir(3) skips.
        full = self._full(path)
        rows = [(name, {"st_ino": st.st_ino, "st_mode": st.st_mode}, 0) for name, st in
                ((".", os.lstat(full)), ("..", os.lstat(os.path.dirname(full))))]
        with os.scandir(full) as entries:
            rows += [(e.name, {"st_ino": e.inode(), "st_mode": kind(e)}, 0) for e in entries]
        return rows

    def releasedir(self, path: str, fh: int) -> int:
        return 0

    direct_io = 1


def options(args: argparse.Namespace) -> dict[str, Any]:
    """libfuse's own mount options; the kernel keeps the caches, nothing here does.

    attr_timeout: how long the kernel trusts a file's attributes (size, mtime, mode), as
    NFS's acregmin; entry_timeout: how long it trusts a name found (its dentry);
    negative_timeout: how long it trusts a name found missing (NFS lookupcache=all).
    Without --page-cache every open file is FOPEN_DIRECT_IO (set in open/create): every read
    reaches the backing file, none is served from pages cached before the open, as NFS's
    close-to-open gives (with --page-cache this kernel's FUSE also gave whole new files).
    """
    return {
        "foreground": True,
        "fsname": f"slowfs:{args.backing}",
        "subtype": "slowfs",
        "attr_timeout": args.attr_timeout,
        "entry_timeout": args.attr_timeout if args.entry_timeout is None else args.entry_timeout,
        "negative_timeout": (args.attr_timeout if args.negative_timeout is None
                             else args.negative_timeout),
        "default_permissions": True,  # the kernel checks the real modes for every uid
        "allow_other": True,  # uids other than the mounter's (root) may enter
        "use_ino": True,  # the backing inode numbers: hard links look like hard links
        "hard_remove": True,  # an open file unlinked goes away, no .fuse_hidden file
        "auto_unmount": True,  # fusermount3 unmounts when this process dies, even kill -9
    }


def watch_parent(parent: int) -> None:
    """Stop (SIGTERM: libfuse unmounts and returns) once ``parent`` is gone."""
    def watch() -> None:
        while True:
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.5)
    threading.Thread(target=watch, daemon=True, name="slowfs-parent-watch").start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backing")
    parser.add_argument("mountpoint")
    parser.add_argument("--delay-ms", type=float, default=1.0,
                        help="sleep before each metadata operation (default 1 ms)")
    parser.add_argument("--attr-timeout", type=float, default=3.0,
                        help="seconds the kernel caches attributes (default 3, NFS's acregmin)")
    parser.add_argument("--entry-timeout", type=float, default=None,
                        help="seconds it caches a name found (default: --attr-timeout)")
    parser.add_argument("--negative-timeout", type=float, default=None,
                        help="seconds it caches a name found missing (default: --attr-timeout)")
    parser.add_argument("--page-cache", action="store_true",
                        help="read through the page cache (a read stops at a cached size)")
    parser.add_argument("--parent-pid", type=int, default=os.getppid(),
                        help="unmount and exit when this process is gone (default: parent)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.backing):
        parser.error(f"backing directory {args.backing} does not exist: create it first")
    os.umask(0)  # the kernel already applied the caller's umask to every mode it sends
    ops = SlowFS(args.backing, args.delay_ms / 1000)
    ops.direct_io = 0 if args.page_cache else 1
    watch_parent(args.parent_pid)
    # The fusermount3 that auto_unmount leaves running must outlive this process when the
    # tests' sweep kills it (kill -9 of everything tagged DSCHEDULER_TEST_SPAWNED_BY): it
    # is what unmounts then.  It exits by itself once it has.
    os.environ.pop("DSCHEDULER_TEST_SPAWNED_BY", None)
    try:
        fuse.FUSE(ops, args.mountpoint, raw_fi=True, **options(args))
    except RuntimeError as err:
        if str(err) != "8":  # libfuse's "loop ended": a signal (SIGTERM) ends it that way too
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main())

