"""``ds.compute`` and ``ds.submit``: plan, prune, submit to Dask, collect (docs/design.md §5).

1. :func:`dscheduler.graph.plan` decides every node; nothing to run returns at once, without
   starting or contacting a cluster.  A store that cannot be written is a StoreError here.
2. Node specs are made and pickled before any submit (:mod:`dscheduler.run.nodespec`).
3. One graph is submitted: a task ``build_env-{env_id}`` per env to build and ``{task}-{key16}``
   per node, layers annotated with resources, retries and priority, upstream keys and the env
   build as arguments.  Tasks return small outcomes; values stay in the store.
4. :class:`~dscheduler.run.handle.Handle` waits and collects the states.

On the embedded cluster every task asks ``CPU: 1``, the tasks' own resource asks are dropped with
a note in the summary (§5.2) and workers log no "Compute Failed" for dscheduler tasks (§5.6);
elsewhere resource asks reach the scheduler (``resources={"GPU": 1}`` goes to a GPU job, §13.2).
``detach=True`` hands the graph to a scheduler that outlives the driver (``fire_and_forget``,
``dscheduler cluster up``: §13.7).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import uuid
import weakref
from typing import Any

from .. import settings
from ..errors import LeaseError, StoreError
from ..graph import Plan, plan
from ..store import Store, atomic, store_of
from . import dashboard
from .clusters import check_detachable, check_resources, get_client, is_local
from .execute import build_task, node_task
from .handle import Handle, Results, flush_releases
from .nodespec import NodeSpec, make_specs

StoreArg = Store | str | os.PathLike[str] | None

#: What every task asks of the embedded cluster's workers, which offer one ``CPU`` per thread.
CPU = {"CPU": 1}
#: Clients whose workers drop "Compute Failed" logs of dscheduler tasks (:func:`_quiet_class`).
_quieted: weakref.WeakSet[Any] = weakref.WeakSet()


def _tidy_index(p: Plan) -> None:
    """Put back the index entries ``p`` found missing and compact the index when its
    segments say so: planning writes nothing, the call that runs a graph does
    (docs/design.md §14.1).  The index is a cache, so failing is only logged."""
    if p.unindexed:
        p.store.index.restore(p.unindexed, p.store.node_lease)
    if p.compact_index:
        try:
            p.store.index.compact()
        except (OSError, LeaseError) as err:
            logging.getLogger("dscheduler.index").warning(
                "could not compact the index of %s: %s", p.store.root, err)


def _check_writable(store: Store) -> None:
    """A StoreError naming the store and the fix when a file cannot be written in its
    ``locks/``: every task takes its lease there first, so each would fail on its own."""
    probe = atomic.temp_sibling(store.locks_dir / "write-check")
    try:
        fd = atomic.create_file(probe)
        try:
            os.write(fd, b"dscheduler write check\n")  # a full disk fails here, not at open
        finally:
            os.close(fd)
    except OSError as err:
        raise StoreError(
            f"cannot write to the store {store.root}: {err.strerror} (in {store.locks_dir}); "
            "every task writes its lease and record there: make it writable (mount, "
            "permissions, free space) or pass another store (--store, ds.Store(path))"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def _quiet_task_failure(record: logging.LogRecord) -> bool:
    """False for distributed.worker's "Compute Failed" of a dscheduler task (a traceback
    per failure, on the driver's stderr for the embedded cluster); the task's record and
    the driver's report of every failure say it once (docs/design.md §5.6)."""
    if not str(record.msg).startswith("Compute Failed"):
        return True
    args = record.args if isinstance(record.args, tuple) else ()
    task = str(args[2]) if len(args) > 2 else ""
    return " node_task(" not in task and " build_task(" not in task


@functools.cache
def _quiet_class() -> type:
    """The worker plugin ``_Quiet``, made on first use: its base class is distributed's,
    which a process that never talks to a scheduler does not import (docs/design.md §4)."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class _Quiet(WorkerPlugin):
        """Installs :func:`_quiet_task_failure` on distributed.worker's logger of each
        worker."""

        name = "dscheduler-quiet-task-failures"

        def setup(self, worker: Any) -> None:
            logging.getLogger("distributed.worker").addFilter(_quiet_task_failure)

        def teardown(self, worker: Any) -> None:
            logging.getLogger("distributed.worker").removeFilter(_quiet_task_failure)

    return _Quiet


def _quiet_failures(client: Any) -> None:
    """Register ``_Quiet`` (:func:`_quiet_class`) on ``client``'s workers, once per client."""
    if client not in _quieted:
        client.register_plugin(_quiet_class()())
        _quieted.add(client)


def submit(*nodes: Any, store: StoreArg = None, cluster: Any = "local",
           force: bool = False, detach: bool = False) -> Handle:
    """Plan ``nodes`` and submit what must run; return at once.

    Parameters
    ----------
    *nodes
        Nodes, or (nested) lists, tuples and dicts of nodes.
    store
        Where results live (a Store, a path, or None for the setting ``store``).
    cluster
        ``"local"`` (the embedded cluster, started on first use), ``"slurm"``
        (this process's SLURM cluster, started on first use), ``"store"``
        (the cluster ``dscheduler cluster up`` started for ``store``), a
        scheduler address ``tcp://host:port``, a ``distributed.Client`` or a
        cluster such as ``ds.slurm_cluster()``.
    force
        Run every node again, stored results or not.
    detach
        Keep the graph running after this process exits (a scheduler that
        outlives it is needed: ``cluster="store"`` or an address).  A later
        ``ds.compute`` of the same nodes waits for them and collects them.

    Returns
    -------
    Handle
        ``wait()``, ``status()``, ``cancel()``.  A graph with nothing to run
        contacts no cluster.

    Raises
    ------
    GraphError, ConfigError
        Before anything is submitted (see :func:`dscheduler.plan`); also a
        bad SLURM option, or ``detach=True`` with a scheduler inside this process.
    """
    store = store_of(store)
    p = plan(*nodes, store=store, force=force)
    _tidy_index(p)
    submission = uuid.uuid4().hex[:16]
    if p.nothing_to_do:
        return Handle(p, None, {}, {}, submission)
    to_run = p.to_run
    specs = make_specs(p, submission)
    store.ensure()
    _check_writable(store)
    written: set[str] = set()
    for node in to_run:
        if node.cfg is not None and node.cfg.run_id not in written:
            written.add(node.cfg.run_id)
            store.write_run(node.cfg)

    client = get_client(cluster, store)
    if detach:
        check_detachable(client)
    check_resources(client, {n.task.name: n.task.options_.resources or {} for n in to_run})
    if is_local(client):
        _quiet_failures(client)
    flush_releases(client)
    # The page follows this graph from its first transition (idempotent install).
    dashboard.install(client, dashboard.graph_meta(p, specs, submission))
    graph, annotations, dropped = _graph(p, specs, is_local(client))
    keys = [f"build_env-{e}" for e in p.envs_to_build] + [n.name for n in to_run]
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

    layers = {f"dscheduler-{i}": MaterializedLayer(dsk, annotations=ann)
              for i, (dsk, ann) in enumerate(zip(graph, annotations, strict=True))}
    names = list(layers)
    # Layer dependencies are only for dask's bookkeeping: each layer may use any earlier one.
    deps = {name: set(names[:i]) for i, name in enumerate(names)}
    got = client.get(HighLevelGraph(layers, deps), keys, sync=False)
    if detach:
        from distributed import fire_and_forget

        fire_and_forget(got)
    builds = dict(zip(p.envs_to_build, got[: len(p.envs_to_build)], strict=True))
    futures = {n.key: f for n, f in zip(to_run, got[len(p.envs_to_build):], strict=True)}
    handle = Handle(p, client, futures, builds, submission)
    if dropped:
        handle.notes.append(resources_note(dropped))
    return handle


def resources_note(dropped: dict[tuple[str, str], int]) -> str:
    """The run summary's one sentence on resource asks the local cluster did not honour:
    ``dropped`` counts nodes by (task, resources asked)."""
    asks = "; ".join(f"{n} {task} node{'s' if n > 1 else ''} asked for {what}"
                     for (task, what), n in sorted(dropped.items()))
    return (f"note: the local cluster runs every task on its CPUs ({asks}); "
            "a SLURM cluster honours resources (--cluster slurm)")


def _graph(p: Plan, specs: dict[str, NodeSpec], local: bool
           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[tuple[str, str], int]]:
    """Task dicts grouped by their annotations, env builds first; the resource asks
    dropped on the local cluster (nodes by task and resources).

    One graph for the whole submission: a ``client.submit`` per node costs the
    scheduler an update per node, a large part of its time for thousands of tiny
    tasks (docs/benchmarks.md).  Annotations (retries, resources, priority) live on layers, so
    nodes are grouped by them; layers keep graph order.
    """
    retries_default = settings.get("task.retries")
    store = p.store
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    builds = {f"build_env-{e}": (build_task, store, p.envs[e]) for e in p.envs_to_build}
    graph: list[dict[str, Any]] = [builds] if builds else []
    annotations: list[dict[str, Any]] = [{"priority": 1_000_000}] if builds else []
    if local and builds:
        annotations[0]["resources"] = CPU
    dropped: dict[tuple[str, str], int] = {}
    running = set(specs)
    for node in p.to_run:
        opts = node.task.options_
        resources = opts.resources
        if local:
            if resources:
                what = ", ".join(f"{k}: {v:g}" if isinstance(v, int | float) else f"{k}: {v}"
                                 for k, v in sorted(resources.items()))
                dropped[node.task.name, what] = dropped.get((node.task.name, what), 0) + 1
            resources = CPU
        retries = opts.retries if opts.retries is not None else retries_default
        group_key = (retries, opts.priority, tuple(sorted((resources or {}).items())))
        if group_key not in groups:
            groups[group_key] = {}
            graph.append(groups[group_key])
            ann: dict[str, Any] = {"retries": retries, "priority": opts.priority}
            if resources:
                ann["resources"] = resources
            annotations.append(ann)
        build = f"build_env-{node.env_id}" if node.env_id in p.envs_to_build else None
        ups = [up.name for up in node.upstream if up.key in running]
        groups[group_key][node.name] = (node_task, specs[node.key], build, *ups)
    return graph, annotations, dropped


def compute(*nodes: Any, store: StoreArg = None, cluster: Any = "local",
            force: bool = False, progress: bool | None = None) -> Results:
    """Plan, prune, run what must run and wait for it.

    Parameters
    ----------
    *nodes, store, cluster, force
        As for :func:`submit`.
    progress
        Show a progress bar (default: setting ``compute.progress``, "auto":
        in a terminal or a notebook).

    Returns
    -------
    Results
        Per-node states, values and records; ``raise_for_status()`` raises a
        TaskError listing every failure.
    """
    handle = submit(*nodes, store=store, cluster=cluster, force=force)
    return handle.wait(progress=progress)
