"""``ds.File``: a RunConfig field that names a file or a directory, hashed by content.

Annotate a field ``ds.File`` (also inside unions and containers: ``ds.File | dict``,
``list[ds.File]``); pydantic turns its value into a :class:`HashedPath`, a ``Path``
whose identity (docs/design.md §2) is ``{"\\u0000file": sha256 of the bytes}`` for a
file and ``{"\\u0000dir": digest("files", {relative POSIX name: sha256})}`` for a
directory (its regular files, at any depth; links to directories are not followed).
So an edit moves the id and an identical copy elsewhere does not.  A file's sha256 is
read once per process: :func:`file_digest` keeps it by (device, inode, size, mtime_ns).
A path that names nothing fails when the config is hashed, naming the field and path.
A relative path is taken relative to the validation context's ``FILES_BASE`` when one
is given (an experiment file's folder), else to the working directory.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path, PosixPath
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ValidationInfo

from .. import identity
from ..errors import IdentityError

FILE_TAG = "\u0000file"
DIR_TAG = "\u0000dir"

_file_cache: dict[tuple[int, int, int, int], str] = {}


def file_digest(path: Path) -> str | None:
    """sha256 of a regular file's bytes (None if ``path`` is not one), kept by
    (device, inode, size, mtime_ns): a file rewritten with the same size within the
    filesystem's mtime resolution keeps its digest in this process."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    cache_key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    found = _file_cache.get(cache_key)
    if found is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        found = _file_cache[cache_key] = h.hexdigest()
    return found


def tree_digest(root: Path) -> str:
    """Digest of a directory: its regular files' relative POSIX names and sha256s."""
    files: dict[str, str] = {}
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in names:
            path = Path(folder, name)
            found = file_digest(path)
            if found is not None:  # sockets, fifos and broken links hold no content
                files[path.relative_to(root).as_posix()] = found
    return identity.digest("files", files)


def content_identity(path: Path) -> dict[str, str] | None:
    """``{FILE_TAG: sha256}``, ``{DIR_TAG: digest}``, or None if ``path`` names nothing."""
    found = file_digest(path)
    if found is not None:
        return {FILE_TAG: found}
    if path.is_dir():
        return {DIR_TAG: tree_digest(path)}
    return None


class HashedPath(PosixPath):
    """The value of a ``ds.File`` field: a Path identified by its content.

    The content is read when the config is hashed, once per instance: the digest
    kept is the one its ids were made of (and its record shows).
    """

    _ds_content: dict[str, str] | None = None

    def __ds_identity__(self) -> dict[str, str]:
        if self._ds_content is None:
            found = content_identity(self)
            if found is None:
                raise IdentityError("", (
                    f"no file or directory {str(self)!r} (absolute: {os.path.abspath(self)}); "
                    "a ds.File field is hashed by its content: create it, or correct the path"
                ))
            self._ds_content = found
        return self._ds_content

    def content_digest(self) -> str:
        """The sha256 (file) or tree digest (directory) its identity holds."""
        return next(iter(self.__ds_identity__().values()))


#: Validation context key: the folder relative ``ds.File`` paths are taken from.
FILES_BASE = "dscheduler.files_base"


def _hashed(value: Path, info: ValidationInfo) -> HashedPath:
    if isinstance(value, HashedPath):
        return value
    base = (info.context or {}).get(FILES_BASE)
    if base is not None and not value.is_absolute():
        value = Path(os.path.normpath(Path(base) / value))
    return HashedPath(value)


#: A RunConfig field naming a file or directory, hashed by content (module docstring).
File = Annotated[Path, AfterValidator(_hashed)]


def hashed_paths(value: Any, prefix: str) -> list[tuple[str, HashedPath]]:
    """(dotted name, value) of every ``ds.File`` value inside ``value``: containers and
    the fields of RunConfigs (any pydantic model) are searched."""
    if isinstance(value, HashedPath):
        return [(prefix, value)]
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in hashed_paths(v, f"{prefix}[{i}]")]
    elif isinstance(value, BaseModel):
        items = value.__dict__.items()
    else:
        return []
    return [p for k, v in items for p in hashed_paths(v, f"{prefix}.{k}" if prefix else str(k))]
