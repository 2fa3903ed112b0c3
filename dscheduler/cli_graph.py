"""``dscheduler run|plan|status``: placeholder, filled by the graph work."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the graph commands to ``app``."""
