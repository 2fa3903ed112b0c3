"""Atomic writes: a finished temporary sibling, then one rename.

A reader on any host sees either the old file or the new one, never a part.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def temp_sibling(path: Path, suffix: str = ".partial") -> Path:
    """A unique name beside ``path`` for a file or directory in the making."""
    # os.urandom, not uuid4: the same 48 random bits without building a UUID
    # object, which was a tenth of a tiny task's time on a worker.
    return path.with_name(f".{path.name}.{os.urandom(6).hex()}{suffix}")


def write_bytes(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically.

    ``durable=False`` skips the fsync: readers still see the old file or the
    new one, never a part, but a machine crash may lose the write.  Worth it
    for files rewritten many times a second (task records): concurrent
    fsyncs serialise on the filesystem journal.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def json_text(obj: Any) -> str:
    """The text of a record people read: indented, sorted keys, a final newline."""
    return json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n"


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    write_bytes(path, json_text(obj).encode())


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when there is no such file."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None


def create_once(path: Path, data: bytes, *, durable: bool = True) -> bool:
    """Create ``path`` with ``data`` unless it exists; True when this call created it.

    Uses ``os.link`` of a finished temporary file: the name appears complete or
    not at all, and link fails if the name exists, also on NFS.  ``durable``:
    as for :func:`write_bytes`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def publish_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; rename it into place on success.

    If ``final`` already exists when the work is done it is replaced only when
    it is a directory we may remove; on failure the temporary directory is
    deleted and nothing is visible.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            # Move the old one aside first: rename cannot replace a non-empty dir.
            old = temp_sibling(final, ".old")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
