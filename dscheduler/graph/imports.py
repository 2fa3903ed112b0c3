"""Loading user code named in experiment files: ``module:Name`` or ``file.py:Name``.

A file loaded by path becomes the module ``_ds_recipe_{stem}_{digest of its
path}``, loaded once per process: an experiment's ``model:`` and
``recipe:`` often name the same file, and two copies would make two
different RunConfig classes.  A file that is already imported under its
own module name is reused as well.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import ConfigError, DSchedulerError

#: Prefix of the names of modules loaded from a file path.
BY_PATH_PREFIX = "_ds_recipe_"


def load_file(path: Path) -> ModuleType:
    """The module of the Python file ``path``, loaded once per process."""
    resolved = path.resolve()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve() == resolved:
            return module
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
