"""``ds.Store``: the on-disk layout as path objects (DESIGN section 3).

::

    root/
      envs/{env_id}/            env.json, build.log, image.sqsh or venv/
      images/{lock_digest}.sqsh content-addressed images shared by env_ids
      runs/{env_id}/{config_hash}/run.json
      runs/{env_id}/{config_hash}/{case}/{task}.zarr|.value.json|.json, logs/,
                                .{task}.done (index: symlink to the finished key)
      tasks/{task}/{key}/       outputs of tasks not bound to a run
      locks/                    leases

Paths are built here and nowhere else.  Every write goes through
:mod:`dscheduler.atomic`; records are written after their outputs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import atomic, settings
from .errors import ConfigError, StoreError
from .lease import Lease

if TYPE_CHECKING:
    import pandas as pd

    from .env import Env

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=@-]{0,127}$")


def check_name(value: str, what: str) -> str:
    """A safe single path component (a case, a task name, a label used in a path)."""
    if not isinstance(value, str) or not _NAME.match(value) or value in {".", ".."}:
        raise ConfigError(
            f"{what} {value!r} cannot name a directory: use letters, digits and "
            "_ . + = @ - (no '/', no leading dot, at most 128 characters)"
        )
    return value


@dataclass(frozen=True)
class EnvPaths:
    """Files of one environment: ``envs/{env_id}/``."""

    dir: Path

    @property
    def record(self) -> Path:
        return self.dir / "env.json"

    @property
    def log(self) -> Path:
        return self.dir / "build.log"

    @property
    def image(self) -> Path:
        return self.dir / "image.sqsh"

    @property
    def venv(self) -> Path:
        return self.dir / "venv"


@dataclass(frozen=True)
class NodePaths:
    """Files of one task's outputs in a directory (a run's case, or ``tasks/{task}/{key}``)."""

    dir: Path
    task: str

    @property
    def record(self) -> Path:
        return self.dir / f"{self.task}.json"

    @property
    def zarr(self) -> Path:
        return self.dir / f"{self.task}.zarr"

    @property
    def value(self) -> Path:
        return self.dir / f"{self.task}.value.json"

    @property
    def log(self) -> Path:
        return self.dir / "logs" / f"{self.task}.log"

    @property
    def done(self) -> Path:
        """Index entry: a symlink whose target is the key of the succeeded record.

        Written after the record; planning reads it with one ``readlink``
        instead of parsing the record (see :mod:`dscheduler.plan`).
        """
        return self.dir / f".{self.task}.done"


@dataclass(frozen=True)
class RunPaths:
    """Files of one run: ``runs/{env_id}/{config_hash}/``."""

    dir: Path

    @property
    def record(self) -> Path:
        return self.dir / "run.json"

    def case(self, case: str) -> Path:
        return self.dir / check_name(case, "case")

    def node(self, case: str, task: str) -> NodePaths:
        return NodePaths(self.case(case), check_name(task, "task name"))


class Store:
    """A store rooted at a directory every worker sees (``data/`` by default)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(settings.get("store", root)).expanduser().absolute()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Store, (str(self.root),))

    # -- layout -------------------------------------------------------------

    @property
    def envs_dir(self) -> Path:
        return self.root / "envs"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def tasks_dir(self) -> Path:
        return self.root / "tasks"

    @property
    def locks_dir(self) -> Path:
        return self.root / "locks"

    def env(self, env_id: str) -> EnvPaths:
        return EnvPaths(self.envs_dir / check_name(env_id, "env_id"))

    def image(self, lock_digest: str) -> Path:
        return self.images_dir / f"{check_name(lock_digest, 'lock digest')}.sqsh"

    def run(self, run_id: str) -> RunPaths:
        env_id, _, config_hash = run_id.partition("/")
        return RunPaths(
            self.runs_dir / check_name(env_id, "env_id") / check_name(config_hash, "config_hash")
        )

    def task(self, task: str, key: str) -> NodePaths:
        name = check_name(task, "task name")
        return NodePaths(self.tasks_dir / name / check_name(key, "key"), name)

    def lease(self, name: str, ttl: float | None = None) -> Lease:
        """The lease ``locks/{name}.lease``."""
        return Lease(self.locks_dir / f"{check_name(name, 'lease name')}.lease", ttl=ttl)

    # -- records ------------------------------------------------------------

    def ensure(self) -> Store:
        """Create the top-level directories (not world-writable)."""
        try:
            for d in (self.envs_dir, self.images_dir, self.runs_dir, self.tasks_dir,
                      self.locks_dir):
                d.mkdir(parents=True, exist_ok=True, mode=0o755)
        except OSError as err:
            raise StoreError(
                f"cannot create the store at {self.root}: {err}; choose a writable "
                "directory with ds.Store(path) or DASK_DSCHEDULER__STORE"
            ) from err
        return self

    def write_record(self, path: Path, record: dict[str, Any]) -> None:
        atomic.write_json(path, record)

    def read_record(self, path: Path) -> dict[str, Any] | None:
        return atomic.read_json(path)

    def write_run(self, cfg: Any, label: str = "") -> Path:
        """Write ``run.json`` for a RunConfig once (it never changes for a run_id)."""
        paths = self.run(cfg.run_id)
        if not paths.record.exists():
            from . import identity

            stored = atomic.read_json(paths.record)
            identity.check_collision(cfg.config_digest, (stored or {}).get("config_digest"))
            self.write_record(
                paths.record,
                {
                    "run_id": cfg.run_id,
                    "env_id": cfg.env_id,
                    "config_hash": cfg.config_hash,
                    "env_digest": cfg.env_digest,
                    "config_digest": cfg.config_digest,
                    "model": f"{type(cfg).__module__}.{type(cfg).__qualname__}",
                    "label": label or getattr(cfg, "label", "") or "",
                    "config": cfg.model_dump(mode="json"),
                },
            )
        return paths.record

    def runs(self) -> pd.DataFrame:
        """One row per run record: run_id, env_id, config_hash, label, model."""
        import pandas as pd

        rows = []
        for record in sorted(self.runs_dir.glob("*/*/run.json")):
            data = atomic.read_json(record) or {}
            rows.append({k: data.get(k) for k in ("run_id", "env_id", "config_hash",
                                                  "label", "model")})
        return pd.DataFrame(rows, columns=["run_id", "env_id", "config_hash", "label", "model"])

    def build_env(self, env: Env, **options: Any) -> Any:
        """Build ``env`` once (or return the published one); see :mod:`dscheduler.build`."""
        from .build import build_env

        return build_env(self, env, **options)
