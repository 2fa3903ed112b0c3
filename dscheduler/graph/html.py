"""How plans and results show themselves in a notebook: small, plain HTML tables.

Jupyter calls ``_repr_html_``; :class:`~dscheduler.graph.plan.Plan` and
:class:`~dscheduler.run.handle.Results` build theirs from these helpers.
Every value is escaped: labels, errors and log lines are user text.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from .node import Node

STYLE = "border-collapse:collapse;margin:0.3em 0"
CELL = "padding:2px 8px;border:1px solid #ccc;text-align:left;vertical-align:top"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A table with ``header`` and ``rows``; every cell escaped."""
    head = "".join(f'<th style="{CELL}">{html.escape(str(h))}</th>' for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td style="{CELL}">{html.escape(str(c))}</td>' for c in row) + "</tr>"
        for row in rows
    )
    return f'<table style="{STYLE}"><tr>{head}</tr>{body}</table>'


def text(value: Any) -> str:
    """``value`` as escaped text."""
    return html.escape(str(value))


def heading(text: str) -> str:
    return f"<p><b>{html.escape(text)}</b></p>"


def pre(text: str) -> str:
    return f'<pre style="margin:0.2em 0;font-size:90%">{html.escape(text)}</pre>'


def link(url: str, text: str | None = None) -> str:
    target = html.escape(url, quote=True)
    return f'<a href="{target}" target="_blank">{html.escape(text or url)}</a>'


def label_of(node: Node) -> str:
    """The run label of a node ("" for nodes not bound to a run)."""
    return str(getattr(node.cfg, "label", "") or "") if node.cfg is not None else ""


def by_task(nodes: Iterable[Node], state_of: Any, states: Sequence[str]) -> str:
    """Counts of nodes per task and state, one row per task."""
    counts: dict[str, Counter[str]] = {}
    for node in nodes:
        counts.setdefault(node.task.name, Counter())[state_of(node)] += 1
    shown = [s for s in states if any(c[s] for c in counts.values())]
    rows = [[task, *[c[s] or "" for s in shown], sum(c.values())]
            for task, c in sorted(counts.items())]
    return table(["task", *shown, "total"], rows)
