"""``dscheduler runs``: list runs or nodes from the store's index (docs/design.md §11).

Its own module, so that listing loads the store layer, not the graph and run
layers the other result commands need; and without --filter or --sort it
lists from the index's columns without pandas (docs/design.md §4).
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import DSchedulerError
from ..store import Store
from ..store.catalogue.listing import Rows, listing
from ..store.catalogue.runs import node_summaries
from ..store.index.snapshot import paused_gc
from .common import StoreOption, console, existing_store, fail, print_wide, say
from .tables import frame_table, to_csv, to_json


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
        rows = _rows(st, filter, sort, state, by)
    except DSchedulerError as err:
        fail(err)
    if limit is not None:
        rows = rows.head(limit)
    if format == "csv":
        print(to_csv(rows), end="")
    elif format == "json":
        print(to_json(rows))
    else:
        try:
            table, width, more = frame_table(rows, by, console.width, columns, wide)
        except DSchedulerError as err:
            fail(err)
        print_wide(table, width)
        say(f"{len(rows)} {by}(s)")
        if more:
            say(more)


def _rows(st: Store, filter: str | None, sort: list[str] | None, state: list[str] | None,
          by: str) -> Rows:
    """The listing: from the index's columns in plain Python, or through the DataFrame
    of ``store.runs()`` (pandas) when a filter or an order asks for its queries."""
    if filter or sort:
        return Rows.of_frame(st.runs(filter=filter, order_by=sort, state=state, by=by))
    with paused_gc():
        return listing(node_summaries(st), state=state, by=by)
