"""``ds.plan``: what will run, what is cached, which envs need building, and why.

Planning only reads the store (a missing index is rebuilt when read): it builds no env, contacts
no cluster, and leaves the index entries it found missing (``Plan.unindexed``) and a due
compaction (``Plan.compact_index``) to ``ds.compute`` (docs/design.md §5.1, §14.1).  A node is
finished when the index (:mod:`dscheduler.store.index`) says so with its key; otherwise its
record is read and, if that says succeeded, its ``.done`` link (target: the full key): such a
node is cached all the same, and one whose link is missing runs and its worker restores the link
(:mod:`dscheduler.run.execute`).  A graph with fewer nodes than the index's entries
divided by ``index.sparse_ratio`` is decided with one ``readlink`` per node instead.

For each node that will run the plan says why (no record, failed before, changed since, ...)
and resolves its env once per env_id (``cfg.env()``), listing envs without ``env.json`` as to be
built.  A :class:`GraphError` is raised here, before anything is submitted, for a node whose env
cannot be made, two functions sharing a task name, or two nodes sharing an output path.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import settings
from ..envs import Env
from ..errors import ConfigError, DSchedulerError, GraphError, LeaseError
from ..store import NodePaths, Store, store_of
from ..store.index import View, finished
from ..store.record import Record
from ..store.state import Reason, Why, judge, upstream_runs
from . import drift, html
from .node import Node

log = logging.getLogger("dscheduler.plan")


def flatten(items: Iterable[Any]) -> list[Node]:
    """Nodes from nodes and (nested) lists, tuples or dict values of nodes."""
    out: list[Node] = []
    stack = [iter(items)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, Node):
                out.append(item)
            elif isinstance(item, list | tuple | set | frozenset):
                stack.append(iter(item))
                break
            elif isinstance(item, dict):
                stack.append(iter(item.values()))
                break
            else:
                raise GraphError(
                    f"expected nodes (calls of @ds.task functions), got {type(item).__name__} "
                    f"{item!r:.60}"
                )
        else:
            stack.pop()
    return out


def toposort(targets: list[Node]) -> list[Node]:
    """Every node reachable from ``targets``, upstream first; a cycle is a GraphError."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    order: list[Node] = []
    for root in targets:
        if root.key in state:
            continue
        state[root.key] = 1
        stack = [(root, iter(root.upstream))]
        while stack:
            node, ups = stack[-1]
            for up in ups:
                seen = state.get(up.key)
                if seen is None:
                    state[up.key] = 1
                    stack.append((up, iter(up.upstream)))
                    break
                if seen == 1:
                    path = [n.name for n, _ in stack]
                    cycle = [*path[path.index(up.name):], up.name]
                    raise GraphError(f"the graph has a cycle: {' -> '.join(cycle)}")
            else:
                stack.pop()
                state[node.key] = 2
                order.append(node)
    return order


@dataclass
class Plan:
    """The decision for every node of a graph."""

    store: Store
    targets: list[Node]
    nodes: list[Node]  # every node, upstream first
    reasons: dict[str, Why] = field(default_factory=dict)  # key -> why it runs
    envs: dict[str, Env] = field(default_factory=dict)  # env_id -> Env of nodes to run
    envs_to_build: list[str] = field(default_factory=list)  # env_ids not yet published
    drift: dict[str, str] = field(default_factory=dict)  # key -> code drift (drift.py)
    #: Nodes found finished without their index entry (paths, record, the index's value
    #: for them or None): the index's to restore (``Index.restore``), not the plan's.
    unindexed: list[tuple[NodePaths, Record, str | None]] = field(default_factory=list)
    compact_index: bool = False  # the index read holds enough segments to compact

    @property
    def to_run(self) -> list[Node]:
        return [n for n in self.nodes if n.key in self.reasons]

    @property
    def cached(self) -> list[Node]:
        return [n for n in self.nodes if n.key not in self.reasons]

    def reason(self, node: Node) -> Why | None:
        """Why ``node`` runs, or None when its stored result is used."""
        return self.reasons.get(node.key)

    @property
    def nothing_to_do(self) -> bool:
        return not self.reasons

    def summary(self) -> str:
        n_run = len(self.reasons)
        return (
            f"{len(self.nodes)} nodes: {n_run} to run, {len(self.nodes) - n_run} cached; "
            f"{len(self.envs_to_build)} env(s) to build"
        )

    def __repr__(self) -> str:
        return f"<Plan {self.summary()}>"

    def _repr_html_(self) -> str:
        """Jupyter's view: nodes to run and cached per task, envs to build, the reasons."""
        parts = [html.heading(self.summary()),
                 html.by_task(self.nodes, lambda n: "to run" if n.key in self.reasons
                              else "cached", ("to run", "cached"))]
        if self.envs_to_build:
            parts.append(html.table(["env to build"], [[e] for e in self.envs_to_build]))
        why = Counter(self.reasons.values())
        if why:
            parts.append(html.table(["why it runs", "nodes"], why.most_common(10)))
        return "".join(parts)

    def explain(self, limit: int | None = 50) -> str:
        """A readable list of the nodes to run and why, envs to build first."""
        lines = [self.summary()]
        lines += [f"  build_env-{e}" for e in self.envs_to_build]
        shown = self.to_run if limit is None else self.to_run[:limit]
        lines += [f"  {n.name}{f' [{n.case}]' if n.case else ''}: {self.reasons[n.key]}"
                  for n in shown]
        if len(shown) < len(self.reasons):
            lines.append(f"  ... and {len(self.reasons) - len(shown)} more")
        drifted = [n for n in self.nodes if n.key in self.drift and n.key not in self.reasons]
        if drifted:
            lines.append(f"{len(drifted)} cached node(s) whose code changed, version unchanged:")
            lines += [f"  {n.name}{f' [{n.case}]' if n.case else ''}: {self.drift[n.key]}"
                      for n in (drifted if limit is None else drifted[:limit])]
        return "\n".join(lines)


def is_done(marker: str, key: str) -> bool:
    try:
        return os.readlink(marker) == key
    except OSError:
        return False


class _Listings:
    """Which node directories exist, from one listing of their parent (a run, or
    ``tasks/{task}``) once more than ``after`` of its nodes were asked about.

    A new graph's nodes then cost one listing per run or task instead of an open
    per node, a round trip each on a parallel filesystem; a few new nodes beside
    many stored ones still cost one open each, never a listing of them all.
    """

    def __init__(self, after: int = 4) -> None:
        self.after = after
        self.asked: dict[str, int] = {}
        self.names: dict[str, frozenset[str] | None] = {}  # None: could not list

    def absent(self, node_dir: Path) -> bool:
        """True when ``node_dir`` is known not to exist (so it holds no record)."""
        parent = str(node_dir.parent)
        if parent not in self.names:
            asked = self.asked[parent] = self.asked.get(parent, 0) + 1
            if asked <= self.after:
                return False
            try:
                self.names[parent] = frozenset(os.listdir(parent))
            except FileNotFoundError:
                self.names[parent] = frozenset()
            except OSError:
                self.names[parent] = None
        names = self.names[parent]
        return names is not None and node_dir.name not in names


def _why(node: Node, store: Store, listings: _Listings) -> tuple[Why | None, Record | None]:
    """Why ``node`` runs, from its record (:func:`~dscheduler.store.state.judge`); None
    when it finished after all, with the record that says so (the index missed it)."""
    paths = node.paths(store)
    if listings.absent(paths.dir):
        return Why(Reason.NO_RECORD), None
    judged = judge(store, paths, node.key)
    return judged.why, judged.record


def plan(*nodes: Any, store: Store | str | os.PathLike[str] | None = None,
         force: bool = False) -> Plan:
    """Decide every node reachable from ``nodes``: run (and why) or cached.

    Parameters
    ----------
    *nodes
        Nodes, or (nested) lists, tuples and dicts of nodes.
    store
        The store to look in (a Store, a path, or None for the setting ``store``).
    force
        Run every node again, stored results or not.

    Returns
    -------
    Plan
        ``to_run`` with a reason per node, ``cached``, and the envs to build.

    Raises
    ------
    GraphError
        A cycle, a node whose env cannot be made, two different functions
        under one task name, or two nodes writing one output path.  Nothing
        has been built or submitted.
    """
    store = store_of(store)
    if store.root.exists() and not store.root.is_dir():
        raise ConfigError(f"store {store.root} is a file, not a directory: pass the store's "
                          "directory (--store, ds.Store(path)) or a path to create one at")
    targets = flatten(nodes)
    order = toposort(targets)
    result = Plan(store=store, targets=targets, nodes=order)
    reasons = result.reasons
    locations: dict[str, Node] = {}
    writers: dict[str, Node] = {}
    view = None if force else _index(store, len(order))
    values = view.values if view is not None else None
    root = f"{store.root}/"
    listings = _Listings()
    for node in order:
        done = store.done_id(node.cfg.env_id if node.cfg else None,
                             node.cfg.config_hash if node.cfg else None,
                             node.case, node.task.name, node.key16)
        _check_unique(node, done, locations, writers, root)
        rerun_upstream = upstream_runs(node.upstream, reasons)
        if force:
            reasons[node.key] = Why(Reason.FORCED)
        elif not node.task.options_.cache:
            reasons[node.key] = Why(Reason.NO_CACHE)
        elif rerun_upstream is not None:
            reasons[node.key] = rerun_upstream
        elif not (finished(values.get(done), node.key) if values is not None
                  else is_done(root + done, node.key)):
            why, record = _why(node, store, listings)
            if why is not None:
                reasons[node.key] = why
            elif values is not None and record is not None:
                result.unindexed.append((node.paths(store), record, values.get(done)))
    if not force:
        drift.check(result)  # code changed, version not (results.code_drift)
    _resolve_envs(result)
    result.compact_index = view is not None and view.wants_compaction()
    return result


def _index(store: Store, n_nodes: int) -> View | None:
    """The store's index, or None to decide with one readlink per node (a small graph in
    a large store, or an index that cannot be read or made here)."""
    try:
        size = store.index.size()
        if size is not None and n_nodes * int(settings.get("index.sparse_ratio")) < size:
            return None
        return store.index.load()
    except (OSError, LeaseError) as err:
        log.warning("planning without the index of %s: %s", store.root, err)
        return None


def _check_unique(node: Node, done: str, locations: dict[str, Node],
                  writers: dict[str, Node], root: str) -> None:
    """One function per task name, one node per output path, in one graph."""
    first = locations.setdefault(node.task.name, node)
    if first.task.location != node.task.location:
        raise GraphError(
            f"two different functions are both task {node.task.name!r}: "
            f"{first.task.location} ({first.name}) and {node.task.location} ({node.name}); "
            "give one of them another name with @ds.task(name=...)"
        )
    other = writers.setdefault(done, node)
    if other.key != node.key:
        raise GraphError(
            f"{other.name} and {node.name} would write the same outputs "
            f"({root}{done.rsplit('/', 1)[0]}/{node.task.name}.*): same task, run and case but "
            f"another version or arguments ({other.task.version!r} vs {node.task.version!r}); "
            "keep one of them in this graph"
        )


def _resolve_envs(result: Plan) -> None:
    """Envs of the nodes to run (one cfg.env() per env_id), and which are unbuilt."""
    problems: list[str] = []
    for node in result.to_run:
        if node.env_id is None or node.env_id in result.envs:
            continue
        try:
            env = node.env()
        except DSchedulerError as err:
            problems.append(f"{node.name}: {err}")
            result.envs[node.env_id] = None  # type: ignore[assignment]  # report once
            continue
        if env is not None:
            result.envs[node.env_id] = env
    if problems:
        raise GraphError("nodes with a missing environment:\n  " + "\n  ".join(problems))
    for env_id in result.envs:
        if not result.store.env(env_id).record.exists():
            result.envs_to_build.append(env_id)
