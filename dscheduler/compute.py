"""``ds.compute`` and ``ds.submit``: plan, prune, submit to Dask, collect.

1. :func:`dscheduler.plan.plan` decides every node; a graph with nothing to
   run returns at once, without starting or contacting any cluster.
2. Specs for the nodes to run are made (and pickled) before anything is
   submitted, so a bad graph fails whole, with nothing half-sent.
3. One Dask task per env to build, key ``build_env-{env_id}``, and one per
   node, key ``{task}-{key16}``, submitted as one graph (``client.get`` of a
   HighLevelGraph whose layers carry resources, retries and priority as
   annotations); a node's upstream keys and its env build are its
   arguments, so Dask orders them.  Their results are small outcomes; values
   stay in the store and downstream tasks read them from there.
4. After the wait, per-node state, in graph order: ``succeeded`` (ran now),
   ``cached`` (stored before, or finished by another driver meanwhile),
   ``failed`` (its own attempts failed), ``blocked`` (an upstream node or its
   env build failed; Dask never ran it), ``cancelled``.  Failure and blocking
   are told apart by the graph, not by the exception Dask propagates, so the
   distinction survives Dask's error propagation.

On the embedded local cluster, resource annotations are dropped (with a
warning): a single machine's workers declare no resources, and a task that
asks for one would otherwise wait forever.
"""

from __future__ import annotations

import inspect
import sys
import uuid
import warnings
from collections import Counter
from typing import Any

from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from . import atomic, settings
from .cluster import get_client, is_local
from .errors import GraphError, TaskError
from .execute import NodeSpec, build_task, cancel_path, node_task
from .payload import Ref, dumps, function_for, map_nested
from .plan import FORCED, NO_CACHE, Plan, plan
from .results import load_value
from .store import Store
from .task import Node

STATES = ("succeeded", "cached", "failed", "blocked", "cancelled")


def _show_progress(progress: bool | None) -> bool:
    """Argument, else setting ``compute.progress``; "auto": a terminal or a notebook."""
    show = settings.get("compute.progress", progress)
    if show != "auto":
        return bool(show)
    if "ipykernel" in sys.modules:
        return True
    # A redirected stream (CI logs, a pipe) would get one line per redraw.
    return sys.stdout.isatty()


def _refs(value: Any, store: Store) -> Any:
    """Upstream nodes inside ``value`` -> Refs the worker resolves from the store."""
    return map_nested(
        value, lambda v: Ref(v.name, v.key, v.paths(store)) if isinstance(v, Node) else v
    )


def make_spec(node: Node, p: Plan, submission: str) -> NodeSpec:
    """The worker's description of ``node``; fails here, in the driver, if it cannot travel."""
    store = p.store
    bound = inspect.BoundArguments(node.task.signature, _refs(node.arguments, store))
    try:
        payload = dumps((function_for(node.task), bound.args, bound.kwargs))
    except Exception as err:
        raise GraphError(
            f"{node.name}: the task's function or arguments cannot be sent to a worker "
            f"({type(err).__name__}: {err})"
        ) from None
    return NodeSpec(
        name=node.name,
        key=node.key,
        task=node.task.name,
        version=node.task.version,
        store=store,
        paths=node.paths(store),
        payload=payload,
        env=p.envs.get(node.env_id) if node.env_id else None,
        env_id=node.env_id,
        run_id=node.run_id,
        case=node.case,
        upstream=[up.key for up in node.upstream],
        timeout=node.task.options_.timeout,
        submission=submission,
        rerun=p.reasons.get(node.key) in (FORCED, NO_CACHE),
    )


class Results:
    """What a ``ds.compute`` did: per-node state, values, records and errors."""

    def __init__(self, p: Plan, states: dict[str, str], errors: dict[str, str],
                 envs: dict[str, str], env_errors: dict[str, str]) -> None:
        self.plan = p
        self.store = p.store
        self.states = states  # node key -> state
        self.errors = errors  # node key -> error text (failed and blocked nodes)
        self.envs = envs  # env_id -> built | reused | failed | cancelled
        self.env_errors = env_errors
        self._by_key = {n.key: n for n in p.nodes}

    def _node(self, node: Node | str) -> Node:
        key = node.key if isinstance(node, Node) else node
        found = self._by_key.get(key) or next(
            (n for n in self.plan.nodes if n.name == key), None)
        if found is None:
            raise KeyError(f"{node!r} is not a node of this graph")
        return found

    def state(self, node: Node | str) -> str:
        return self.states[self._node(node).key]

    def record(self, node: Node | str) -> dict[str, Any] | None:
        found = self._node(node)
        return atomic.read_json(found.paths(self.store).record)

    def value(self, node: Node | str) -> Any:
        """The stored value (Zarr results open lazily)."""
        found = self._node(node)
        state = self.states[found.key]
        if state not in ("succeeded", "cached"):
            raise TaskError(f"{found.name} has no value: it {state}", self.record(found))
        record = self.record(found) or {}
        return load_value(found.paths(self.store), record.get("output"))

    def __getitem__(self, node: Node | str) -> Any:
        return self.value(node)

    def values(self) -> list[Any]:
        """Values of the nodes passed to compute, in order."""
        return [self.value(n) for n in self.plan.targets]

    def nodes(self, state: str) -> list[Node]:
        return [n for n in self.plan.nodes if self.states[n.key] == state]

    @property
    def failed(self) -> list[Node]:
        return self.nodes("failed")

    @property
    def blocked(self) -> list[Node]:
        return self.nodes("blocked")

    def counts(self) -> dict[str, int]:
        c = Counter(self.states.values())
        return {s: c[s] for s in STATES if c[s]}

    @property
    def ok(self) -> bool:
        return all(s in ("succeeded", "cached") for s in self.states.values())

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items()) or "empty"
        builds = Counter(self.envs.values())
        envs = ", ".join(f"{n} {s}" for s, n in sorted(builds.items()))
        return f"<Results {counts}{'; envs: ' + envs if envs else ''}>"

    def raise_for_status(self) -> Results:
        """Raise TaskError listing every failure with its traceback; else return self."""
        if self.ok and not self.env_errors:
            return self
        parts = []
        for env_id, err in self.env_errors.items():
            parts.append(f"build_env-{env_id} failed:\n{err}")
        for node in self.failed:
            parts.append(self.errors.get(node.key, f"{node.name} failed"))
        blocked = self.blocked
        if blocked:
            names = ", ".join(n.name for n in blocked[:10])
            more = f" and {len(blocked) - 10} more" if len(blocked) > 10 else ""
            parts.append(f"{len(blocked)} node(s) blocked by these failures: {names}{more}")
        cancelled = self.nodes("cancelled")
        if cancelled:
            parts.append(f"{len(cancelled)} node(s) cancelled")
        summary = f"{len(self.failed)} failed, {len(blocked)} blocked: " + repr(self)
        raise TaskError(summary + "\n\n" + "\n\n".join(parts))


class Handle:
    """A submitted graph: ``wait()``, ``status()``, ``cancel()``."""

    def __init__(self, p: Plan, client: Any, futures: dict[str, Any],
                 builds: dict[str, Any], submission: str) -> None:
        self.plan = p
        self.client = client
        self.futures = futures  # node key -> Future
        self.builds = builds  # env_id -> Future
        self.submission = submission
        self._results: Results | None = None

    def _all(self) -> list[Any]:
        return [*self.builds.values(), *self.futures.values()]

    def status(self) -> dict[str, int]:
        """Counts of node states so far: cached, pending, finished, error, cancelled."""
        c: Counter[str] = Counter()
        c["cached"] = len(self.plan.nodes) - len(self.futures)
        for future in self.futures.values():
            c[future.status] += 1
        return {k: v for k, v in c.items() if v}

    def cancel(self) -> None:
        """Stop the graph: cancel its futures and kill its running task subprocesses."""
        store = self.plan.store
        atomic.write_bytes(cancel_path(store, self.submission), b"cancelled\n")
        if self.client is not None:
            self.client.cancel(self._all(), force=True)

    def wait(self, timeout: float | None = None, progress: bool | None = None) -> Results:
        """Wait for every node, then collect states; the futures are released."""
        if self._results is not None:
            return self._results
        futures = self._all()
        if futures:
            from distributed import wait

            if _show_progress(progress):
                from distributed.diagnostics.progressbar import progress as bar

                bar(futures, multi=True)
            try:
                wait(futures, timeout=timeout)
            except _cancelled_errors():
                pass  # cancelled futures are reported per node below
        self._results = self._collect()
        for future in futures:
            future.release()  # a later compute of the same keys must run afresh
        self.futures, self.builds = {}, {}
        if self.client is not None:
            _flush_releases(self.client)
        return self._results

    def _collect(self) -> Results:
        p = self.plan
        envs: dict[str, str] = {}
        env_errors: dict[str, str] = {}
        done_builds = {e: f for e, f in self.builds.items() if f.status == "finished"}
        built = dict(zip(done_builds, self.client.gather(list(done_builds.values())),
                         strict=True)) if done_builds else {}
        for env_id, future in self.builds.items():
            if env_id in built:
                envs[env_id] = "built" if getattr(built[env_id], "built", False) else "reused"
            elif future.status == "cancelled":
                envs[env_id] = "cancelled"
            else:
                envs[env_id] = "failed"
                env_errors[env_id] = _error_text(future)

        finished = {k: f for k, f in self.futures.items() if f.status == "finished"}
        outcomes = dict(zip(finished, self.client.gather(list(finished.values())),
                            strict=True)) if finished else {}
        states: dict[str, str] = {}
        errors: dict[str, str] = {}
        for node in p.nodes:
            future = self.futures.get(node.key)
            if future is None:
                states[node.key] = "cached"
                continue
            if node.key in outcomes:
                states[node.key] = outcomes[node.key]["state"]
                continue
            bad = [up for up in node.upstream if states.get(up.key) not in ("succeeded", "cached")]
            if node.env_id in env_errors:
                states[node.key] = "blocked"
                errors[node.key] = f"{node.name} blocked: build_env-{node.env_id} failed"
            elif bad:
                states[node.key] = "blocked"
                why = f"upstream {bad[0].name} {states[bad[0].key]}"
                errors[node.key] = f"{node.name} blocked: {why}"
            elif future.status == "cancelled":
                states[node.key] = "cancelled"
            else:
                states[node.key] = "failed"
                errors[node.key] = _error_text(future)
        return Results(p, states, errors, envs, env_errors)


async def _noop() -> None:
    return None


def _flush_releases(client: Any) -> None:
    """Let the client's loop process pending future releases before we go on.

    ``Future.release`` only queues the release on the client's event loop;
    a graph submitted before it runs would find the old future of the same
    key (same content hash) still held and get its stale result instead of a
    new run.  Running a no-op on that loop waits for every queued callback.
    """
    client.sync(_noop)


def _cancelled_errors() -> tuple[type[BaseException], ...]:
    """What ``distributed.wait`` raises for cancelled futures (newer releases only)."""
    from distributed import client

    found = getattr(client, "FuturesCancelledError", None)
    return (found,) if isinstance(found, type) else ()


def _error_text(future: Any) -> str:
    try:
        err = future.exception(timeout=30)
    except Exception as exc:  # cancelled or lost meanwhile
        return f"{future.key}: {type(exc).__name__}: {exc}"
    return f"{type(err).__name__}: {err}" if not isinstance(err, TaskError) else str(err)


def submit(*nodes: Any, store: Store | str | None = None, cluster: Any = "local",
           force: bool = False) -> Handle:
    """Plan ``nodes`` and submit what must run; returns at once with a :class:`Handle`."""
    store = store if isinstance(store, Store) else Store(store)
    p = plan(*nodes, store=store, force=force)
    submission = uuid.uuid4().hex[:16]
    if p.nothing_to_do:
        return Handle(p, None, {}, {}, submission)
    to_run = p.to_run
    specs = {node.key: make_spec(node, p, submission) for node in to_run}
    store.ensure()
    written: set[str] = set()
    for node in to_run:
        if node.cfg is not None and node.cfg.run_id not in written:
            written.add(node.cfg.run_id)
            store.write_run(node.cfg)

    client = get_client(cluster)
    _flush_releases(client)
    graph, annotations, dropped = _graph(p, specs, is_local(client))
    if dropped:
        warnings.warn(f"the local cluster ignores resource requests (tasks {sorted(dropped)})",
                      stacklevel=2)
    keys = [f"build_env-{e}" for e in p.build] + [n.name for n in to_run]
    layers = {f"dscheduler-{i}": MaterializedLayer(dsk, annotations=ann)
              for i, (dsk, ann) in enumerate(zip(graph, annotations, strict=True))}
    names = list(layers)
    # Layer dependencies are only for dask's bookkeeping: each layer may use any earlier one.
    deps = {name: set(names[:i]) for i, name in enumerate(names)}
    got = client.get(HighLevelGraph(layers, deps), keys, sync=False)
    builds = dict(zip(p.build, got[: len(p.build)], strict=True))
    futures = {n.key: f for n, f in zip(to_run, got[len(p.build):], strict=True)}
    return Handle(p, client, futures, builds, submission)


def _graph(p: Plan, specs: dict[str, NodeSpec], local: bool
           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], set[str]]:
    """Task dicts grouped by their annotations, env builds first; dropped resource asks.

    One graph for the whole submission: a ``client.submit`` per node costs the
    scheduler an update per node, a third of its time for thousands of tiny
    tasks.  Annotations (retries, resources, priority) live on layers, so
    nodes are grouped by them; layers keep graph order.
    """
    retries_default = settings.get("task.retries")
    store = p.store
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    builds = {f"build_env-{e}": (build_task, store, p.envs[e]) for e in p.build}
    graph: list[dict[str, Any]] = [builds] if builds else []
    annotations: list[dict[str, Any]] = [{"priority": 1_000_000}] if builds else []
    dropped: set[str] = set()
    running = set(specs)
    for node in p.to_run:
        opts = node.task.options_
        resources = opts.resources
        if resources and local:
            dropped.add(node.task.name)
            resources = None
        retries = opts.retries if opts.retries is not None else retries_default
        group_key = (retries, opts.priority, tuple(sorted((resources or {}).items())))
        if group_key not in groups:
            groups[group_key] = {}
            graph.append(groups[group_key])
            ann: dict[str, Any] = {"retries": retries, "priority": opts.priority}
            if resources:
                ann["resources"] = resources
            annotations.append(ann)
        build = f"build_env-{node.env_id}" if node.env_id in p.build else None
        ups = [up.name for up in node.upstream if up.key in running]
        groups[group_key][node.name] = (node_task, specs[node.key], build, *ups)
    return graph, annotations, dropped


def compute(*nodes: Any, store: Store | str | None = None, cluster: Any = "local",
            force: bool = False, progress: bool | None = None) -> Results:
    """Plan, prune, run and wait; a :class:`Results` (call ``raise_for_status()``)."""
    handle = submit(*nodes, store=store, cluster=cluster, force=force)
    return handle.wait(progress=progress)
