"""What travels from the driver to a worker and into an env: cloudpickles.

Functions and arguments travel as a cloudpickle made by the driver
(:func:`dumps`): modules that are not installed packages (a script, a
notebook, a test module, a recipe file loaded by path) are pickled by value,
so neither a worker nor an env needs to import them.  Upstream values travel
as :class:`Ref`, replaced by the stored value on the worker.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
import sysconfig
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import cloudpickle

from .store import NodePaths


@dataclass(frozen=True)
class Ref:
    """Stands for an upstream node's value inside a spec's arguments."""

    name: str
    key: str
    paths: NodePaths



_pickle_lock = threading.Lock()
_INSTALLED = tuple(
    os.path.realpath(p) + os.sep
    for p in {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
)


_importable: dict[str, bool] = {}


def _is_importable(module_name: str) -> bool:
    """Whether another process with this sys.path can import the module by its name.

    Not so for a recipe file loaded by path under a made-up name.
    """
    found = _importable.get(module_name)
    if found is None:
        top = module_name.partition(".")[0]
        found = _importable[module_name] = (
            importlib.machinery.PathFinder.find_spec(top) is not None
        )
    return found


def _by_value(module_name: str, for_env: bool) -> ModuleType | None:
    """The module to pickle by value, or None for by reference.

    For an env, all user code (anything not an installed package): the env
    has only its requirements.  For a worker of the driver's environment,
    only modules it could not import by name: by reference keeps the real
    file names in tracebacks (cloudpickle's by-value code says <dynamic-code>).
    """
    module = sys.modules.get(module_name)
    if module is None or module_name == "__main__":
        return None  # cloudpickle already pickles __main__ by value
    file = getattr(module, "__file__", None)
    if not file or os.path.realpath(file).startswith(_INSTALLED):
        return None
    if module_name.split(".")[0] == "dscheduler":
        return None
    if not for_env and _is_importable(module_name):
        return None
    return module


def _modules_of(obj: Any, out: set[str]) -> None:
    """Modules of the function and of the argument objects a pickle will reference."""
    if isinstance(obj, list | tuple | set | frozenset):
        for item in obj:
            _modules_of(item, out)
    elif isinstance(obj, dict):
        for item in obj.values():
            _modules_of(item, out)
    elif not isinstance(obj, str | int | float | bool | type(None) | Ref):
        out.add(getattr(obj, "__module__", None) or type(obj).__module__)


@dataclass(frozen=True)
class FunctionRef:
    """A task's function named by module and attribute, for workers that can import it.

    ``@ds.task`` replaces the module attribute with the Task, so cloudpickle,
    finding ``module.name`` is not the bare function, would pickle the
    function by value, and tracebacks would say ``<dynamic-code>``.
    """

    module: str
    qualname: str

    def resolve(self) -> Any:
        import importlib

        obj: Any = importlib.import_module(self.module)
        for part in self.qualname.split("."):
            obj = getattr(obj, part)
        return getattr(obj, "fn", obj)


def function_for(task: Any) -> Any:
    """What the driver sends for ``task``: a FunctionRef when workers can import it."""
    fn = task.fn
    module_name, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    module = sys.modules.get(module_name or "")
    if module is None or module_name == "__main__" or "<" in qualname:
        return fn
    if not _is_importable(module_name or ""):
        return fn
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if getattr(obj, "fn", None) is fn:
        return FunctionRef(module_name or "", qualname)
    return fn


def dumps(obj: Any, *, for_env: bool = False, extra: tuple[ModuleType, ...] = ()) -> bytes:
    """cloudpickle ``obj``, user modules by value as :func:`_by_value` says."""
    names: set[str] = set()
    _modules_of(obj, names)
    modules = [m for m in (_by_value(n, for_env) for n in sorted(names)) if m is not None]
    with _pickle_lock:
        registered = []
        for module in [*modules, *extra]:
            try:
                cloudpickle.register_pickle_by_value(module)
                registered.append(module)
            except ValueError:
                pass  # registered already (by the caller, or it is a package's submodule)
        try:
            return cloudpickle.dumps(obj, protocol=4)
        finally:
            for module in registered:
                cloudpickle.unregister_pickle_by_value(module)


def map_nested(value: Any, fn: Callable[[Any], Any]) -> Any:
    """``value`` with ``fn`` applied to everything inside its lists, tuples and dicts.

    Node arguments may nest upstream nodes and configs in containers; the
    driver (nodes -> Refs), the worker (Refs -> values) and the env call
    (RunConfigs -> views) each rewrite them with this one walk.
    """
    if isinstance(value, list):
        return [map_nested(v, fn) for v in value]
    if isinstance(value, tuple):
        return tuple(map_nested(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: map_nested(v, fn) for k, v in value.items()}
    return fn(value)
