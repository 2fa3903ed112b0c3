"""Listing and finding what a store holds: node records, their summaries, runs.

Records are the truth.  :func:`iter_node_records` walks the store and reads
every node record; :func:`~dscheduler.store.records.node_summary` makes the
small dict a listing needs of one (ids, label, state, version, timings,
params, metrics, tags, code digest, upstream keys); :func:`node_summaries` is
the ONE source listings read: the store index, which keeps these summaries
(docs/design.md §11, §14).  :func:`runs_frame` turns summaries into the
DataFrame of ``store.runs()``, one row per run or per node, filtered and
ordered by :mod:`dscheduler.store.catalogue.query`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ConfigError, StoreError
from ..index import Index, Table
from ..index.rebuild import pending_record
from ..layout import RUN_RECORD, Layout, record_task, walk_node_dirs
from ..record import DAMAGED, NODE_STATES, Record
from ..records import node_summary as node_summary  # kept here too: listings use it
from ..records import read_node, read_record
from .query import apply_filter, apply_order

if TYPE_CHECKING:
    import pandas as pd

NODE_COLUMNS = ["key", "name", "task", "case", "run_id", "env_id", "label", "state",
                "version", "attempts", "host", "start", "end", "seconds"]
RUN_COLUMNS = ["run_id", "env_id", "config_hash", "label", "state", "nodes", "start", "end"]
#: The node columns a listing by run reads (:func:`_run_frame`).
_RUN_INPUT = ["run_id", "label", "state", "start", "end"]
#: Attributes whose values are numbers (the others are strings), for the filter's types.
_NUMBER_COLUMNS = {"attempts", "seconds", "nodes"}
#: Prefix of the hidden columns that say which NaN of a metric column were logged as NaN
#: (the others: never logged), made only for a column that has one (order_by sorts them).
_NAN = "\x00nan:"
#: A run's state from its nodes' states: the first of these that any node has.
_RUN_STATE_ORDER = ("running", "failed", "damaged", "cancelled", "succeeded", "pending")
#: The states a node row has: its record's (a run row has one of _RUN_STATE_ORDER).
_NODE_STATES = NODE_STATES


def _record_files(root: Path) -> Iterator[Path]:
    """Paths of node records and ``run.json`` files under ``root``
    (:func:`~dscheduler.store.layout.walk_node_dirs`)."""
    for folder, files in walk_node_dirs([root]):
        for name in sorted(files):
            if record_task(name) is not None or name == RUN_RECORD:
                yield Path(folder, name)


def _run_of(layout: Layout, path: Path) -> str | None:
    """The run_id of a record's path under ``runs/``, or None."""
    try:
        parts = path.relative_to(layout.runs_dir).parts
    except ValueError:
        return None
    return f"{parts[0]}/{parts[1]}" if len(parts) > 2 else None


def iter_node_records(layout: Layout, run_id: str | None = None
                      ) -> Iterator[tuple[Path, Record]]:
    """(path, record) of every node record in the store, or of one run.

    A record removed while the walk runs is skipped; a damaged one is yielded
    as a Record in state ``damaged`` (``damaged`` says why) with its task from
    the file name.  Records are replaced by rename, so a record read is never
    torn.  A run whose ``run.json`` exists but none of whose nodes has a record
    yet comes as one Record in state ``pending`` (from its run.json).
    """
    roots = [layout.run(run_id).dir] if run_id else [layout.runs_dir, layout.tasks_dir]
    seen: set[str] = set()
    run_files: list[Path] = []
    for root in roots:
        for path in _record_files(root):
            if path.name == RUN_RECORD:
                run_files.append(path)
                continue
            try:
                record = read_node(path, listed=True)
            except StoreError as err:
                record = Record(state=DAMAGED, task=record_task(path.name),
                                damaged=str(err.why), run_id=_run_of(layout, path))
            except OSError:
                continue
            if record is not None:
                seen.add(str(record.run_id))
                yield path, record
    for path in run_files:
        with contextlib.suppress(StoreError, OSError):
            run = read_record(path)
            if run and run.get("run_id") not in seen:
                yield path, pending_record(run)


class Summaries:
    """Node summaries as listings read them (:func:`node_summaries`): iterating gives
    one dict per node, by path, then the ``pending`` ones of runs without nodes;
    :func:`runs_frame` takes their columns instead, without making those dicts."""

    def __init__(self, table: Table, order: list[int] | None = None) -> None:
        self.table = table
        self.order = order  # None: the table's own order

    @classmethod
    def of(cls, summaries: Iterable[dict[str, Any]]) -> Summaries:
        return summaries if isinstance(summaries, Summaries) else \
            cls(Table.of((str(i), s) for i, s in enumerate(summaries)))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rows = self.table.summaries()
        return iter(rows if self.order is None else [rows[i] for i in self.order])


def node_summaries(layout: Layout, run_id: str | None = None) -> Summaries:
    """Summaries of every node of the store (or of one run): what listings read.

    From the store index (docs/design.md §14), which keeps :func:`node_summary`
    of each node's last record and is rebuilt from the records when missing;
    a run whose ``run.json`` exists but none of whose nodes has a record yet
    comes as one ``pending`` summary, as :func:`iter_node_records` has it.
    """
    index = Index(layout)
    prefix = f"{layout.run_id_path(run_id).rsplit('/', 1)[0]}/" if run_id else ""
    for _ in range(5):
        view = index.load()
        table = index.table(view, _unlisted(layout, prefix, view.values))
        if table is not None:
            break
    else:
        raise StoreError(f"the index of {layout.root} kept changing while it was read")
    paths = table.paths()
    order = sorted(range(len(paths)), key=paths.__getitem__)
    runs = {i for i, p in enumerate(paths)
            if p.endswith(RUN_RECORD) and layout.run_of_id(p) is not None}
    if runs:
        order = [i for i in order if i not in runs] + [i for i in order if i in runs]
    return Summaries(table, order)


def _unlisted(layout: Layout, prefix: str, paths: Iterable[str]) -> Callable[[str], bool]:
    """Which index paths a listing skips: those outside ``prefix``, and the entries of
    runs that have nodes (only a run without any is listed, as ``pending``)."""
    with_nodes: set[str] | None = None  # made once a run's entry is seen

    def skip(path: str) -> bool:
        nonlocal with_nodes
        if not path.startswith(prefix):
            return True
        if not path.endswith(RUN_RECORD):  # a node's entry (nearly every one): no split
            return False
        run = layout.run_of_id(path)
        if run is None:
            return False
        if with_nodes is None:
            with_nodes = {r for r in map(layout.run_of_node_id, paths) if r is not None}
        return run in with_nodes

    return skip


_GROUPS = ("config", "params", "metrics", "tags")


def _node_frame(summaries: Summaries, columns: list[str]) -> pd.DataFrame:
    """One row per summary: ``columns``, then one column per config field, param, metric
    and tag that some row has (not null), in the summaries' order.  Made from the
    summaries' columns: a DataFrame of 100,000 row dicts costs several times more."""
    import pandas as pd

    frame = pd.DataFrame(node_columns(summaries, columns, _column))
    order = summaries.order
    if order is not None and order != list(range(len(order))):
        frame = frame.take(order).reset_index(drop=True)
    return frame


def node_columns(summaries: Summaries, columns: list[str],
                 convert: Callable[[str, str, list[Any], dict[str, Any]], Any]
                 ) -> dict[str, Any]:
    """``columns`` of the summaries' table, then each group's columns that some row has
    (not null: else only dropped rows had it), each through ``convert(group, name,
    values, data)``; in the table's order."""
    table = summaries.table
    data = {c: table.column(c) for c in columns}
    names = table.names()
    for group in _GROUPS:
        for name in sorted(n for n in names if n.startswith(f"{group}.")):
            values = table.column(name)
            if any(v is not None for v in values):
                data[name] = convert(group, name, values, data)
    return data


def _column(group: str, name: str, values: list[Any], data: dict[str, Any]) -> Any:
    """A group's column for the frame.  A param keeps its logged value (ints among missing
    values, which pandas would make floats, in an object column: the filter compares
    MLflow's string of it, "10" not "10.0"); a metric with a logged NaN adds to ``data`` a
    hidden column saying which NaN those are (:data:`_NAN`)."""
    import numpy as np
    import pandas as pd

    if group == "params" and any(isinstance(v, int) and not isinstance(v, bool)
                                 for v in values) and \
            not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return pd.Series(values, dtype=object)
    if group == "metrics":
        try:
            where = np.flatnonzero(np.isnan(np.asarray(values, dtype=float)))  # None: NaN
        except (TypeError, ValueError):
            return values
        logged = [i for i in where if isinstance(values[i], float)]
        if logged:
            flags = np.zeros(len(values), bool)
            flags[logged] = True
            data[_NAN + name] = flags
    return values


def _run_frame(nodes: pd.DataFrame) -> pd.DataFrame:
    """One row per run from a node frame (see :meth:`Store.runs`)."""
    import pandas as pd

    nodes = nodes[nodes["run_id"].notna()]
    nodes = nodes.sort_values("end", na_position="first", kind="stable")  # latest last
    rank = {s: i for i, s in enumerate(_RUN_STATE_ORDER)}
    # run_id is f"{env_id}/{config_hash}" (a node's own env_id may be another: an env
    # given to its task).  Plain Python: pandas' str.partition took a quarter of the
    # time of listing 100,000 runs.
    ids = [r.partition("/") for r in nodes["run_id"].tolist()]
    base = pd.DataFrame({"run_id": nodes["run_id"],
                         "env_id": pd.Series([i[0] for i in ids], index=nodes.index,
                                             dtype="str"),
                         "config_hash": pd.Series([i[2] for i in ids], index=nodes.index,
                                                  dtype="str"),
                         "label": nodes["label"].replace("", None),
                         "state": nodes["state"].map(rank).fillna(len(rank)).astype(int),
                         "start": nodes["start"], "end": nodes["end"]})
    later = [c for c in nodes.columns if c.startswith(("config.", "params.", "tags."))]
    metrics = [c for c in nodes.columns if c.startswith("metrics.")]
    nans = [c for c in nodes.columns if c.startswith(_NAN)]
    if nodes["run_id"].is_unique:  # one node per run: nothing to aggregate
        runs = base.assign(nodes=1)
        runs[later] = nodes[later]
        runs[metrics] = nodes[metrics].apply(pd.to_numeric, errors="coerce")
        runs[nans] = nodes[nans]
    else:
        grouped = base.assign(**{c: nodes[c] for c in later},
                              **{c: pd.to_numeric(nodes[c], errors="coerce")
                                 for c in metrics},
                              **{c: nodes[c] for c in nans}).groupby("run_id", sort=False)
        runs = grouped[["env_id", "config_hash", "label", *later]].last()
        runs["state"] = grouped["state"].min()
        runs["nodes"] = grouped.size()
        runs["start"] = grouped["start"].min()
        runs["end"] = grouped["end"].max()
        runs[metrics] = grouped[metrics].mean()
        runs[nans] = grouped[nans].any()  # a run's mean is NaN if only NaN were logged
        runs = runs.reset_index()
    runs["state"] = runs["state"].map(dict(enumerate(_RUN_STATE_ORDER))).fillna("unknown")
    runs["label"] = runs["label"].fillna("")
    runs.loc[runs["state"] == "running", "end"] = None
    return runs


def _ordered_columns(columns: Iterable[str], first: list[str]) -> list[str]:
    rest = sorted(c for c in columns if c not in first)
    return first + sorted(rest, key=lambda c: (next(
        (i for i, g in enumerate(_GROUPS) if c.startswith(g + ".")), len(_GROUPS)), c))


def runs_frame(summaries: Iterable[dict[str, Any]], *, filter: str | None = None,
               order_by: list[str] | str | None = None,
               state: str | list[str] | None = None, by: str = "run") -> pd.DataFrame:
    """The DataFrame of ``store.runs()`` from node summaries (see :meth:`Store.runs`)."""
    if by not in ("run", "node"):
        raise ConfigError(f"by={by!r}: list by 'run' or by 'node'")
    summaries = Summaries.of(summaries)
    if by == "node":
        frame = _node_frame(summaries, NODE_COLUMNS)
        first = NODE_COLUMNS
        frame = frame[frame["task"].notna()]
    else:
        first = RUN_COLUMNS
        frame = _run_frame(_node_frame(summaries, _RUN_INPUT))
    frame = frame.reindex(columns=_ordered_columns(frame.columns, first))
    if state:
        wanted = [state] if isinstance(state, str) else list(state)
        _check_states(wanted, by)
        frame = frame[frame["state"].isin(wanted)]
    hidden = [c for c in frame.columns if c.startswith(_NAN)]
    nan = frame[hidden].rename(columns=lambda c: c[len(_NAN):])
    frame = frame.drop(columns=hidden)
    attributes = {c: "number" if c in _NUMBER_COLUMNS else "string" for c in first}
    frame = apply_filter(frame, filter, attributes)
    frame = apply_order(frame, order_by, attributes, nan=nan)
    return frame.reset_index(drop=True)


def _check_states(wanted: list[str], by: str) -> None:
    """A ConfigError naming a state no row listed ``by`` run or node can have."""
    valid = _RUN_STATE_ORDER if by == "run" else _NODE_STATES
    bad = [s for s in wanted if s not in valid]
    if bad:
        raise ConfigError(f"state {bad[0]!r}: a {by} is {', '.join(valid)}; "
                          "pass one of those")


def find(layout: Layout, ref: str) -> list[tuple[Path, Record]]:
    """Node records that ``ref`` names: a run_id (or a prefix of one), a label, a node
    name or key (or a prefix of 8+ characters); a ConfigError when nothing matches."""
    matches = []
    summaries = list(node_summaries(layout))
    for s in summaries:
        run_id, key, name = s["run_id"] or "", s["key"] or "", s["name"] or ""
        if ref in (run_id, s["label"], name, key) or (len(ref) >= 8 and (
                run_id.startswith(ref) or key.startswith(ref) or name.startswith(ref))):
            matches.append(s)
    if not matches:
        raise ConfigError(
            f"nothing in the store {layout.root} is named {ref!r}: give a run_id "
            "(env_id/config_hash, or a prefix of 8+ characters), a label, a node name "
            "(task-key16) or a key; `dscheduler runs` lists them"
        )
    out = []
    for s in matches:
        path = layout.root / s["record"]
        record = read_node(path)
        if record is not None:
            out.append((path, record))
    return out


def lineage(layout: Layout, key: str, direction: str) -> list[dict[str, Any]]:
    """Summaries of the nodes upstream (``"up"``) or downstream (``"down"``) of ``key``,
    transitively, nearest first."""
    summaries = list(node_summaries(layout))
    by_key = {s["key"]: s for s in summaries}
    below: dict[str, list[str]] = {}
    for s in summaries:
        for up in s["upstream"]:
            below.setdefault(up, []).append(s["key"])
    seen: list[str] = []
    frontier = [key]
    while frontier:
        nxt = []
        for k in frontier:
            found = by_key[k]["upstream"] if direction == "up" and k in by_key else \
                below.get(k, []) if direction == "down" else []
            for other in found:
                if other not in seen and other != key:
                    seen.append(other)
                    nxt.append(other)
        frontier = nxt
    return [by_key.get(k, {"key": k, "name": None, "state": "no record"}) for k in seen]
