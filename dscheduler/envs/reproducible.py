"""Making a built venv byte-for-byte reproducible (docs/design.md §6), and fast to rebuild.

``uv venv --relocatable``, ``compileall`` with a fixed prefix and hash-based
invalidation, and mksquashfs's fixed times and owners do most of it; these
functions do the rest: file modes that do not follow the builder's umask,
the timestamps uv writes for local wheels, and a lock text in one order.
:class:`PycCache` keeps compiled bytecode between builds (docs/design.md §14).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..store import atomic

#: The memory mksquashfs may use for its queues and caches.  Left alone it takes up to
#: 25% of the node's RAM and, in practice, about as much as the tree it reads (640 MB
#: for an 800 MB torch env): too much beside a SLURM job's own memory limit.  With
#: 64 MB it runs as fast, with half the page faults, and writes the same bytes.
SQUASH_MEMORY = "64M"


def squash_command(tree: Path, image: Path, level: int) -> list[str | os.PathLike[str]]:
    """mksquashfs of ``tree`` into ``image``: zstd at ``level``, fixed times and owners,
    no xattrs, so that the image's bytes depend only on the tree (docs/design.md §6)."""
    return ["mksquashfs", tree, image, "-noappend", "-no-progress", "-no-xattrs",
            "-comp", "zstd", "-Xcompression-level", str(level), "-mem", SQUASH_MEMORY,
            "-all-time", "0", "-mkfs-time", "0", "-force-uid", "0", "-force-gid", "0"]


@dataclass
class TreeStats:
    files: int = 0
    bytes: int = 0


def normalise_tree(root: Path) -> TreeStats:
    """Fix modes (dirs 0755, files 0755/0644 by their x bit) and count files and bytes.

    mksquashfs keeps modes, which otherwise follow the builder's umask (uv
    even leaves its ``.lock`` at 0666): fixed modes are needed both for a
    byte-identical image and for a store that is not world-writable.
    """
    stats = TreeStats()
    os.chmod(root, 0o755)
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():  # it keeps its own (ignored) mode
                    if not entry.is_dir():  # one to a folder counts as a folder, not a file
                        stats.files += 1
                    continue
                st = entry.stat(follow_symlinks=False)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                    want = 0o755
                else:
                    stats.files += 1
                    if (st.st_mode & 0o170000) != 0o100000:
                        continue  # not a regular file (a fifo, a socket): left as it is
                    stats.bytes += st.st_size
                    want = 0o755 if st.st_mode & 0o111 else 0o644
                if st.st_mode & 0o7777 != want:
                    os.chmod(entry.path, want)
    return stats


def normalise_uv_cache_records(site: Path) -> int:
    """Zero the timestamp uv writes into ``*.dist-info/uv_cache.json``.

    uv records, for packages installed from local files (``--find-links`` to a
    directory), the time it cached them; the same wheels would otherwise give
    a different image on every node.  The file only tells a later ``uv pip
    install`` into this venv whether the local package changed, which never
    happens to a read-only image.  RECORD's hash of the file is updated so the
    installation stays consistent.  Files are replaced, never edited in place:
    uv may have hard-linked them from its cache.
    """
    changed = 0
    for cache_json in site.glob("*.dist-info/uv_cache.json"):
        data = json.loads(cache_json.read_text())
        if data.get("timestamp") in (None, {"secs_since_epoch": 0, "nanos_since_epoch": 0}):
            continue
        data["timestamp"] = {"secs_since_epoch": 0, "nanos_since_epoch": 0}
        body = json.dumps(data, separators=(",", ":")).encode()
        atomic.write_bytes(cache_json, body)
        record = cache_json.parent / "RECORD"
        if record.is_file():
            digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
            rel = f"{cache_json.parent.name}/uv_cache.json"
            # RECORD is CSV (path, hash, size), and a path may hold a comma: quoted then.
            with record.open(newline="") as f:
                rows = [[rel, f"sha256={digest}", str(len(body))] if row[:1] == [rel] else row
                        for row in csv.reader(f)]
            out = io.StringIO()
            csv.writer(out, lineterminator="\n").writerows(rows)
            atomic.write_bytes(record, out.getvalue().encode())
        changed += 1
    return changed


def normalise_lock(text: str) -> list[str]:
    """``uv pip freeze`` output as sorted, stripped lines (comments dropped)."""
    lines = {line.strip() for line in text.splitlines()}
    return sorted((line for line in lines if line and not line.startswith("#")), key=str.lower)


# -- the bytecode cache ----------------------------------------------------------------


@dataclass
class CompileStats:
    """What :class:`PycCache` did for one venv."""

    sources: int = 0  # .py files under lib/
    cached: int = 0  # their .pyc files restored from the cache
    stored: int = 0  # .pyc files newly put into the cache


class PycCache:
    """A node-local cache of compiled bytecode, shared by builds of every env.

    Environments that differ in one package share almost every installed
    file, and compiling them is most of a build (docs/design.md §14).  A
    ``.pyc`` is a function of the interpreter (its magic number and cache
    tag), the compile prefix and invalidation mode, the file's path inside
    the venv (the prefix joined with it is the code's file name) and the
    source's bytes, so one compiled for one env is byte for byte the one
    ``compileall`` would write for another: the image does not depend on
    whether the cache was warm.  Entries are
    ``{root}/{namespace}/{h[:2]}/{h}.pyc``, ``h`` the sha256 of the path and
    the source (``compile_worker.entry_name``); each appears in one ``link``,
    so builders on one node can share the cache, and never changes.  The
    compile workers (``compiling.py``) read and fill it; this class names the
    namespace: the interpreter's tag, magic number and version, the prefix
    and the invalidation mode.
    """

    def __init__(self, root: Path, *, tag: str, magic: str, version: str, prefix: str,
                 mode: str) -> None:
        digest = hashlib.sha256(f"{version}\0{prefix}\0{mode}".encode()).hexdigest()[:16]
        self.dir = root / f"{tag}-{magic}-{digest}"
