"""The ``dscheduler`` command line: thin commands that parse, call the library, print.

``run``, ``plan``, ``status`` (:mod:`.graph`), ``verify`` (:mod:`.verify`),
``ids`` (:mod:`.ids`), ``envs list|show|build|gc`` (:mod:`.envs`),
``runs`` (:mod:`.runs`), ``show``, ``compare``, ``explain``, ``rerun`` (:mod:`.results`),
``cluster up|down`` (:mod:`.cluster`) and ``index rebuild|compact`` (:mod:`.index`).

A command's module is imported when that command runs (or ``--help`` lists
them all), so a command pays only for what it uses (docs/design.md §4).
``_LAZY`` names where each command lives: a function of that module or, for a
group, the module itself (its ``app``); :class:`LazyGroup` is click's
documented lazily loading group.  The ``TYPE_CHECKING`` block imports
the same names, and tests/test_layout.py holds the two equal.
"""

from __future__ import annotations

import gc
import importlib
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

import typer
from typer import _click as click  # typer's own copy of click, whose commands its groups hold
from typer.core import TyperGroup

if TYPE_CHECKING:
    from . import cluster as cluster
    from . import envs as envs
    from . import index as index
    from .graph import plan as plan
    from .graph import run as run
    from .graph import status as status
    from .ids import ids as ids
    from .inspect import compare as compare
    from .inspect import explain as explain
    from .inspect import rerun as rerun
    from .inspect import show as show
    from .runs import runs as runs
    from .verify import verify as verify

# In the order `dscheduler --help` lists them.
_LAZY = {
    ".graph": ["run", "plan", "status"],
    ".verify": ["verify"],
    ".ids": ["ids"],
    ".envs": ["envs"],
    # results, tracking and queries (docs/design.md §11)
    ".runs": ["runs"],
    ".inspect": ["show", "compare", "explain", "rerun"],
    ".cluster": ["cluster"],
    ".index": ["index"],
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}


def load_command(name: str) -> click.Command:
    """The click command ``name``, its module imported now."""
    module = importlib.import_module(_WHERE[name], __name__)
    # What is alive now lives as long as the command (modules, classes): out of the
    # collector's sight until it ends (LazyGroup.invoke), so that the many objects a
    # recipe and its plan make cost a full collection far less (a sixth of a no-op run).
    gc.freeze()
    function = getattr(module, name, None)
    if function is None:  # a group: the module ``name``'s app
        group = typer.main.get_group(module.app)
        group.name = name
        return group
    one = typer.Typer(add_completion=False)
    one.command()(function)
    return typer.main.get_command(one)


class Commands(MutableMapping[str, click.Command]):
    """Every command's name; a command is built (its module imported) when first looked up,
    so listing the names, as click's suggestions for a mistyped one do, loads none."""

    def __init__(self) -> None:
        self.built: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self.built:
            if name not in _WHERE:
                raise KeyError(name)
            self.built[name] = load_command(name)
        return self.built[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self.built[name] = command

    def __delitem__(self, name: str) -> None:
        del self.built[name]

    def __iter__(self) -> Iterator[str]:
        return iter([*_WHERE, *(n for n in self.built if n not in _WHERE)])

    def __len__(self) -> int:
        return len(set(_WHERE) | set(self.built))


class LazyGroup(TyperGroup):
    """The top-level group: its commands are :class:`Commands` (click docs, "Lazily Loading
    Subcommands"; typer's group reads ``self.commands`` for lookups, help and suggestions)."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = Commands()

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; objects frozen by :func:`load_command` are seen by the
        collector again afterwards (when the CLI runs inside another program)."""
        try:
            return super().invoke(ctx)
        finally:
            gc.unfreeze()


def _main() -> None:
    """Content-hashed run graphs on Dask: envs built once, finished runs never rerun."""


app = typer.Typer(
    cls=LazyGroup,
    callback=_main,
    help="Content-hashed run graphs on Dask: envs built once, finished runs never rerun.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
