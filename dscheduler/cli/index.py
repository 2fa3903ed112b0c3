"""``dscheduler index rebuild|compact``: the store index, maintained on demand.

The index (docs/design.md §14) is a cache of the records and ``.done``
links; it rebuilds itself when missing or unreadable.  ``rebuild`` is for
a store whose results were removed or edited by hand.
"""

from __future__ import annotations

import time

import typer

from ..errors import LeaseError
from .common import StoreOption, existing_store, fail, say

app = typer.Typer(no_args_is_help=True, help="Rebuild or compact the store index.")


@app.command()
def rebuild(store: StoreOption = None) -> None:
    """Rebuild the index from the records, links and run.json files."""
    st = existing_store(store)
    start = time.perf_counter()
    try:
        view = st.index.rebuild(timeout=120)
    except (OSError, LeaseError) as err:
        fail(err, code=1)
    done = sum(1 for v in view.values.values() if v.startswith("succeeded "))
    say(f"index of {st.root} rebuilt in {time.perf_counter() - start:.1f} s: "
        f"{len(view.values)} entries, {done} finished node(s)")


@app.command()
def compact(store: StoreOption = None) -> None:
    """Fold the index's segment files into its snapshot."""
    st = existing_store(store)
    try:
        folded = st.index.compact()
    except (OSError, LeaseError) as err:
        fail(err, code=1)
    say("index compacted" if folded else "another process is compacting the index")
