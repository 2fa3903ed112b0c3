"""``dscheduler verify [--repair]``: find finished nodes whose files are damaged."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import StoreError
from ..store.verify import verify as verify_store
from .common import StoreOption, existing_store, fail, say


def verify(
    store: StoreOption = None,
    run: Annotated[str | None, typer.Option(help="only this run (ENV_ID/CONFIG_HASH)")] = None,
    repair: Annotated[bool, typer.Option(
        "--repair", help="demote damaged nodes so that the next run redoes them")] = False,
) -> None:
    """Check every finished node's record, value and .done link (exit 1 if any is bad)."""
    st = existing_store(store)
    try:
        report = verify_store(st, run_id=run, repair=repair)
    except StoreError as err:
        fail(err)
    for problem in report.problems:
        say(f"{problem.path}: {problem.why}" + (f" ({problem.action})" if problem.action else ""))
    say(report.summary())
    if report.problems and not repair:
        raise typer.Exit(1)
