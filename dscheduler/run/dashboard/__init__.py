"""The dscheduler page in the Dask dashboard of every scheduler dscheduler uses.

:func:`install` puts :class:`~.plugin.DashboardPlugin` on whatever scheduler a
Client talks to (the embedded local cluster, a SLURM cluster's, one started
by hand), idempotently and while it runs; ``submit`` calls it with the
graph's metadata (:func:`graph_meta`) before sending the graph, in one round
trip.  The scheduler's dashboard then serves ``/dscheduler`` (a page) and
``/dscheduler.json`` (the same data) beside ``/status``.  How the pieces fit
is in docs/design.md §12.
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from typing import TYPE_CHECKING, Any

from ... import lazy
from ...graph import Node, Plan
from ...store.catalogue.status import NO_LABEL
from ..nodespec import NodeSpec

if TYPE_CHECKING:
    from . import plugin as plugin
    from .plugin import NAME, DashboardPlugin

# Loaded on first use (PEP 562): the plugin imports distributed and tornado, which a
# process that never talks to a scheduler does not need (docs/design.md §4).
_LAZY = {".plugin": ["plugin", "NAME", "DashboardPlugin"]}

__all__ = ["NAME", "DashboardPlugin", "graph_meta", "install", "links", "page_link"]


__getattr__ = lazy.exports(__name__, _LAZY, globals())


_printed: set[str] = set()  # scheduler addresses whose links this process printed
_warned: set[str] = set()


def label_of(node: Node) -> str:
    """The run label a node is counted under (its RunConfig's ``label``, if any)."""
    return str(getattr(node.cfg, "label", "") or NO_LABEL) if node.cfg is not None else NO_LABEL


def graph_meta(p: Plan, specs: dict[str, NodeSpec], submission: str) -> dict[str, Any]:
    """What the plugin needs of a graph: compact, one entry per node to run.

    Cached nodes are only counted per (task, label); a node to run carries
    its key, task and label (as indices) and its record's path in the store,
    which the page reads when the node fails.
    """
    tasks: dict[str, int] = {}
    labels: dict[str, int] = {}
    cached: Counter[tuple[int, int]] = Counter()
    run = []
    cut = len(str(p.store.root)) + 1
    for node in p.nodes:
        t = tasks.setdefault(node.task.name, len(tasks))
        lbl = labels.setdefault(label_of(node), len(labels))
        spec = specs.get(node.key)
        if spec is None:
            cached[(t, lbl)] += 1
        else:
            run.append((node.name, t, lbl, str(spec.paths.record)[cut:]))
    return {
        "submission": submission,
        "root": str(p.store.root),
        "tasks": list(tasks),
        "labels": list(labels),
        "cached": [(t, lbl, n) for (t, lbl), n in cached.items()],
        "run": run,
        "envs": {e: "queued" if e in p.envs_to_build else "built" for e in p.envs},
    }


def page_link(status_link: str) -> str:
    """The page's link beside a dashboard link (``.../status`` -> ``.../dscheduler``)."""
    base = status_link.removesuffix("status") if status_link.endswith("/status") \
        else status_link.rstrip("/") + "/"
    return base + "dscheduler"


def links(client: Any) -> tuple[str, str]:
    """The dashboard's link (as ``distributed.dashboard.link`` says) and the page's."""
    status = str(client.dashboard_link or "")
    return status, page_link(status)


def install(client: Any, graph: dict[str, Any] | None = None) -> bool:
    """Put the page on ``client``'s scheduler (once) and follow ``graph``; False if it failed.

    Idempotent: a scheduler that has the plugin keeps it (and its graphs).
    The first success per scheduler prints the dashboard's and the page's
    links on stderr.  A scheduler that cannot load dscheduler gets a warning,
    once, and the graph runs all the same.
    """
    address = str(getattr(client.scheduler, "address", "") or "")
    try:
        client.run_on_scheduler(__getattr__("plugin").install, graph=graph)
        ok = True
    except Exception as err:
        ok = False
        if address not in _warned:
            _warned.add(address)
            warnings.warn(
                f"the dscheduler page is not available on the scheduler at {address} "
                f"({type(err).__name__}: {err}); install dscheduler where the scheduler "
                "runs to have it. The Dask dashboard still works.", stacklevel=3)
    if address not in _printed:
        _printed.add(address)
        status, page = links(client)
        more = f" (dscheduler page: {page})" if ok else ""
        print(f"dscheduler: dashboard at {status}{more}", file=sys.stderr)
    return ok
