"""What every ``dscheduler`` command shares: options, output, one error printer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
errors = Console(stderr=True)

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


def say(text: str) -> None:
    """Print plain text (no markup, no highlighting)."""
    console.print(text, highlight=False, markup=False, soft_wrap=True)
