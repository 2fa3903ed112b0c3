"""``dscheduler runs``: list runs or nodes from the store's index (docs/design.md §11).

Its own module, so that listing loads the store layer and pandas, not the
graph and run layers the other result commands need (docs/design.md §4).
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import DSchedulerError
from .common import StoreOption, console, existing_store, fail, print_wide, say
from .tables import frame_table


def runs(
    store: StoreOption = None,
    filter: Annotated[str | None, typer.Option(
        "--filter", "-f", help="e.g. \"metrics.rmse < 1.5 and (params.model = 'linear' or "
        "tags.stage like 'eval%')\"")] = None,
    sort: Annotated[list[str] | None, typer.Option(
        "--sort", help="column [asc|desc]; repeat for more")] = None,
    state: Annotated[list[str] | None, typer.Option(help="only this state; repeatable")] = None,
    by: Annotated[str, typer.Option(help="one row per 'run' or per 'node'")] = "run",
    format: Annotated[str, typer.Option("--format", help="table, csv or json (csv and "
                                        "json: every column)")] = "table",
    limit: Annotated[int | None, typer.Option(help="at most this many rows")] = None,
    columns: Annotated[list[str] | None, typer.Option(
        "--columns", help="columns to show: names or globs, comma-separated or repeated, "
        "e.g. 'label,metrics.*'")] = None,
    wide: Annotated[bool, typer.Option("--wide", help="show every column, however wide")]
    = False,
) -> None:
    """List runs (or nodes) with their state, params, metrics and tags.

    The table fits the terminal: label, state, nodes, then the metrics and params that
    vary between the rows listed (--columns or --wide for others).
    """
    if format not in ("table", "csv", "json"):
        fail(DSchedulerError(f"--format {format!r}: use table, csv or json"))
    st = existing_store(store)
    try:
        frame = st.runs(filter=filter, order_by=sort, state=state, by=by)
    except DSchedulerError as err:
        fail(err)
    if limit is not None:
        frame = frame.head(limit)
    if format == "csv":
        print(frame.to_csv(index=False), end="")
    elif format == "json":
        print(frame.to_json(orient="records", indent=1))
    else:
        try:
            table, width, more = frame_table(frame, by, console.width, columns, wide)
        except DSchedulerError as err:
            fail(err)
        print_wide(table, width)
        say(f"{len(frame)} {by}(s)")
        if more:
            say(more)
