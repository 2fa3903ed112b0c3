"""``dscheduler verify [--repair]``: find finished nodes whose files are damaged."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import ConfigError, StoreError
from ..store.catalogue.verify import verify as verify_store
from .common import StoreOption, existing_store, fail, say


def verify(
    store: StoreOption = None,
    run: Annotated[str | None, typer.Option(help="only this run (ENV_ID/CONFIG_HASH)")] = None,
    repair: Annotated[bool, typer.Option(
        "--repair", help="demote damaged nodes so that the next run redoes them")] = False,
    deep: Annotated[bool, typer.Option(
        "--deep", help="also read and decode every chunk of every Zarr value (slow)")] = False,
) -> None:
    """Check every finished node's record, value (every chunk file present) and .done
    link (exit 1 if any is bad); --deep reads every chunk too."""
    st = existing_store(store)
    try:
        report = verify_store(st, run_id=run, repair=repair, deep=deep)
    except ConfigError as err:  # a --run that is no run_id
        fail(ConfigError(f"--run {run!r}: {err}; give a run_id ENV_ID/CONFIG_HASH as "
                         "`dscheduler runs` lists them"))
    except StoreError as err:
        fail(err)
    for problem in report.problems:
        say(f"{problem.path}: {problem.why}" + (f" ({problem.action})" if problem.action else ""))
    say(report.summary())
    if report.problems and not repair:
        raise typer.Exit(1)
