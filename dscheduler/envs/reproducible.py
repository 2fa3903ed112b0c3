"""Making a built venv byte-for-byte reproducible (docs/design.md §6).

``uv venv --relocatable``, ``compileall`` with a fixed prefix and hash-based
invalidation, and mksquashfs's fixed times and owners do most of it; these
functions do the rest: file modes that do not follow the builder's umask,
the timestamps uv writes for local wheels, and a lock text in one order.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..store import atomic


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
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not os.path.islink(path) and st.st_mode & 0o7777 != 0o755:
                os.chmod(path, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            stats.files += 1
            if (st.st_mode & 0o170000) != 0o100000:
                continue  # symlinks keep their own (ignored) mode
            stats.bytes += st.st_size
            want = 0o755 if st.st_mode & 0o111 else 0o644
            if st.st_mode & 0o7777 != want:
                os.chmod(path, want)
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
            lines = [
                f"{rel},sha256={digest},{len(body)}" if line.split(",")[0] == rel else line
                for line in record.read_text().splitlines()
            ]
            atomic.write_bytes(record, ("\n".join(lines) + "\n").encode())
        changed += 1
    return changed


def normalise_lock(text: str) -> list[str]:
    """``uv pip freeze`` output as sorted, stripped lines (comments dropped)."""
    lines = {line.strip() for line in text.splitlines()}
    return sorted((line for line in lines if line and not line.startswith("#")), key=str.lower)
