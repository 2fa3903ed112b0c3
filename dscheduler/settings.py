"""Defaults, resolved in one place through dask's config system.

The packaged ``dscheduler.yaml`` is merged into ``dask.config`` under the
``dscheduler`` namespace, so dask's own rules give the precedence: an
argument (``override``) beats an environment variable
(``DASK_DSCHEDULER__LEASE__TTL``), which beats a user file
(``~/.config/dask/dscheduler.yaml``), which beats the packaged default.

Until something imports dask, :func:`get` reads the same sources as dask
would (:func:`_without_dask`: its config directories and ``DASK_`` variables,
under the same rules) without importing it: dask costs a fifth of a second,
which ``dscheduler runs`` or ``status`` does not otherwise pay.  Once dask is
loaded (a ``dask.config.set`` block is only possible then), ``dask.config``
answers, with the packaged defaults merged in (docs/design.md §4).
"""

from __future__ import annotations

import ast
import contextlib
import os
import pwd
import site
import stat
import sys
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
    if "dask.config" not in sys.modules and "DASK_INTERNAL_INHERIT_CONFIG" not in os.environ:
        return _without_dask(key)
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
            defaults = yaml.load(f, Loader=_safe_loader(yaml))
        dask.config.update_defaults(defaults)
        _defaults.update(defaults)
    elif "dscheduler" not in dask.config.config:
        # a ``dask.config.set`` block begun before the defaults were merged removed the whole
        # namespace as it ended (it deletes the keys it inserted): put the defaults back
        dask.config.update(dask.config.config, _defaults, priority="old")
    return dask.config


# -- the same answer without importing dask ------------------------------------------------
# Hand-written because dask.config cannot be imported without the whole dask package
# (dask/config.py imports dask.typing, so dask/__init__): these mirror dask.config's
# _get_paths, collect_yaml, collect_env and canonical_name for the one namespace we read;
# tests/test_startup.py holds the answers equal to dask's.

_files: list[dict[str, Any]] = []  # the dscheduler section of each config file, read once
_by_env: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}  # merged, per DASK_ vars


def _without_dask(key: str) -> Any:
    """``dscheduler.{key}`` as dask.config would answer it, were it imported now."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("DASK_")))
    merged = _by_env.get(env)
    if merged is None:
        if not _files:
            _files.extend(_config_files())
        merged = {}
        for source in (*_files, _env_section(env)):
            _update(merged, source)
        _by_env.clear()
        _by_env[env] = merged
    value: Any = merged
    for part in key.split("."):
        try:
            value = value[_canonical(part, value)]
        except (TypeError, KeyError):
            raise KeyError(key) from None
    return value


def _config_files() -> list[dict[str, Any]]:
    """The packaged defaults, then the ``dscheduler`` section of every YAML/JSON file in
    dask's config directories, in dask's order (a later one wins)."""
    import yaml

    dirs = [os.getenv("DASK_ROOT_CONFIG", "/etc/dask"), os.path.join(sys.prefix, "etc", "dask"),
            *[os.path.join(p, "etc", "dask") for p in site.PREFIXES],
            os.path.join(os.path.expanduser("~"), ".config", "dask")]
    if "DASK_CONFIG" in os.environ:
        dirs.append(os.environ["DASK_CONFIG"])
    dirs = list(reversed(list(dict.fromkeys(reversed(dirs)))))  # as dask: last one kept
    files: list[str] = []
    for path in dirs:
        if os.path.isdir(path):
            with contextlib.suppress(OSError):  # unreadable: skipped, as dask does
                files += sorted(os.path.join(path, p) for p in os.listdir(path)
                                if os.path.splitext(p)[1].lower() in (".json", ".yaml", ".yml"))
        elif os.path.exists(path):
            files.append(path)
    with _DEFAULTS.open() as f:
        sections = [yaml.load(f, Loader=_safe_loader(yaml))["dscheduler"]]
    for file in files:
        try:
            with open(file) as f:
                data = yaml.load(f, Loader=_safe_loader(yaml))
        except OSError:
            continue
        if isinstance(data, dict) and isinstance(data.get("dscheduler"), dict):
            sections.append(data["dscheduler"])
        elif data is not None and not isinstance(data, dict):
            raise ValueError(f"A dask config file at {file!r} is malformed - config files "
                             "must have a dict as the top level object")
    return sections


def _safe_loader(yaml: ModuleType) -> Any:
    """PyYAML's safe loader in C when built with libyaml: the same data, 15x faster."""
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _env_section(env: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """``DASK_DSCHEDULER__A__B=v`` as ``{"a": {"b": v}}`` (values as dask interprets them)."""
    out: dict[str, Any] = {}
    for name, text in env:
        path = name[5:].lower().replace("__", ".").split(".")
        if path[0] != "dscheduler" or len(path) < 2:
            continue
        try:
            value = ast.literal_eval(text)
        except (SyntaxError, ValueError):
            value = {"none": None, "null": None, "false": False, "true": True}.get(
                text.lower(), text)
        node = out
        for part in path[1:-1]:
            part = _canonical(part, node)
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[_canonical(path[-1], node)] = value
    return out


def _canonical(key: str, config: Any) -> str:
    """dask's canonical_name: ``a-b`` and ``a_b`` are one key, the one given first."""
    if not isinstance(config, dict) or key in config:
        return key
    other = key.replace("_", "-") if "_" in key else key.replace("-", "_")
    return other if other in config else key


def _update(old: dict[str, Any], new: dict[str, Any]) -> None:
    """dask.config.update(old, new): nested mappings merged, ``new`` winning."""
    for key, value in new.items():
        key = _canonical(key, old)
        if isinstance(value, dict):
            if not isinstance(old.get(key), dict):
                old[key] = {}
            _update(old[key], value)
        else:
            old[key] = value


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
