"""Progress bars while ``ds.compute`` waits: Dask's own, chosen for where they show.

In a Jupyter kernel, Dask's widget bar when ipywidgets is installed (it is a
dependency of dscheduler) and its text bar otherwise; in a terminal, the text
bar; with output going to a file or a pipe, none (one line per redraw would
flood a log).  The setting ``compute.progress`` (true, false, auto) decides.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

from .. import settings


def in_kernel() -> bool:
    """Whether this process is a Jupyter kernel."""
    return "ipykernel" in sys.modules


def wanted(progress: bool | None) -> bool:
    """Argument, else setting ``compute.progress``; "auto": a terminal or a kernel."""
    show = settings.get("compute.progress", progress)
    if show != "auto":
        return bool(show)
    return in_kernel() or sys.stdout.isatty()


def widgets_available() -> bool:
    try:
        return importlib.util.find_spec("ipywidgets") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["ipywidgets"] is None
        return False


def show(futures: list[Any]) -> None:
    """Show a bar over ``futures``: the widget in a kernel that can draw it, else text.

    The text bar returns when the futures are done; the widget at once.
    """
    from distributed.diagnostics.progressbar import progress as bar

    if in_kernel() and widgets_available():
        try:
            widget = bar(futures, multi=True, notebook=True)
            from IPython.display import display  # in a kernel, IPython is there

            display(widget)  # Dask shows it only as a cell's last expression
            return
        except ImportError:
            pass  # a broken ipywidgets install: the text bar still works
    bar(futures, multi=True, notebook=False)
