"""Loading user code named in experiment files: ``module:Name`` or ``file.py:Name``.

A file loaded by path becomes the module ``_ds_recipe_{stem}_{digest of its
path}``, loaded once per process: an experiment's ``model:`` and
``recipe:`` often name the same file, and two copies would make two
different RunConfig classes.  A file that is already imported under its
own module name is reused as well.

Code named in a store is another matter (docs/design.md §15 Trust model):
:func:`module_files` says which files importing a module would run, without
running them, so that a caller can check them first (:func:`own_file`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import stat
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from .. import settings
from ..errors import ConfigError, DSchedulerError, UnsafePathError

#: Prefix of the names of modules loaded from a file path.
BY_PATH_PREFIX = "_ds_recipe_"


def load_file(path: Path) -> ModuleType:
    """The module of the Python file ``path``, loaded once per process."""
    loaded = loaded_module(None, str(path))
    if loaded is not None:
        return loaded
    resolved = path.resolve()
    tag = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    name = f"{BY_PATH_PREFIX}{path.stem}_{tag}"
    module_spec = importlib.util.spec_from_file_location(name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"{path} cannot be loaded as Python code")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise ConfigError(f"cannot load {path}: {type(err).__name__}: {err}") from err
    except BaseException:
        del sys.modules[name]
        raise
    return module


def import_object(spec: str, base: Path | None = None) -> Any:
    """``module:attr`` or ``path/to/file.py:attr`` (relative to ``base`` first) -> the object."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise ConfigError(f"{spec!r} must look like 'package.module:Name' or 'file.py:Name'")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_absolute() and base is not None and (base / path).exists():
            path = base / path
        if not path.exists():
            raise ConfigError(f"{spec!r}: no file {path}")
        module = load_file(path)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ConfigError(f"{spec!r}: cannot import {module_name!r} ({err})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{spec!r}: {module_name} has no attribute {attr!r}") from None


def split_spec(spec: str) -> tuple[Path, str | None]:
    """``file.py:name`` -> (file, name); a bare path -> (path, None)."""
    file, sep, name = spec.rpartition(":") if spec.count(":") == 1 else (spec, "", "")
    if not sep:
        return Path(spec), None
    return Path(file), name


def file_function(file: Path, names: tuple[str, ...]) -> Any:
    """The first of ``names`` that the Python file ``file`` defines as a function."""
    module = load_file(file)
    for name in names:
        fn = getattr(module, name, None)
        if callable(fn):
            return fn
    if len(names) == 1:
        raise ConfigError(f"{file} has no function {names[0]}()")
    raise ConfigError(f"{file} has neither {'() nor '.join(names)}(); name one with --recipe")


def call(fn: Any, where: str, *args: Any) -> Any:
    """Call user code (a recipe); its own failure becomes a ConfigError naming it."""
    try:
        return fn(*args)
    except DSchedulerError:
        raise
    except Exception as err:
        raise ConfigError(f"{where}: {getattr(fn, '__name__', 'recipe')}() raised "
                          f"{type(err).__name__}: {err}") from err


def loaded_module(name: str | None, file: str | None) -> ModuleType | None:
    """The module already imported as ``name``, else from ``file``; None: not loaded."""
    module = sys.modules.get(name) if name else None
    if module is not None or not file:
        return module
    resolved = Path(file).resolve()
    names = {Path(file).name, resolved.name}
    for module in list(sys.modules.values()):
        found = getattr(module, "__file__", None)
        # names first: resolving every module's path took 30 ms of a no-op `dscheduler run`
        if found and os.path.basename(found) in names and Path(found).resolve() == resolved:
            return module
    return None


def module_files(name: str, search: list[str] | None = None) -> list[Path] | None:
    """The files ``import name`` would run (packages' ``__init__`` first), found by the
    import system's finders without running anything; None when it finds no module.
    ``search``: where the top-level package is looked for (default ``sys.path``)."""
    files: list[Path] = []
    parts = name.split(".")
    locations: Any = search
    for depth in range(1, len(parts) + 1):
        full = ".".join(parts[:depth])
        module = sys.modules.get(full)
        if module is not None and search is None:
            locations = getattr(module, "__path__", None)
        else:
            # Beside a given directory, only the path finder: others (editable installs)
            # would find the name elsewhere.
            finders = sys.meta_path if search is None else [importlib.machinery.PathFinder]
            spec = next((found for finder in finders
                         if (found := _find(finder, full, locations)) is not None), None)
            if spec is None:
                return None
            if spec.has_location and spec.origin:
                files.append(Path(spec.origin))
            locations = spec.submodule_search_locations
        if depth < len(parts) and locations is None:
            return None  # a module, not a package: it has no submodules
    return files


def _find(finder: Any, name: str, locations: Any) -> Any:
    find_spec = getattr(finder, "find_spec", None)
    return find_spec(name, locations) if find_spec is not None else None


def own_file(path: Path) -> Path:
    """``path`` resolved, once checked to be the user's own code: owned by this user or
    root, writable by no one else, in a directory others cannot write.

    Raises
    ------
    UnsafePathError
        Anything else: the message names the file, its owner and mode.
    """
    resolved = path.resolve()
    try:
        info, folder = resolved.stat(), resolved.parent.stat()
    except OSError as err:
        raise UnsafePathError(f"cannot check the code file {path}: {err}") from None
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "is not a regular file"
    elif info.st_uid not in (os.getuid(), 0):
        problem = (f"is owned by {settings.owner(info.st_uid)}, not by you "
                   f"({settings.owner(os.getuid())})")
    elif info.st_mode & 0o022:
        problem = f"is writable by others (mode {stat.S_IMODE(info.st_mode):04o})"
    elif folder.st_mode & 0o002:
        problem = (f"is in {resolved.parent}, a directory everyone can write "
                   f"(mode {stat.S_IMODE(folder.st_mode):04o})")
    if problem:
        raise UnsafePathError(
            f"not loading {resolved}: it {problem}; dscheduler runs code from your own files "
            "only (owned by you or root, writable by no one else, docs/design.md §15 Trust "
            "model). If you trust it, copy it into your project, or make it yours "
            "(chown, chmod go-w)")
    return resolved


