"""The scheduler side of the dscheduler page: a plugin that follows submitted graphs.

The driver knows a graph's plan (which nodes are cached, each node's task
and run label, the envs and the store); the scheduler sees the transitions
of its keys ``{task}-{key16}`` and ``build_env-{env_id}``.  At each submit
the driver sends the plan's part the page needs (:func:`install`, called
through ``client.run_on_scheduler``); :class:`DashboardPlugin` then moves
each node's state on every transition of its key, in O(1), on the
scheduler's event loop.  Files (env.json, failed records, whole-store
summaries) are read only when the page asks, in a thread
(:class:`Reader`), never in a transition.

Several drivers, graphs and stores may share one scheduler: graphs are kept
by submission id (the newest ``dashboard.graphs`` finished ones), a key
shared by two graphs moves both, and each store gets its own section.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from ... import settings
from ...errors import StoreError
from ...store.catalogue.status import (
    EnvRow,
    Failure,
    Summary,
    env_row,
    failure_of,
    file_tail,
    summarize,
)
from ...store.layout import Layout
from ...store.record import FAILED
from ...store.records import read_node
from . import web

log = logging.getLogger("dscheduler.dashboard")

NAME = "dscheduler-dashboard"
ENV_PREFIX = "build_env-"

#: A node's state once the scheduler moved its task to this state.
_NODE = {"released": "queued", "waiting": "queued", "queued": "queued", "no-worker": "queued",
         "processing": "running", "memory": "succeeded", "erred": "failed",
         "forgotten": "cancelled"}
_ENV = {**_NODE, "processing": "building", "memory": "built"}
#: States that a later release or forget of the task does not undo.
ENDED = frozenset({"cached", "succeeded", "failed", "blocked", "cancelled", "built"})
_IDLE = frozenset({"released", "waiting", "queued", "no-worker", "forgotten"})


def next_state(current: str, finish: str, env: bool = False, blocked: bool = False) -> str:
    """A node's (or env's) state after its task moved to ``finish``.

    A task released or forgotten after it ended (the driver dropped its
    futures, or a worker holding the result left) keeps its outcome; a task
    forgotten before it ended was cancelled.  ``blocked``: the task erred
    because a task it depends on failed.
    """
    if current in ENDED and finish in _IDLE:
        return current
    if finish == "erred" and blocked:
        return "blocked"
    return (_ENV if env else _NODE).get(finish, current)


@dataclass
class Frozen:
    """A copy of a graph's state taken on the event loop, for the reader thread."""

    submission: str
    root: str
    started: float
    done: bool
    counts: dict[tuple[str, str], Counter[str]]
    envs: dict[str, str]
    failures: list[tuple[float, str, str, str | None, str, str]]  # time key text record task label


class GraphView:
    """One submitted graph: its nodes' states, counted per (task, label), and its envs.

    ``meta`` is what :func:`dscheduler.run.dashboard.graph_meta` makes: the
    submission id, the store root, task and label names, counts of cached
    nodes and, per node to run, its key, task and label (indices) and its
    record's path in the store.
    """

    def __init__(self, meta: dict[str, Any], failures: int) -> None:
        self.submission: str = meta["submission"]
        self.root: str = meta["root"]
        self.started = time.time()
        self.tasks: list[str] = meta["tasks"]
        self.labels: list[str] = meta["labels"]
        self.counts: dict[tuple[int, int], Counter[str]] = {}
        self.nodes: dict[str, list[Any]] = {}  # key -> [task, label, state, record]
        self.envs: dict[str, str] = dict(meta["envs"])
        self.failures: deque[tuple[float, str, str]] = deque(maxlen=failures)
        for t, lbl, n in meta["cached"]:
            self.counts.setdefault((t, lbl), Counter())["cached"] += n
        for key, t, lbl, record in meta["run"]:
            self.nodes[key] = [t, lbl, "queued", record]
            self.counts.setdefault((t, lbl), Counter())["queued"] += 1
        # nodes and envs not ended yet: the graph is done at 0
        self.active = len(self.nodes) + sum(s not in ENDED for s in self.envs.values())

    def followed(self) -> list[str]:
        return [*self.nodes, *(ENV_PREFIX + e for e in self.envs if self.envs[e] not in ENDED)]

    def move(self, key: str, finish: str, blocked: bool, text: str) -> None:
        """Follow a transition of ``key`` to the scheduler state ``finish``."""
        node = self.nodes.get(key)
        if node is not None:
            old = node[2]
            new = next_state(old, finish, blocked=blocked)
            if new == old:
                return
            counts = self.counts[(node[0], node[1])]
            counts[old] -= 1
            counts[new] += 1
            node[2] = new
        else:
            env_id = key[len(ENV_PREFIX):]
            old = self.envs.get(env_id, "")
            new = next_state(old, finish, env=True, blocked=blocked)
            if new == old:
                return
            self.envs[env_id] = new
        self.active += (old in ENDED) - (new in ENDED)
        if new == "failed":
            self.failures.appendleft((time.time(), key, text))

    @property
    def done(self) -> bool:
        return self.active == 0

    def freeze(self) -> Frozen:
        counts = {(self.tasks[t], self.labels[lbl]): +c for (t, lbl), c in self.counts.items()}
        failures: list[tuple[float, str, str, str | None, str, str]] = []
        for when, key, text in self.failures:
            node = self.nodes.get(key)
            if node is None:  # an env build
                failures.append((when, key, text, None, "build_env", ""))
            else:
                failures.append((when, key, text, node[3], self.tasks[node[0]],
                                 self.labels[node[1]]))
        return Frozen(self.submission, self.root, self.started, self.done, counts,
                      dict(self.envs), failures)


class DashboardPlugin(SchedulerPlugin):
    """Follows dscheduler graphs on a scheduler and serves ``/dscheduler[.json]``."""

    name = NAME
    idempotent = True

    def __init__(self) -> None:
        self.scheduler: Any = None
        self.graphs: dict[str, GraphView] = {}
        self.keys: dict[Any, list[GraphView]] = {}
        self.reader = Reader()

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        web.add_routes(scheduler, NAME)

    def add_graph(self, meta: dict[str, Any]) -> None:
        """Follow a graph about to be submitted (its keys may already be known)."""
        view = GraphView(meta, int(settings.get("dashboard.failures")))
        self.graphs.pop(view.submission, None)
        self.graphs[view.submission] = view
        tasks = self.scheduler.tasks if self.scheduler is not None else {}
        for key in view.followed():
            self.keys.setdefault(key, []).append(view)
            ts = tasks.get(key)
            if ts is not None:  # another graph holds it: start from its state
                self._move([view], key, ts.state, ts)
        self._trim()

    def _trim(self) -> None:
        """Drop the oldest finished graphs beyond the setting ``dashboard.graphs``."""
        extra = len(self.graphs) - int(settings.get("dashboard.graphs"))
        for submission in [s for s, v in self.graphs.items() if v.done][:max(0, extra)]:
            view = self.graphs.pop(submission)
            for key in view.followed():
                views = self.keys.get(key)
                if views and view in views:
                    views.remove(view)
                    if not views:
                        del self.keys[key]

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        views = self.keys.get(key)
        if views is None:
            return
        ts = self.scheduler.tasks.get(key) if self.scheduler is not None else None
        self._move(views, key, finish, ts)
        if finish == "forgotten":
            del self.keys[key]

    def _move(self, views: list[GraphView], key: Any, finish: str, ts: Any) -> None:
        blame = getattr(ts, "exception_blame", None)
        blocked = blame is not None and blame.key != key
        text = str(getattr(ts, "exception_text", "") or "") if finish == "erred" else ""
        for view in views:
            view.move(key, finish, blocked, text)

    async def snapshot(self) -> dict[str, Any]:
        """What ``/dscheduler.json`` serves: every graph, newest first, and their stores."""
        frozen = [view.freeze() for view in reversed(self.graphs.values())]
        address = getattr(self.scheduler, "address", "")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.reader.read, frozen, address)


class Reader:
    """Reads the files behind a snapshot, in a thread, with caches.

    A published env.json never changes and a failed record is final for
    the attempt that failed, so both are read once; a whole store is read
    again after ``dashboard.store_interval`` seconds.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.envs: dict[tuple[str, str], EnvRow] = {}
        self.failures: dict[tuple[str, str, float], Failure] = {}
        self.stores: dict[str, tuple[float, dict[str, Any]]] = {}

    def read(self, frozen: list[Frozen], address: str) -> dict[str, Any]:
        with self.lock:
            graphs = [self._graph(g).to_json() for g in frozen]
            roots = list(dict.fromkeys(g.root for g in frozen))
            self.stores = {r: self.stores[r] for r in roots if r in self.stores}
            return {"scheduler": address, "updated": time.time(),
                    "refresh": float(settings.get("dashboard.refresh")),
                    "graphs": graphs, "stores": [self._store(root) for root in roots]}

    def _graph(self, g: Frozen) -> Summary:
        layout = Layout(g.root)
        out = Summary("graph", layout.root, counts=g.counts, submission=g.submission,
                      started=g.started, done=g.done)
        out.envs = [self._env(layout, env_id, state) for env_id, state in sorted(g.envs.items())]
        out.failures = [self._failure(layout, *f) for f in g.failures]
        return out

    def _env(self, layout: Layout, env_id: str, state: str) -> EnvRow:
        if state not in ("built", "failed"):
            return EnvRow(env_id, state)
        key = (str(layout.root), env_id)
        row = self.envs.get(key)
        if row is None or row.state != state:
            try:
                row = env_row(layout, env_id, state)
            except OSError as err:
                return EnvRow(env_id, state, log_tail=f"cannot read: {err}")
            if row.kind is not None or row.state == "failed":  # final: read once
                self.envs[key] = row
        return row

    def _failure(self, layout: Layout, when: float, key: str, text: str, record: str | None,
                 task: str, label: str) -> Failure:
        cache = (str(layout.root), key, when)
        found = self.failures.get(cache)
        if found is not None:
            return found
        if record is None:  # an env build: its failed log
            failed_log = layout.env(key[len(ENV_PREFIX):]).failed_log
            found = Failure(key, task, label, when, _first_line(text), file_tail(failed_log),
                            str(failed_log))
        else:
            path = layout.root / record
            try:
                data = read_node(path)
            except (StoreError, OSError) as err:  # the scheduler's text stands in for it
                log.debug("dashboard: %s", err)
                data = None
            if data is not None and data.state == FAILED:
                found = failure_of(path, data, label, when)
            else:
                found = Failure(key, task, label, when, _first_line(text), "", str(path))
        if len(self.failures) > 10_000:
            self.failures.clear()
        self.failures[cache] = found
        return found

    def _store(self, root: str) -> dict[str, Any]:
        now = time.monotonic()
        cached = self.stores.get(root)
        if cached is not None and now - cached[0] < float(settings.get("dashboard.store_interval")):
            return cached[1]
        try:
            data = summarize(Layout(root)).to_json()
        except Exception as err:  # unreadable from the scheduler's host: say so on the page
            data = {"kind": "store", "root": root, "error": f"{type(err).__name__}: {err}"}
        self.stores[root] = (now, data)
        return data


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


async def install(dask_scheduler: Any, graph: dict[str, Any] | None = None) -> str:
    """Run on the scheduler: add the plugin once, then follow ``graph``; the page's path."""
    plugin = dask_scheduler.plugins.get(NAME)
    if plugin is None:
        plugin = DashboardPlugin()
        await dask_scheduler.register_scheduler_plugin(plugin, NAME, idempotent=True)
    if graph is not None:
        plugin.add_graph(graph)
    return web.page_path(dask_scheduler)
