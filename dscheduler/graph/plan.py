"""``ds.plan``: what will run, what is cached, which envs need building, and why.

Planning reads the store and writes only to its index (compaction, entries it
finds missing): it builds no env and contacts no cluster.  It must be fast on
a parallel filesystem too, where every metadata operation is a network round
trip (docs/design.md §10, §14), so a node is decided finished by the store's
index (:mod:`dscheduler.store.index`):
a few files say, for every node, whether it finished and with which key.
The truth stays in the store: after writing a succeeded record the executor
makes the symlink ``.{task}.done`` beside it, whose *target* is the node's
full key (``NodePaths.done``), and then adds the index entry.

A node the index does not call finished with its key has its record read
(and, if that says succeeded, its link): one that finished without making
it into the index (a crash between link and entry) is cached all the same,
one whose link is missing runs and its worker restores the link under the
node's lease (see :mod:`dscheduler.run.execute`).  A small graph in a large
store (fewer nodes than ``index.sparse_ratio`` times less than the index's
entries) is decided with one ``readlink`` per node instead.

Records are parsed only for nodes that will run, to say why (no record,
failed before, changed since the stored result, interrupted, in progress
elsewhere under a live lease, cancelled, finished without its link).
For those nodes the plan also resolves their envs (``cfg.env()``, once per
env_id: it may read a checkpoint's metadata) and lists the envs whose
``env.json`` is missing as to be built; a node whose env cannot be made is a
:class:`GraphError` here, before anything is submitted.  So is a graph in
which two different functions share a task name, or two nodes share an
output path.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import identity, settings
from ..envs import Env
from ..errors import ConfigError, DSchedulerError, GraphError, LeaseError, StoreError
from ..store import Store, store_of
from ..store.index import SUCCEEDED, View, finished
from ..store.index.entries import order
from ..store.lease import lease_held
from ..store.record import Record
from ..store.records import done_key, next_seq, read_node, record_seq
from . import drift, html
from .node import Node

NO_RECORD = "no record"
FAILED = "failed before"
FORCED = "forced"
NO_CACHE = "cache=False"
CHANGED = "changed since the stored result (task version, arguments or upstream)"
INTERRUPTED = "interrupted (its last attempt never finished)"
IN_PROGRESS = "in progress elsewhere (its lease is held): waited for, not run twice"
CANCELLED = "cancelled before"
DAMAGED = "its stored record or value is damaged"
UNLINKED = ("finished, but its .done link is missing: its task restores the link and "
            "reports it cached, without running it again")
UPSTREAM = "upstream will run"

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
    reasons: dict[str, str] = field(default_factory=dict)  # key -> why it runs
    envs: dict[str, Env] = field(default_factory=dict)  # env_id -> Env of nodes to run
    build: list[str] = field(default_factory=list)  # env_ids not yet published
    drift: dict[str, str] = field(default_factory=dict)  # key -> code drift (drift.py)

    @property
    def to_run(self) -> list[Node]:
        return [n for n in self.nodes if n.key in self.reasons]

    @property
    def cached(self) -> list[Node]:
        return [n for n in self.nodes if n.key not in self.reasons]

    def reason(self, node: Node) -> str | None:
        """Why ``node`` runs, or None when its stored result is used."""
        return self.reasons.get(node.key)

    @property
    def nothing_to_do(self) -> bool:
        return not self.reasons

    def summary(self) -> str:
        n_run = len(self.reasons)
        return (
            f"{len(self.nodes)} nodes: {n_run} to run, {len(self.nodes) - n_run} cached; "
            f"{len(self.build)} env(s) to build"
        )

    def __repr__(self) -> str:
        return f"<Plan {self.summary()}>"

    def _repr_html_(self) -> str:
        """Jupyter's view: nodes to run and cached per task, envs to build, the reasons."""
        parts = [html.heading(self.summary()),
                 html.by_task(self.nodes, lambda n: "to run" if n.key in self.reasons
                              else "cached", ("to run", "cached"))]
        if self.build:
            parts.append(html.table(["env to build"], [[e] for e in self.build]))
        why = Counter(self.reasons.values())
        if why:
            parts.append(html.table(["why it runs", "nodes"], why.most_common(10)))
        return "".join(parts)

    def explain(self, limit: int | None = 50) -> str:
        """A readable list of the nodes to run and why, envs to build first."""
        lines = [self.summary()]
        lines += [f"  build_env-{e}" for e in self.build]
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


def _why(node: Node, store: Store, listings: _Listings,
         missed: list[tuple[Node, Record]]) -> str | None:
    """Why ``node`` runs, from its record; None when it finished after all (its record
    says succeeded with its key and its link agrees: the index missed it, and
    ``missed`` gets the node and its record)."""
    paths = node.paths(store)
    if listings.absent(paths.dir):
        return NO_RECORD
    try:
        record = read_node(paths.record)
    except StoreError:
        return DAMAGED
    except OSError:
        return NO_RECORD
    if record is None:
        return NO_RECORD
    stored = record.key
    if stored != node.key:
        if isinstance(stored, str) and identity.short_id(stored) == node.key16:
            identity.check_collision(node.key, stored, str(paths.record))
        return CHANGED if record.state == SUCCEEDED else NO_RECORD
    if record.state == SUCCEEDED:
        if done_key(paths) != node.key:
            return UNLINKED  # docs/design.md §14.1, point 3
        missed.append((node, record))
        return None
    if record.state == "running" and _lease_held(store, node.key16):
        return IN_PROGRESS  # e.g. a detached graph still running it (docs/design.md §13.7)
    return {
        "failed": FAILED,
        "running": INTERRUPTED,
        "cancelled": CANCELLED,
        "damaged": DAMAGED,
    }.get(record.state or "", NO_RECORD)


def _lease_held(store: Store, key16: str) -> bool:
    return lease_held(store.node_lease_path(key16))


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
    missed: list[tuple[Node, Record]] = []
    for node in order:
        done = store.done_id(node.cfg.env_id if node.cfg else None,
                             node.cfg.config_hash if node.cfg else None,
                             node.case, node.task.name, node.key16)
        _check_unique(node, done, locations, writers, root)
        rerun_upstream = next((up for up in node.upstream if up.key in reasons), None)
        if force:
            reasons[node.key] = FORCED
        elif not node.task.options_.cache:
            reasons[node.key] = NO_CACHE
        elif rerun_upstream is not None:
            reasons[node.key] = f"{UPSTREAM} ({rerun_upstream.name})"
        elif not (finished(values.get(done), node.key) if values is not None
                  else is_done(root + done, node.key)):
            why = _why(node, store, listings, missed)
            if why is not None:
                reasons[node.key] = why
    if missed and values is not None:
        _restore_entries(store, missed, values)
    if not force:
        drift.check(result, UPSTREAM)  # code changed, version not (results.code_drift)
    _resolve_envs(result)
    if view is not None and view.wants_compaction():
        _compact(store)
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


def _restore_entries(store: Store, missed: list[tuple[Node, Record]],
                     values: dict[str, str]) -> None:
    """Index entries for nodes found finished without one, so that the next plan reads
    the index alone for them (docs/design.md §14.1).  A cache, so failing is logged.

    Usually the entry was lost (a worker killed between its .done link and its
    entry): it is appended again as it was, with the record's seq.  When a newer
    entry says "not finished" (an attempt announced dropping the result, then died
    before it did), a newer "finished" is appended only under the node's lease, so no
    attempt is running, and only if record and link still say finished.
    """
    entries = []
    try:
        for node, record in missed:
            paths = node.paths(store)
            value = values.get(store.node_id(paths))
            newer = order(value)[0] if value is not None else -1
            if newer < record_seq(record):
                entries.append(store.index.entry(paths, record, state=SUCCEEDED))
                continue
            lease = store.node_lease(node.key16, owner="plan (restoring an entry)")
            if not lease.try_acquire():
                continue  # an attempt runs: its own entries will tell
            try:
                again = read_node(paths.record) or Record()
                if again.key == node.key and again.state == SUCCEEDED \
                        and done_key(paths) == node.key:
                    entries.append(store.index.entry(
                        paths, again, seq=max(next_seq(again), newer + 1), state=SUCCEEDED))
            finally:
                lease.release()
        store.index.append(entries)
    except (OSError, LeaseError, StoreError) as err:
        log.warning("could not restore index entries of %s: %s", store.root, err)


def _compact(store: Store) -> None:
    """Fold the index's segments into its snapshot; a cache, so failing is only logged."""
    try:
        store.index.compact()
    except (OSError, LeaseError) as err:
        log.warning("could not compact the index of %s: %s", store.root, err)


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
            result.build.append(env_id)
