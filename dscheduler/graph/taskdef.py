"""What a task is: its function, name, version, where it is defined, its options.

:class:`TaskDef` is what a :class:`~dscheduler.graph.node.Node` reads of its
task; :class:`~dscheduler.graph.task.Task` adds the call that makes a node.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, ParamSpec, Self, TypeVar

from ..errors import ConfigError
from ..store import check_name
from .imports import BY_PATH_PREFIX
from .options import TaskOptions, check_options

P = ParamSpec("P")
R = TypeVar("R")


def function_location(fn: Callable[..., Any]) -> str:
    """Where ``fn`` is defined, as part of its task's identity: ``module:qualname``.

    Functions of a script run as ``__main__`` or of a file loaded by path
    (pickled by value) are named by the file's name, not by a module name
    that depends on how the file was run; a notebook's by ``__main__``.
    """
    module_name = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", "?")
    if module_name == "__main__" or module_name.startswith(BY_PATH_PREFIX):
        file = getattr(sys.modules.get(module_name), "__file__", None)
        module_name = Path(file).name if file else "__main__"
    return f"{module_name}:{qualname}"


class TaskDef(Generic[P, R]):
    """A function made lazy (:class:`~dscheduler.graph.task.Task` makes its calls nodes).

    ``name`` names its outputs (``{task}.json``, ``{task}.zarr``) and its Dask
    keys; ``version`` is how a user says its results changed; ``location``
    (:func:`function_location`) is where its function is defined.  All three
    are part of every node's key.
    """

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        version: str = "0",
        name: str | None = None,
        case: str | None = None,
        options: TaskOptions | None = None,
    ) -> None:
        self.fn = fn
        self.name: str = name or str(getattr(fn, "__name__", ""))
        try:
            check_name(self.name, "task name")
        except ConfigError as err:
            raise ConfigError(f"{err}; give the task a name: @ds.task(name='...')") from None
        if not isinstance(version, str | int):
            raise ConfigError(f"task {self.name!r}: version={version!r} must be a str")
        self.version = str(version)
        self.signature = inspect.signature(fn)
        params = list(self.signature.parameters.values())
        if case is not None and case not in self.signature.parameters:
            raise ConfigError(
                f"task {self.name!r}: case={case!r} is not a parameter of {self.name}; "
                f"its parameters are {[p.name for p in params]}"
            )
        self.case = case
        self.location = function_location(fn)
        self.options_ = options or TaskOptions()
        # Positional-only fast path: binding by zip is far cheaper than
        # Signature.bind (docs/benchmarks.md), and node creation is on the planning hot path.
        simple = all(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params
        )
        self._names = tuple(p.name for p in params) if simple else None
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<ds.task {self.name} version={self.version!r}>"

    def options(self, **options: Any) -> Self:
        """A copy with other options (env, resources, retries, timeout, cache, priority)."""
        checked = check_options(self.name, options)
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.options_ = dataclasses.replace(self.options_, **checked)
        return new

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = self._names
        if names is not None and not kwargs and len(args) == len(names):
            return dict(zip(names, args, strict=True))
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as err:
            raise ConfigError(f"{self.name}(): {err}") from None
        bound.apply_defaults()
        return dict(bound.arguments)
