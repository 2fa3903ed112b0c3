"""The store: a directory every worker sees, its layout, writes, leases and values.

:class:`Store` is ``ds.Store``.  This subpackage imports nothing above it
(docs/design.md §3 and §7 give the layout and the write rules).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .. import identity
from ..errors import LeaseError, StoreError
from . import atomic
from .index import Index, run_entry
from .layout import EnvPaths, Layout, NodePaths, RunPaths, check_name
from .lease import Lease
from .records import read_record

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["EnvPaths", "Lease", "NodePaths", "RunPaths", "Store", "check_name"]


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
    a node's record is written after its outputs.
    """

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Store, (str(self.root),))

    def ensure(self) -> Store:
        """Create the top-level directories (mode 0755); a StoreError says why not."""
        try:
            for d in (self.envs_dir, self.images_dir, self.runs_dir, self.tasks_dir,
                      self.locks_dir):
                d.mkdir(parents=True, exist_ok=True, mode=0o755)
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

    @property
    def index(self) -> Index:
        """The store's index of finished nodes and runs (:mod:`dscheduler.store.index`)."""
        return Index(self)

    def lease(self, name: str, ttl: float | None = None, **options: Any) -> Lease:
        """The lease ``locks/{name}.lease`` (options as for :class:`Lease`)."""
        return Lease(self.lease_path(name), ttl=ttl, **options)

    def read_record(self, path: Path) -> dict[str, Any] | None:
        """A record; None when missing; a StoreError naming the file when damaged."""
        return read_record(path)

    def write_record(self, path: Path, record: dict[str, Any]) -> None:
        """Write a JSON record people read (indented), atomically and durably."""
        atomic.write_json(path, record)

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

    def runs(self) -> pd.DataFrame:
        """One row per run record: run_id, env_id, config_hash, label, model.

        Read from the index (rebuilt from the ``run.json`` files when missing),
        not from one file per run.
        """
        import pandas as pd

        columns = ["run_id", "env_id", "config_hash", "label", "model"]
        view = self.index.load(summaries=True)
        summaries = view.summaries or {}
        rows = []
        for path in view.values:
            run_id = self.run_of_id(path)
            if run_id is not None:
                env_id, _, config_hash = run_id.partition("/")
                summary = summaries.get(path, {})
                rows.append((run_id, env_id, config_hash, summary.get("label"),
                             summary.get("model")))
        rows.sort()
        return pd.DataFrame(rows, columns=columns)

    def build_env(self, env: Buildable, **options: Any) -> Any:
        """Build ``env`` once, or return the published one; see :meth:`ds.Env.build`."""
        return env.build(self, **options)


def store_of(store: Store | str | os.PathLike[str] | None) -> Store:
    """``store`` as a Store (a path or None: the setting ``store``)."""
    return store if isinstance(store, Store) else Store(store)
