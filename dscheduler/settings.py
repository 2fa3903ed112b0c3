"""Defaults, resolved in one place through dask's config system.

The packaged ``dscheduler.yaml`` is merged into ``dask.config`` under the
``dscheduler`` namespace, so dask's own rules give the precedence: an
argument (``override``) beats an environment variable
(``DASK_DSCHEDULER__LEASE__TTL``), which beats a user file
(``~/.config/dask/dscheduler.yaml``), which beats the packaged default.

dask (and its ``dask.config``) is imported, and the packaged defaults merged
in, on the first :func:`get`, not when this module is imported: importing
dask costs a fifth of a second, which a command that reads no setting does
not pay (docs/design.md §4).
"""

from __future__ import annotations

import os
import pwd
import stat
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import UnsafePathError

_DEFAULTS = Path(__file__).with_name("dscheduler.yaml")
_defaults: dict[str, Any] = {}  # the packaged defaults, once merged into dask.config


def get(key: str, override: Any = None) -> Any:
    """The setting ``dscheduler.{key}``, or ``override`` when it is not None."""
    if override is not None:
        return override
    config = dask_config()
    try:
        return config.get(f"dscheduler.{key}")
    except KeyError:
        # A ``dask.config.set`` block begun before the defaults were merged removes, as
        # it ends, the keys it inserted, and the defaults merged under them: those keys
        # held nothing but packaged defaults, so the packaged default is the answer.
        return config.get(f"dscheduler.{key}", config=_defaults)


def dask_config() -> ModuleType:
    """``dask.config``, with the packaged defaults merged in (on the first call)."""
    import dask.config  # a fifth of a second: only when a setting is read

    if not _defaults:
        import yaml

        with _DEFAULTS.open() as f:
            defaults = yaml.safe_load(f)
        dask.config.update_defaults(defaults)
        _defaults.update(defaults)
    elif "dscheduler" not in dask.config.config:
        # a ``dask.config.set`` block begun before the defaults were merged removed the whole
        # namespace as it ended (it deletes the keys it inserted): put the defaults back
        dask.config.update(dask.config.config, _defaults, priority="old")
    return dask.config


def current() -> dict[str, Any]:
    """Every ``dscheduler`` setting as it stands: what is set, over the packaged defaults (for
    handing the driver's settings to workers)."""
    config = dask_config()
    merged: dict[str, Any] = config.merge(_defaults, {"dscheduler": config.config.get(
        "dscheduler", {})})
    return dict(merged["dscheduler"])


def node_local(key: str, fallback: str, override: Any = None) -> Path:
    """A node-local per-user directory setting, made private and checked (:func:`private_dir`).

    ``null`` means ``fallback-{uid}`` under the temp dir, a place every user of the node
    can write first (docs/design.md §15).
    """
    value = get(key, override)
    if value is None:
        value = Path(tempfile.gettempdir()) / f"{fallback}-{os.getuid()}"
    return private_dir(Path(value).expanduser(), setting=key)


def private_dir(path: Path, setting: str | None = None) -> Path:
    """``path``, a directory only this user can write: made with mode 0700 when missing,
    else checked with one ``lstat`` (a real directory, owned by this uid, no group or
    other write); anything else is an :class:`UnsafePathError` naming it and its owner.

    Every per-user directory outside the store goes through here before each use: one
    that another user made first (in a shared ``/tmp``) would let them plant code we run.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return private_dir(path, setting)
    st = os.lstat(path)
    problem = _unsafe(st)
    if problem:
        where = (f"set dscheduler.{setting} (DASK_DSCHEDULER__"
                 f"{setting.upper().replace('.', '__')}=DIR) or TMPDIR to a directory of "
                 "your own" if setting else "use a directory of your own")
        raise UnsafePathError(
            f"refusing to use {path}: {problem} (owner {owner(st.st_uid)}, mode "
            f"{stat.filemode(st.st_mode)}); another user could put code there that we "
            f"would run. Remove it if it is yours to remove, or {where}")
    return path


def owner(uid: int) -> str:
    """A uid as people read it in an error: ``name (uid N)``, or ``uid N`` without a name."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _unsafe(st: os.stat_result) -> str:
    """Why a directory's ``lstat`` makes it unsafe to use as ours; "" when it is safe."""
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if st.st_uid != os.getuid():
        return f"it belongs to another user, not to uid {os.getuid()}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "group or others may write to it"
    return ""
