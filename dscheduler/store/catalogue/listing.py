"""``store.runs()``' rows without pandas, for ``dscheduler runs`` when no query needs it.

:func:`listing` gives the same rows and columns as
:func:`~dscheduler.store.catalogue.runs.runs_frame` with no filter and no order (state
filtering included), as :class:`Rows`: column names and each column's values,
made in plain Python from the index's columns.  Loading pandas costs a
quarter of a second, more than the whole listing of a few hundred runs; with
``--filter`` or ``--sort`` the command still goes through the DataFrame
(:mod:`dscheduler.store.catalogue.query`).  Missing values are None (a metric logged as
NaN stays a float NaN); a run's values are those of
:func:`~dscheduler.store.catalogue.runs.runs_frame`: state by precedence, metrics
averaged over its nodes, others the last given.  tests/test_cli_tables.py
holds the two equal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError
from .runs import (
    _NAN,
    _RUN_INPUT,
    _RUN_STATE_ORDER,
    NODE_COLUMNS,
    RUN_COLUMNS,
    Summaries,
    _check_states,
    _ordered_columns,
    node_columns,
)


@dataclass
class Rows:
    """A listing as columns: ``columns`` in order, ``data[name]`` one value per row."""

    columns: list[str]
    data: dict[str, list[Any]]

    def __len__(self) -> int:
        return len(self.data[self.columns[0]]) if self.columns else 0

    def column(self, name: str) -> list[Any]:
        return self.data[name]

    def head(self, n: int) -> Rows:
        return Rows(self.columns, {c: v[:n] for c, v in self.data.items()})

    def take(self, keep: list[int]) -> Rows:
        return Rows(self.columns, {c: [v[i] for i in keep] for c, v in self.data.items()})

    @classmethod
    def of_frame(cls, frame: Any) -> Rows:
        """The rows of a ``store.runs()`` DataFrame (its NaN and NaT as they are)."""
        names = [str(c) for c in frame.columns]
        return cls(names, {c: frame[c].tolist() for c in names})


def listing(summaries: Iterable[dict[str, Any]], *, state: str | list[str] | None = None,
            by: str = "run") -> Rows:
    """``runs_frame(summaries, state=state, by=by)`` as :class:`Rows`, without pandas."""
    if by not in ("run", "node"):
        raise ConfigError(f"by={by!r}: list by 'run' or by 'node'")
    summaries = Summaries.of(summaries)
    if by == "node":
        nodes = _nodes(summaries, NODE_COLUMNS)
        rows = nodes.take([i for i, t in enumerate(nodes.column("task")) if t is not None])
        first = NODE_COLUMNS
    else:
        rows, first = _runs(_nodes(summaries, _RUN_INPUT)), RUN_COLUMNS
    columns = [c for c in _ordered_columns(rows.columns, first) if not c.startswith(_NAN)]
    rows = Rows(columns, {c: rows.data[c] for c in columns})
    if state:
        wanted = [state] if isinstance(state, str) else list(state)
        _check_states(wanted, by)
        rows = rows.take([i for i, s in enumerate(rows.column("state")) if s in wanted])
    return rows


def _nodes(summaries: Summaries, columns: list[str]) -> Rows:
    """One row per summary, in the summaries' order: ``columns``, then each group's
    columns that some row has (``_node_frame``)."""
    data = node_columns(summaries, columns, lambda group, name, values, data: values)
    order = summaries.order
    if order is not None and order != list(range(len(order))):
        data = {c: [v[i] for i in order] for c, v in data.items()}
    return Rows(list(data), data)


def _number(value: Any) -> float | None:
    """A metric as pandas' to_numeric(errors="coerce") has it: a float, or None."""
    if isinstance(value, bool) or value is None:
        return None if value is None else float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _runs(nodes: Rows) -> Rows:
    """One row per run from node rows (``_run_frame``), in the order of each run's first
    node when nodes are sorted by end (unfinished first)."""
    ends = nodes.column("end")
    ids = nodes.column("run_id")
    keep = sorted((i for i, r in enumerate(ids) if r is not None),
                  key=lambda i: (ends[i] is not None, ends[i] or ""))
    groups: dict[str, list[int]] = {}
    for i in keep:
        groups.setdefault(ids[i], []).append(i)
    later = [c for c in nodes.columns if c.startswith(("config.", "params.", "tags."))]
    metrics = [c for c in nodes.columns if c.startswith("metrics.")]
    rank = {s: n for n, s in enumerate(_RUN_STATE_ORDER)}
    out: dict[str, list[Any]] = {c: [] for c in [*RUN_COLUMNS, *later, *metrics]}
    for run_id, rows in groups.items():
        env_id, _, config_hash = run_id.partition("/")
        states = [rank.get(nodes.column("state")[i], len(rank)) for i in rows]
        state = min(states)
        starts = [s for s in (nodes.column("start")[i] for i in rows) if s is not None]
        stops = [e for e in (ends[i] for i in rows) if e is not None]
        values = {"run_id": run_id, "env_id": env_id, "config_hash": config_hash,
                  "label": _last([nodes.column("label")[i] or None for i in rows]) or "",
                  "state": _RUN_STATE_ORDER[state] if state < len(rank) else "unknown",
                  "nodes": len(rows), "start": min(starts, default=None),
                  "end": max(stops, default=None)}
        if values["state"] == "running":
            values["end"] = None
        values.update({c: _last([nodes.column(c)[i] for i in rows]) for c in later})
        values.update({c: _mean([_number(nodes.column(c)[i]) for i in rows])
                       for c in metrics})
        for c, v in values.items():
            out[c].append(v)
    return Rows(list(out), out)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _last(values: list[Any]) -> Any:
    """The last value given (pandas' GroupBy.last skips missing ones)."""
    return next((v for v in reversed(values) if not _missing(v)), None)


def _mean(values: list[float | None]) -> float | None:
    """The mean of the numbers (missing and NaN skipped); NaN if only NaN were logged."""
    numbers = [v for v in values if v is not None and not math.isnan(v)]
    if numbers:
        return math.fsum(numbers) / len(numbers)
    return math.nan if any(v is not None for v in values) else None
