"""What travels from the driver to a worker and into an env: cloudpickles.

Functions and arguments travel as cloudpickles made by the driver
(:func:`dumps`).  Code of modules that are not installed packages (a script,
a notebook, a test module, a recipe file loaded by path) is pickled by
value: workers are processes of their own that may not import it (they
never import the driver's script), and an env has only its requirements.
Functions of installed packages travel by name (:class:`FunctionRef`).
A task's function is pickled once per submission and shared by its nodes;
a worker unpickles it once (:func:`load_function`).  Upstream values travel
as :class:`Ref`, replaced by the stored value on the worker.
"""

from __future__ import annotations

import importlib
import io
import os
import sys
import sysconfig
import threading
import types
from collections import ChainMap, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import cloudpickle

from ..store import NodePaths


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


def _installed(module: ModuleType) -> bool:
    """Whether ``module`` comes from the standard library or an installed package."""
    file = getattr(module, "__file__", None)
    return not file or os.path.realpath(file).startswith(_INSTALLED)


_user: dict[str, bool] = {}  # module name -> whether it is user code
_user_list: tuple[int, list[ModuleType]] = (-1, [])


def _is_user(name: str, module: ModuleType) -> bool:
    found = _user.get(name)
    if found is None:
        found = _user[name] = (
            name != "__main__" and name.split(".")[0] != "dscheduler"
            and getattr(module, "__file__", None) is not None and not _installed(module)
        )
    return found


def user_modules() -> list[ModuleType]:
    """Loaded modules that are user code: not the standard library, not installed, not
    dscheduler; ``__main__`` is left to cloudpickle, which pickles it by value already.

    All of them, not only the task's own: a function or class pickled by value
    refers to others (a base class, a helper) that must travel by value too.
    """
    global _user_list
    count = len(sys.modules)
    if _user_list[0] != count:
        _user_list = (count, [m for n, m in list(sys.modules.items())
                              if m is not None and _is_user(n, m)])
    return _user_list[1]


@dataclass(frozen=True)
class FunctionRef:
    """A task's function named by module and attribute, for an installed package.

    ``@ds.task`` replaces the module attribute with the Task, so cloudpickle,
    finding ``module.name`` is not the bare function, would pickle the
    function by value, and tracebacks would say ``<dynamic-code>``.
    """

    module: str
    qualname: str

    def resolve(self) -> Any:
        obj: Any = importlib.import_module(self.module)
        for part in self.qualname.split("."):
            obj = getattr(obj, part)
        return getattr(obj, "fn", obj)


def function_for(task: Any) -> Any:
    """What the driver sends for ``task``: a FunctionRef for an installed package's function."""
    fn = task.fn
    module_name, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    module = sys.modules.get(module_name or "")
    if module is None or module_name == "__main__" or "<" in qualname or not _installed(module):
        return fn
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if getattr(obj, "fn", None) is fn:
        return FunctionRef(module_name or "", qualname)
    return fn


def _code_reduce(code: types.CodeType) -> Any:
    """cloudpickle's reduction of a code object, with the code's real file name.

    cloudpickle writes ``<dynamic-code>`` instead, to make payloads independent
    of where a function was defined.  dscheduler pickles all user code by
    value, so that would leave a task's traceback without a single file name;
    the real one lets it show the user's own source lines.
    """
    rebuild, args = _cloudpickle_code_reduce(code)
    return rebuild, tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)


# No public API gives cloudpickle's code reducer; it is this dispatch entry.
_cloudpickle_code_reduce = cloudpickle.Pickler.dispatch_table[types.CodeType]


class SourcePickler(cloudpickle.Pickler):
    """cloudpickle that keeps code objects' file names (see :func:`_code_reduce`)."""

    dispatch_table = ChainMap({types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table)


def dumps(obj: Any, *, extra: tuple[ModuleType, ...] = (),
          pickler: type[cloudpickle.Pickler] = SourcePickler) -> bytes:
    """cloudpickle ``obj``, user code (:func:`user_modules`) and ``extra`` by value.

    ``pickler``: a subclass of :class:`SourcePickler` to use instead (one that
    overrides how some objects are reduced).
    """
    with _pickle_lock:
        registered = []
        for module in [*user_modules(), *extra]:
            try:
                cloudpickle.register_pickle_by_value(module)
                registered.append(module)
            except ValueError:
                pass  # registered already (by the caller, or it is a package's submodule)
        try:
            buffer = io.BytesIO()
            pickler(buffer, protocol=4).dump(obj)
            return buffer.getvalue()
        finally:
            for module in registered:
                cloudpickle.unregister_pickle_by_value(module)


_functions: OrderedDict[bytes, Any] = OrderedDict()
_functions_lock = threading.Lock()
FUNCTION_CACHE = 64


def load_function(data: bytes) -> Any:
    """The function in ``data`` (from :func:`dumps` of a task's function), unpickled once.

    A worker runs many nodes of one task: the same bytes unpickle to the same
    function, kept for the last few distinct functions.
    """
    with _functions_lock:
        fn = _functions.get(data)
        if fn is not None:
            _functions.move_to_end(data)
            return fn
    fn = cloudpickle.loads(data)
    if isinstance(fn, FunctionRef):
        fn = fn.resolve()
    with _functions_lock:
        _functions[data] = fn
        while len(_functions) > FUNCTION_CACHE:
            _functions.popitem(last=False)
    return fn


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
