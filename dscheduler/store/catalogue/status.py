"""What a store or a running graph holds: the summary ``dscheduler status`` and the page share.

A :class:`Summary` counts nodes by state per task and per run label, lists envs
(state, build time, size) and the latest failures with their log tail;
:meth:`Summary.to_json` is what ``/dscheduler.json`` serves.  Two kinds exist:

* ``store``: :func:`summarize`, read from the store's files alone, so it
  needs no scheduler: its index (counts, labels), the records of the newest
  failures, the leases of running nodes (none held: ``interrupted``), envs.
  Callers use it alone; :func:`walk_summary`, the record walk it replaced,
  is kept for bench/status.py and the tests, which compare the two.
* ``graph``: made by the dashboard plugin from a submitted graph's plan and
  the scheduler's task transitions; it adds ``queued``, ``cached`` and
  ``blocked``, which only a graph knows.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import settings
from ...errors import StoreError, tail
from ..index import RUN, Index, Table
from ..index.entries import UNLINKED
from ..layout import (
    RUN_RECORD,
    Layout,
    NodePaths,
    done_name,
    done_task,
    record_task,
    walk_node_dirs,
)
from ..lease import lease_held
from ..record import CANCELLED, DAMAGED, FAILED, INTERRUPTED, RUNNING, SUCCEEDED, Record
from ..records import read_node, read_record
from ..state import state_of

#: States only a graph knows (the dashboard's; run/handle.py's are a graph's results).
QUEUED, CACHED, BLOCKED = "queued", "cached", "blocked"
#: Node states (:class:`~dscheduler.store.record.State`) and a graph's, in the order
#: tables show them.
STATES = (QUEUED, RUNNING, CACHED, SUCCEEDED, FAILED, BLOCKED, CANCELLED, INTERRUPTED,
          DAMAGED)
#: States a graph's tables always show, zero or not.
GRAPH_STATES = STATES[:6]
#: Environment states: ``queued``, ``building``, ``built`` and ``failed`` (a build task);
#: a store also has ``incomplete`` (a builder was killed and nobody retried yet).
ENV_STATES = ("queued", "building", "built", "failed", "incomplete", "cancelled")
#: The label of nodes that are not bound to a run.
NO_LABEL = ""


@dataclass
class EnvRow:
    """One environment: its state and, once built, how long it took and its size."""

    env_id: str
    state: str
    kind: str | None = None
    build_seconds: float | None = None
    size_bytes: int | None = None  # the squashfs image, or the venv directory
    created: str | None = None
    log_tail: str = ""  # of a failed build

    def to_json(self) -> dict[str, Any]:
        return {"env_id": self.env_id, "state": self.state, "kind": self.kind,
                "build_seconds": self.build_seconds, "size_bytes": self.size_bytes,
                "created": self.created, "log_tail": self.log_tail}


@dataclass
class Failure:
    """A failed node (or env build): what went wrong, the end of its log, where to look."""

    name: str
    task: str
    label: str
    time: float
    error: str
    log_tail: str
    where: str  # the record (or build log) to read for more

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task, "label": self.label, "time": self.time,
                "error": self.error, "log_tail": self.log_tail, "where": self.where}


@dataclass
class Summary:
    """Nodes by (task, label) and state, envs, failures (newest first) of a store or graph."""

    kind: str  # "store" or "graph"
    root: Path
    counts: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)
    envs: list[EnvRow] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    runs: int | None = None  # run records (a store)
    damaged: list[Path] = field(default_factory=list)
    updated: float = field(default_factory=time.time)
    # a graph only:
    submission: str | None = None
    started: float | None = None
    done: bool | None = None

    def count(self, task: str, label: str, state: str, n: int = 1) -> None:
        self.counts.setdefault((task, label), Counter())[state] += n

    @property
    def states(self) -> Counter[str]:
        """Nodes by state, over every task and label."""
        total: Counter[str] = Counter()
        for c in self.counts.values():
            total.update(c)
        return +total

    def _by(self, index: int) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = {}
        for key, c in self.counts.items():
            out.setdefault(key[index], Counter()).update(c)
        return {k: +out[k] for k in sorted(out)}

    def by_task(self) -> dict[str, Counter[str]]:
        return self._by(0)

    def by_label(self) -> dict[str, Counter[str]]:
        return self._by(1)

    @property
    def cache_hits(self) -> int | None:
        """Nodes of a graph whose stored results were used (None for a store)."""
        return self.states[CACHED] if self.kind == "graph" else None

    def columns(self) -> list[str]:
        """The states a table shows: a graph's six always, then any other in use."""
        used = self.states
        always = GRAPH_STATES if self.kind == "graph" else (SUCCEEDED, FAILED)
        return [s for s in STATES if s in always or used[s]]

    @property
    def envs_built(self) -> int:
        return sum(1 for e in self.envs if e.state == "built")

    def to_json(self) -> dict[str, Any]:
        """Plain data: what ``/dscheduler.json`` serves for this store or graph."""

        def table(rows: dict[str, Counter[str]]) -> dict[str, dict[str, int]]:
            return {name: {s: c[s] for s in STATES if c[s]} for name, c in rows.items()}

        return {
            "kind": self.kind, "root": str(self.root), "updated": self.updated,
            "submission": self.submission, "started": self.started, "done": self.done,
            "runs": self.runs, "nodes": sum(self.states.values()),
            "cache_hits": self.cache_hits, "columns": self.columns(),
            "states": {s: n for s, n in self.states.items() if n},
            "by_task": table(self.by_task()), "by_label": table(self.by_label()),
            "envs": [e.to_json() for e in self.envs],
            "failures": [f.to_json() for f in self.failures],
            "damaged": [str(p) for p in self.damaged],
        }


# -- reading pieces of a store (shared with the dashboard plugin) --------------------


def file_tail(path: Path, lines: int | None = None) -> str:
    """The last ``lines`` lines of a text file (reads at most its last 16 kB); "" if absent."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return tail(text, int(settings.get("dashboard.log_lines", lines)))


def env_row(layout: Layout, env_id: str, state: str | None = None) -> EnvRow:
    """An env's row from ``envs/{env_id}/``: env.json when published, the failed log's tail.

    ``state`` (from a graph) wins over what the files say, except that a
    published env.json always makes the row ``built``.
    """
    paths = layout.env(env_id)
    try:
        published = read_record(paths.record)  # env.json, not a node record
    except StoreError:
        published = None
    if published is not None:
        sizes = published.get("sizes") or {}
        size = sizes.get("image_bytes") if published.get("kind") == "squashfs" else \
            sizes.get("venv_bytes")
        return EnvRow(env_id, "built", published.get("kind"),
                      (published.get("timings") or {}).get("total"),
                      int(size) if size is not None else None, published.get("created"))
    if state is None:
        if lease_held(layout.env_lease_path(env_id)):
            state = "building"
        elif paths.failed_log.exists():
            state = "failed"
        else:
            state = "incomplete"
    log = file_tail(paths.failed_log) if state == "failed" else ""
    return EnvRow(env_id, state, log_tail=log)


def failure_of(path: Path, record: Record, label: str, when: float | None = None
               ) -> Failure:
    """A failed node's :class:`Failure` from its record: the last attempt's error and log tail.

    Tasks in an env keep the tail of their log in the attempt; tasks in the
    worker have no log, so their traceback's tail stands in for it.
    """
    last = record.last
    log = str(last.log_tail or "")
    if not log and last.traceback:
        log = tail(str(last.traceback), int(settings.get("dashboard.log_lines")))
    if when is None:
        try:
            when = path.stat().st_mtime
        except OSError:
            when = time.time()
    return Failure(str(record.name or path.stem), str(record.task or path.stem),
                   label, when, str(last.error or record.damaged or ""), log,
                   str(last.log or path))


# -- the whole store -----------------------------------------------------------------


def summarize(layout: Layout, failures: int | None = None) -> Summary:
    """Read the store once: runs, envs, nodes by state per task and label, latest failures.

    Parameters
    ----------
    layout
        The store (a :class:`~dscheduler.store.Store` or its layout).
    failures
        How many of the newest failures to keep (default: setting ``dashboard.failures``).

    Counts come from the store index (docs/design.md §14.1), as ``store.runs()`` reads
    it, rebuilt from the records by the same rule when missing or unreadable: a node
    costs no file operation.  Its task is in its index path, its label is its run's
    (the run's entry keeps run.json's).  Files are read only for running nodes (a
    lease nobody holds: ``interrupted``), the newest failed records and envs.
    """
    keep = int(settings.get("dashboard.failures", failures))
    out = Summary("store", layout.root, runs=0)
    index = Index(layout)
    for _ in range(5):
        view = index.load()
        tally = _tally(layout, view.values)
        wanted = {tally.runs[r] for r in tally.bound if r in tally.runs} | set(tally.failed)
        table = index.table(view, _all_but(wanted)) if wanted else Table.of([])
        if table is not None:
            break
    else:
        raise StoreError(f"the index of {layout.root} kept changing while it was read")
    labels, ends = _labels_and_ends(layout, table)
    out.runs = len(tally.runs)
    counts: Counter[tuple[str, str, str]] = Counter()  # few keys, where runs are many
    for (task, run, state), n in tally.counts.items():
        counts[task, labels.get(run, NO_LABEL) if run else NO_LABEL, state] += n
    for (task, label, state), n in counts.items():
        out.count(task, label, state, n)
    out.damaged = sorted(tally.damaged)
    out.failures = _newest_failures(layout, tally.failed, ends, labels, keep)
    out.envs = [env_row(layout, env_id) for env_id in _env_ids(layout)]
    return out


def _all_but(wanted: set[str]) -> Callable[[str], bool]:
    """Which index paths the summaries table skips: every one but ``wanted``."""
    return lambda path: path not in wanted


@dataclass
class _Tally:
    """What the index's values alone say: nodes per (task, run_id, state), runs by
    run_id (their index paths), failed nodes (index paths), damaged records."""

    counts: Counter[tuple[str, str | None, str]] = field(default_factory=Counter)
    runs: dict[str, str] = field(default_factory=dict)
    bound: set[str] = field(default_factory=set)  # run_ids that have nodes
    failed: list[str] = field(default_factory=list)
    damaged: list[Path] = field(default_factory=list)


def _tally(layout: Layout, values: dict[str, str]) -> _Tally:
    out = _Tally()
    tasks: dict[str, str | None] = {}  # link name -> task: a store has few names
    for path, value in values.items():
        state, _, seq_key = value.partition(" ")
        if state == RUN:
            run = layout.run_of_id(path)
            if run is not None:
                out.runs[run] = path
            continue
        name = path.rpartition("/")[2]
        task = tasks[name] if name in tasks else tasks.setdefault(name, done_task(name))
        if task is None:
            continue
        if state == UNLINKED:  # a succeeded record whose .done link is not made (yet)
            state = SUCCEEDED
        elif state == RUNNING:  # its lease nobody holds: interrupted
            key = seq_key.partition(" ")[2]
            state = state_of(layout, Record(state=RUNNING, key=key)) or RUNNING
        elif state == FAILED:
            out.failed.append(path)
        elif state == DAMAGED:
            out.damaged.append(_record_path(layout, path))
        run = layout.run_of_node_id(path)
        if run is not None:
            out.bound.add(run)
        out.counts[task, run, state] += 1
    return out


def _labels_and_ends(layout: Layout, table: Table) -> tuple[dict[str, str], dict[str, Any]]:
    """Each run's label (by run_id) and each failed node's end (by index path)."""
    labels: dict[str, str] = {}
    ends: dict[str, Any] = {}
    for path, label, end in zip(table.paths(), table.column("label"), table.column("end"),
                                strict=True):
        run = layout.run_of_id(path)
        if run is not None:
            labels[run] = str(label or NO_LABEL)
        else:
            ends[path] = end
    return labels, ends


def _newest_failures(layout: Layout, failed: list[str], ends: dict[str, Any],
                     labels: dict[str, str], keep: int) -> list[Failure]:
    """The ``keep`` newest failures, by their last attempt's end (the record's mtime when
    it has none), read from their records."""
    ranked = []
    for path in failed:
        record_path = _record_path(layout, path)
        when = _epoch(ends.get(path))
        if when is None:
            try:
                when = record_path.stat().st_mtime
            except OSError:  # removed meanwhile
                continue
        ranked.append((when, path, record_path))
    ranked.sort(key=lambda r: r[0], reverse=True)
    out: list[Failure] = []
    for _, path, record_path in ranked:
        if len(out) >= keep:
            break
        try:
            record = read_node(record_path)
        except (StoreError, OSError):
            continue
        if record is not None:
            run = layout.run_of_node_id(path)
            out.append(failure_of(record_path, record, labels.get(run, NO_LABEL) if run
                                  else NO_LABEL))
    return out


def _record_path(layout: Layout, path: str) -> Path:
    """The record of the node whose index path (its ``.done`` link) is ``path``."""
    folder, _, name = path.rpartition("/")
    return NodePaths(layout.root / folder, done_task(name) or "").record


def _epoch(end: Any) -> float | None:
    """An attempt's ``end`` (ISO 8601) in seconds since the epoch; None without one."""
    if not end:
        return None
    try:
        return dt.datetime.fromisoformat(str(end)).timestamp()
    except ValueError:
        return None


def walk_summary(layout: Layout, failures: int | None = None) -> Summary:
    """The store summary read from its files, not its index: what :func:`summarize` did
    before the index (bench/status.py compares them; tests check they agree).

    The walk (:func:`~dscheduler.store.layout.walk_node_dirs`) skips outputs
    (``*.zarr`` ...) and ``logs`` directories.  Succeeded nodes cost no read beyond the
    directory listing; failed, running and cancelled records are parsed.
    """
    keep = int(settings.get("dashboard.failures", failures))
    out = Summary("store", layout.root, runs=0)
    failed: list[tuple[float, Path, Record, str]] = []
    labels: dict[str, str] = {}  # run directory -> label
    for top, bound in ((layout.runs_dir, True), (layout.tasks_dir, False)):
        for dirpath, filenames in walk_node_dirs([top]):
            label = NO_LABEL
            if bound:
                run_dir = _run_dir(top, dirpath)
                if run_dir is None:
                    continue
                if run_dir == dirpath and RUN_RECORD in filenames:
                    out.runs = (out.runs or 0) + 1
                    labels[run_dir] = _label(Path(dirpath) / RUN_RECORD)
                label = labels.get(run_dir, NO_LABEL)
            _count_dir(layout, out, Path(dirpath), filenames, label, failed)
    failed.sort(key=lambda f: f[0], reverse=True)
    out.failures = [failure_of(p, r, lbl, t) for t, p, r, lbl in failed[:keep]]
    out.envs = [env_row(layout, env_id) for env_id in _env_ids(layout)]
    return out

def _run_dir(runs_dir: Path, dirpath: str) -> str | None:
    """``runs/{env_id}/{config_hash}`` of a directory at or below it; None above it."""
    rel = os.path.relpath(dirpath, runs_dir).split(os.sep)
    if len(rel) < 2 or rel[0] == ".":
        return None
    return os.path.join(runs_dir, rel[0], rel[1])


def _label(run_record: Path) -> str:
    try:
        return str((read_record(run_record) or {}).get("label") or NO_LABEL)
    except StoreError:
        return NO_LABEL


def _count_dir(layout: Layout, out: Summary, folder: Path, filenames: Iterable[str],
               label: str, failed: list[tuple[float, Path, Record, str]]) -> None:
    names = set(filenames)
    for name in names:
        task = record_task(name)
        if task is None:
            continue
        if done_name(task) in names:
            out.count(task, label, SUCCEEDED)  # the link says so: no need to parse
            continue
        path = folder / name
        try:
            record = read_node(path, listed=True)
        except StoreError:
            out.damaged.append(path)
            out.count(task, label, DAMAGED)
            continue
        if record is None:
            continue
        state = state_of(layout, record) or str(record.state)  # running, lease free:
        out.count(task, label, state)  # interrupted (its process died)
        if state == FAILED:
            with contextlib.suppress(OSError):  # removed meanwhile
                failed.append((path.stat().st_mtime, path, record, label))


def _env_ids(layout: Layout) -> list[str]:
    """Env directories (temporary names left out) and envs whose build holds a lease."""
    found = set()
    if layout.envs_dir.is_dir():
        found = {d.name for d in layout.envs_dir.iterdir() if d.name[:1] != "."}
    if layout.locks_dir.is_dir():  # a build that has not made its directory yet
        found.update(e for e in layout.env_lease_ids()
                     if lease_held(layout.env_lease_path(e)))
    return sorted(found)
