"""``ds.task``: a function made lazy, whose calls are :class:`~dscheduler.graph.node.Node` s.

Calling a task returns a Node; nothing runs until ``ds.compute``.  Arguments
are bound to the function's signature first (defaults applied), so
``f(cfg, "x")`` and ``f(cfg, init_time="x")`` are the same node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from .node import Node
from .options import TaskOptions, check_options
from .taskdef import TaskDef, function_location

__all__ = ["Task", "function_location", "task"]

P = ParamSpec("P")
R = TypeVar("R")


class Task(TaskDef[P, R]):
    """A function made lazy: calling it returns a :class:`Node`.

    ``name`` names its outputs (``{task}.json``, ``{task}.zarr``) and its Dask
    keys; ``version`` is how a user says its results changed; ``location``
    (:func:`function_location`) is where its function is defined.  All three
    are part of every node's key.
    """

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Node:
        return Node(self, self._bind(args, kwargs))


def task(
    fn: Callable[..., Any] | None = None,
    *,
    version: str = "0",
    name: str | None = None,
    case: str | None = None,
    **options: Any,
) -> Any:
    """Make a task: ``@ds.task(version="1")``; bump ``version`` to invalidate results.

    ``case`` names the parameter that holds the run's case (e.g. an init time);
    other keywords are options (see :meth:`Task.options`).
    """

    def make(f: Callable[..., Any]) -> Task[Any, Any]:
        label = name or str(getattr(f, "__name__", "?"))
        return Task(
            f, version=version, name=name, case=case,
            options=TaskOptions(**check_options(label, options)),
        )

    return make(fn) if fn is not None else make


