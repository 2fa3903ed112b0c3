"""The store: a directory every worker sees, its layout, writes, leases and values.

:class:`Store` is ``ds.Store``.  This subpackage imports nothing above it
(docs/design.md §3 and §7 give the layout and the write rules).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .. import identity, settings
from ..errors import ConfigError, LeaseError, StoreError
from . import atomic
from .catalogue.runs import node_summaries, runs_frame
from .catalogue.views import collect, open_node
from .catalogue.views import open_results as _open_results
from .index import Index, run_entry
from .index.snapshot import paused_gc
from .layout import EnvPaths, Layout, NodePaths, RunPaths, check_name
from .lease import Lease
from .records import read_record

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["EnvPaths", "Lease", "NodePaths", "RunPaths", "Store", "check_name", "open_results"]


class Buildable(Protocol):
    """What :meth:`Store.build_env` needs of an environment spec (``ds.Env``)."""

    def build(self, store: Store, **options: Any) -> Any: ...


class RunLike(Protocol):
    """What :meth:`Store.write_run` needs of a run configuration (``ds.RunConfig``)."""

    @property
    def run_id(self) -> str: ...
    @property
    def env_id(self) -> str: ...
    @property
    def config_hash(self) -> str: ...
    @property
    def env_digest(self) -> str: ...
    @property
    def config_digest(self) -> str: ...

    def model_dump(self, *, mode: str) -> dict[str, Any]: ...


class Store(Layout):
    """A store rooted at a directory every worker sees.

    Parameters
    ----------
    root
        The store's directory (default: setting ``store``, ``data/``).  It
        must be on a filesystem every worker sees; it is created on first
        write, not world-writable.

    The layout (``envs/``, ``images/``, ``runs/``, ``tasks/``, ``locks/``)
    is described in :mod:`dscheduler.store.layout`.  Every write is atomic;
    a node's record is written after its outputs, and only by
    :func:`dscheduler.store.records.write_record` (compact JSON with a ``seq``,
    announced to the store index).
    """

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Store, (str(self.root),))

    def ensure(self) -> Store:
        """Create the root (group-shared when setting ``store_shared`` says so) and the
        top-level directories, in the store's modes; a StoreError says why not."""
        try:
            self._ensure_root()
            for d in (self.envs_dir, self.images_dir, self.runs_dir, self.tasks_dir,
                      self.locks_dir):
                atomic.make_dirs(d)
        except OSError as err:
            raise StoreError(
                f"cannot create the store at {self.root}: {err}; choose a writable "
                "directory with ds.Store(path) or DASK_DSCHEDULER__STORE"
            ) from err
        if not self.index_snapshot.exists():
            # A cache: planning without it reads one link per node.
            with contextlib.suppress(OSError, LeaseError):
                self.index.rebuild(if_missing=True)
        return self

    def _ensure_root(self) -> atomic.Modes:
        """Make the root when missing, a group store's when ``store_shared`` is "group"
        (docs/design.md §3); an existing store keeps the modes its root has."""
        shared = settings.get("store_shared")
        if shared not in (None, "group"):
            raise ConfigError(
                f"setting store_shared is {shared!r}: use null (a store only you write) or "
                "\"group\" (DASK_DSCHEDULER__STORE_SHARED=group)")
        if shared == "group" and not self.root.exists():
            # Made aside and renamed: no member ever sees the root without its modes.
            self.root.parent.mkdir(parents=True, exist_ok=True)
            tmp = atomic.temp_sibling(self.root)
            os.mkdir(tmp, 0o775)
            os.chmod(tmp, atomic.GROUP.dir)  # setgid and g+w whatever the parent or umask
            try:
                os.rename(tmp, self.root)  # over a racer's root only while it is empty
            except OSError:
                os.rmdir(tmp)
        elif shared != "group":
            self.root.mkdir(parents=True, exist_ok=True, mode=atomic.PRIVATE.dir)
        modes = atomic.learn_root(self.root, again=True)
        if shared == "group" and not modes.group:
            if self.root.stat().st_uid == os.getuid() and not any(self.root.iterdir()):
                os.chmod(self.root, atomic.GROUP.dir)  # an empty dir made for it
                return atomic.learn_root(self.root, again=True)
            raise StoreError(
                f"store_shared is \"group\" but the store at {self.root} is not shared: its "
                "root is not setgid and group-writable. Share it (as its owner, choosing the "
                f"group): chgrp -R GROUP {self.root} && chmod -R g+w,o-w {self.root} && find "
                f"{self.root} -type d -exec chmod g+s {{}} +; or unset store_shared")
        return modes

    @property
    def index(self) -> Index:
        """The store's index of finished nodes and runs (:mod:`dscheduler.store.index`)."""
        return Index(self)

    def lease(self, name: str, ttl: float | None = None, **options: Any) -> Lease:
        """The lease ``locks/{name}.lease`` (options as for :class:`Lease`)."""
        return Lease(self.lease_path(name), ttl=ttl, **options)

    def node_lease(self, key16: str, **options: Any) -> Lease:
        """A node's lease, as every attempt takes it: ttl ``task.lease_ttl``, and a
        holder on this host whose process died is broken at once (a killed worker's
        task, which Dask reschedules at once, must not wait a ttl for it)."""
        return self.lease(self.node_lease_name(key16), ttl=settings.get("task.lease_ttl"),
                          break_dead_local=True, **options)

    def read_record(self, path: Path) -> dict[str, Any] | None:
        """A record; None when missing; a StoreError naming the file when damaged."""
        return read_record(path)

    def write_run(self, cfg: RunLike, label: str = "") -> Path:
        """Create ``run.json`` for a RunConfig once; it never changes for a run_id.

        A stored run.json whose full digests differ from ``cfg``'s is a
        :class:`~dscheduler.errors.CollisionError`.
        """
        paths = self.run(cfg.run_id)
        record = {
            "run_id": cfg.run_id,
            "env_id": cfg.env_id,
            "config_hash": cfg.config_hash,
            "env_digest": cfg.env_digest,
            "config_digest": cfg.config_digest,
            "model": f"{type(cfg).__module__}.{type(cfg).__qualname__}",
            "label": label or getattr(cfg, "label", "") or "",
            "config": cfg.model_dump(mode="json"),
        }
        if not atomic.create_once(paths.record, atomic.json_text(record).encode()):
            stored = read_record(paths.record) or {}
            where = str(paths.record)
            identity.check_collision(cfg.config_digest, stored.get("config_digest"), where)
            identity.check_collision(cfg.env_digest, stored.get("env_digest"), where)
            record = stored
        self.index.append([run_entry(self, record)])
        return paths.record

    def runs(self, filter: str | None = None, order_by: list[str] | str | None = None,
             state: str | list[str] | None = None, by: str = "run",
             run_id: str | None = None) -> pd.DataFrame:
        """What the store holds, one row per run (or per node), from the node records.

        Parameters
        ----------
        filter
            MLflow's search syntax plus ``or``, ``not`` and parentheses, e.g.
            ``"metrics.rmse < 1.5 and (params.model = 'linear' or tags.stage
            like 'eval%')"`` (:mod:`dscheduler.store.catalogue.query`).  A filter that
            does not parse is a ConfigError showing the position.
        order_by
            Columns, each optionally followed by ``asc`` or ``desc``.
        state
            Keep only rows in this state (or these states).
        by
            ``"run"``: one row per run (metrics averaged over its nodes; params,
            tags and config from its nodes); ``"node"``: one row per node record.
        run_id
            Only this run's nodes.

        Returns
        -------
        pandas.DataFrame
            Ids, label, state, timings, then ``config.*``, ``params.*``,
            ``metrics.*`` and ``tags.*`` columns.
        """
        with paused_gc():  # tens of thousands of dicts made at once (store/index/snapshot.py)
            return runs_frame(node_summaries(self, run_id), filter=filter, order_by=order_by,
                              state=state, by=by)

    def open(self, node: Any, *, chunks: Any = None) -> Any:
        """The stored value of ``node`` (a Node, a record path, a node name or key):
        xarray for Zarr (lazy; ``chunks={}`` for dask), plain values for JSON."""
        return open_node(self, node, chunks=chunks)

    def open_results(self, what: Any, *, task: str | None = None, dim: str = "case") -> Any:
        """See :func:`dscheduler.open_results`."""
        return _open_results(self, what, task=task, dim=dim)

    def collect(self, what: Any, path: str | os.PathLike[str], *, task: str | None = None,
                dim: str = "case") -> Path:
        """Write the values of a run's cases (or of ``what``: see :meth:`open_results`)
        into one Zarr store at ``path``, cases along ``dim``; the path.

        Chunks are written in parallel by dask (on the active cluster, if any),
        each case into chunks of its own, after the metadata was written once.
        """
        return collect(self, what, path, task=task, dim=dim)

    def build_env(self, env: Buildable, **options: Any) -> Any:
        """Build ``env`` once, or return the published one; see :meth:`ds.Env.build`."""
        return env.build(self, **options)


#: The store of the task running in this thread (run/execute.py sets it around each
#: task): what ``store_of(None)`` gives inside a task, so that ``ds.checkpoint(ref)``
#: in a task fetches into the store the task writes to.
TASK_STORE: contextvars.ContextVar[Store | None] = contextvars.ContextVar(
    "dscheduler_task_store", default=None)


def store_of(store: Store | str | os.PathLike[str] | None) -> Store:
    """``store`` as a Store (a path; None: the running task's store, else the setting
    ``store``)."""
    if isinstance(store, Store):
        return store
    if store is None:
        running = TASK_STORE.get()
        if running is not None:
            return running
    return Store(store)


def open_results(what: Any, *, task: str | None = None, dim: str = "case",
                 store: Store | str | os.PathLike[str] | None = None) -> Any:
    """Results of several nodes side by side, lazily: ``ds.open_results``.

    Parameters
    ----------
    what
        Nodes, a RunConfig, a run_id, a label or a node name.
    task
        The task whose results to open, when the run has several.
    dim
        The new dimension, whose coordinate is the case names (node names
        when the nodes are not cases of one run).
    store
        The store (a Store, a path, or None: the setting ``store``).

    Returns
    -------
    xarray.Dataset or xarray.DataArray
        Concatenated along ``dim``, backed by dask; JSON results come back as
        a dict by case instead.
    """
    return store_of(store).open_results(what, task=task, dim=dim)
