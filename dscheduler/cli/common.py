"""What every ``dscheduler`` command shares: options, the store, output, error printers."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console, RenderableType
from rich.markup import escape

from ..errors import DSchedulerError, StoreError
from ..store import Store

if TYPE_CHECKING:
    from ..run import Results

console = Console()
errors = Console(stderr=True)


def _one_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
              line: str | None = None) -> str:
    """A warning as the command line prints it: ``warning: TEXT``, without the file, line
    number and source line Python adds (they say nothing a user can act on)."""
    return f"warning: {message}\n"


# Commands print a warning (e.g. CodeDriftWarning) as one plain line, never a source line.
warnings.formatwarning = _one_line

StoreOption = Annotated[
    Path | None,
    typer.Option("--store", "-s", help="store root (default: the setting 'store', data/)"),
]
ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="RunConfig class as module:Class or file.py:Class "
                 "(default: the experiment's 'model:' key)"),
]
RecipeOption = Annotated[
    str | None,
    typer.Option("--recipe", "-r", help="file.py:function (or NAME in a .py PATH) that "
                 "returns the nodes"),
]


def show_error(err: BaseException) -> None:
    """Print an error without a traceback, on stderr.

    The text is escaped: messages quote values such as ``[test]`` that rich
    would otherwise take as markup and drop.
    """
    errors.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)


def fail(err: BaseException, code: int = 2) -> NoReturn:
    """:func:`show_error`, then exit (2: bad input; 1: work that failed)."""
    show_error(err)
    raise typer.Exit(code)


def exit_on_failures(results: Results) -> None:
    """Print every failed task of ``results`` and exit 1; return if none failed.

    The text is :meth:`Results.raise_for_status`'s, one failure per task, printed
    as it is (no markup: tracebacks and log tails hold brackets).
    """
    try:
        results.raise_for_status()
    except DSchedulerError as err:
        errors.print(str(err), highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(1) from None


def existing_store(store: Path | None) -> Store:
    """The store at ``store`` (default: the setting ``store``); exit 2 if there is none."""
    st = Store(store)
    if not st.root.is_dir():
        fail(StoreError(f"no store at {st.root}; pass --store with the path of an existing "
                        "store, or run something first to create this one"))
    return st


def size(n: float) -> str:
    """A byte count for people: ``512 B``, ``1.5 MB`` (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def print_wide(renderable: RenderableType, width: int) -> None:
    """Print ``renderable`` laid out in ``width`` columns even when the terminal is
    narrower (``--wide``: lines longer than the screen rather than squeezed cells)."""
    if width <= console.width:
        console.print(renderable)
    else:  # Console.print caps its width at the console's: a wider one for this table
        Console(file=console.file, width=width, no_color=console.no_color,
                force_terminal=console.is_terminal).print(renderable, crop=False)


def say(text: str) -> None:
    """Print plain text (no markup, no highlighting)."""
    console.print(text, highlight=False, markup=False, soft_wrap=True)
