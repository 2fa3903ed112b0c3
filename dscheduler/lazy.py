"""Lazy exports of a package (PEP 562): a name is imported from its submodule on first use.

A package ``__init__`` lists its lazily exported names as ``_LAZY = {".submodule": [names]}``,
imports the same names under ``TYPE_CHECKING`` (tests/test_layout.py holds the two equal) and
sets ``__getattr__ = lazy.exports(__name__, _LAZY, globals())``.  A name equal to its
submodule's own name is the submodule itself.  So ``import dscheduler`` and a command of the
CLI load only what they use (docs/design.md §4).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def exports(package: str, lazy: dict[str, list[str]],
            namespace: dict[str, Any]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: a name of ``lazy``, imported on first use
    and kept in ``namespace``; any other name an AttributeError."""
    where = {name: module for module, names in lazy.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        found = importlib.import_module(module, package)
        value = found if module == f".{name}" else getattr(found, name)
        namespace[name] = value
        return value

    return __getattr__
