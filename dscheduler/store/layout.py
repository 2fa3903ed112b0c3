"""Store paths as path objects: the only place they are spelled (docs/design.md §3)::

    envs/{env_id}/            env.json, build.log, image.sqsh or venv/, build-failed.log, last_used
    images/{lock_id}.sqsh     content-addressed images shared by env_ids (+ .json: what each holds)
    runs/{env_id}/{config_hash}/run.json, and per case {case}/ holding per node: {task}.json
                              (record), {task}.zarr or .value.json, logs/{task}.log, {task}.files/,
                              {task}.artifacts/, .{task}.done (symlink whose target is the key)
    tasks/{task}/{key16}/     the same files, for tasks not bound to a run
    locks/                    env-{env_id}.lease, node-{key16}.lease, cancel-{id}
    slurm/                    cluster.json, scheduler.log, jobs/{cluster}.json, logs/{job}-{id}.log
    index/                    snapshot.json, summaries-{generation}.json, segments/*.log

Names that become path components are checked (:func:`check_name`): a label such as ``../../x``
never leaves the store.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .. import settings
from ..errors import ConfigError
from . import atomic

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=@-]{0,127}$")


def check_name(value: str, what: str) -> str:
    """``value`` when it is a safe single path component; else a ConfigError naming it."""
    if not isinstance(value, str) or not _NAME.match(value) or value in {".", ".."}:
        raise ConfigError(
            f"{what} {value!r} cannot name a directory: use letters, digits and "
            "_ . + = @ - (no '/', no leading dot, at most 128 characters)"
        )
    return value


RUN_RECORD = "run.json"
RUNS_DIR = "runs"
TASKS_DIR = "tasks"
#: A node directory's subdirectory of task logs (``logs/{task}.log``).
LOGS_DIR = "logs"
IMAGE_SUFFIX = ".sqsh"
#: Names a node's outputs take beside its record (``{task}.zarr`` ...): never records.
OUTPUT_SUFFIXES = (".zarr", ".files", ".artifacts")
_DONE_SUFFIX = ".done"


def record_task(filename: str) -> str | None:
    """The task whose node record ``filename`` is (``{task}.json``); None for other files."""
    if not filename.endswith(".json") or filename.endswith(".value.json") \
            or filename == RUN_RECORD or filename.startswith("."):
        return None
    return filename[:-5]


def slurm_log_name(job_name: str, job_id: str) -> str:
    """File name of a SLURM job's log in the worker log directory (``%j``: sbatch's job id)."""
    return f"{job_name}-{job_id}.log"


def done_name(task: str) -> str:
    """File name of a node's ``.done`` link."""
    return f".{task}{_DONE_SUFFIX}"


def done_task(filename: str) -> str | None:
    """The task whose ``.done`` link ``filename`` is (:func:`done_name`); None for others."""
    if filename.startswith(".") and filename.endswith(_DONE_SUFFIX) \
            and len(filename) > len(_DONE_SUFFIX) + 1:
        return filename[1:-len(_DONE_SUFFIX)]
    return None


def walk_node_dirs(roots: Iterable[str | os.PathLike[str]]) -> Iterator[tuple[str, list[str]]]:
    """(directory, names of its files) of every directory under ``roots`` that may hold
    node records, ``.done`` links or a ``run.json``: the one walk of ``runs/`` and ``tasks/``.

    One ``os.scandir`` per directory and plain strings, since stores hold 100,000s of
    nodes.  Hidden directories (temporary names), a node's outputs
    (:data:`OUTPUT_SUFFIXES`) and ``logs/`` are never entered, and symlinks never
    followed.  Depth first, in name order; a root that is missing, or a directory
    removed or unreadable while the walk runs, is skipped.
    """
    stack = [os.fspath(r) for r in roots][::-1]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError:
            continue
        files: list[str] = []
        subdirs: list[str] = []
        for entry in entries:
            name = entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if not is_dir:
                files.append(name)
            elif name[:1] != "." and name != LOGS_DIR and not name.endswith(OUTPUT_SUFFIXES):
                subdirs.append(entry.path)
        yield folder, files
        subdirs.sort(reverse=True)
        stack.extend(subdirs)


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
    def failed_log(self) -> Path:
        """The log of the last failed build (there is no env.json then)."""
        return self.dir / "build-failed.log"

    @property
    def last_used(self) -> Path:
        """Touched at every mount; ``envs list`` shows its mtime."""
        return self.dir / "last_used"

    @property
    def image(self) -> Path:
        """A relative symlink to ``images/{lock_id}.sqsh``."""
        return self.dir / "image.sqsh"

    @property
    def venv(self) -> Path:
        return self.dir / "venv"


@dataclass(frozen=True)
class NodePaths:
    """Files of one node in a directory (a run's case, or ``tasks/{task}/{key16}``).

    ``root`` is the store's root when known (paths made by a :class:`Layout`):
    writes through :func:`~dscheduler.store.records.write_record` then reach
    the store's index too.
    """

    dir: Path
    task: str
    root: Path | None = field(default=None, compare=False)

    # The paths below are made once per object: a tiny task asks for them a few
    # dozen times, and each Path join costs more than the write it names.  Only the
    # fields travel in a pickle.

    def __getstate__(self) -> dict[str, Any]:
        return {"dir": self.dir, "task": self.task, "root": self.root}

    @cached_property
    def record(self) -> Path:
        return self.dir / f"{self.task}.json"

    @cached_property
    def zarr(self) -> Path:
        return self.dir / f"{self.task}.zarr"

    @cached_property
    def value(self) -> Path:
        return self.dir / f"{self.task}.value.json"

    @cached_property
    def log(self) -> Path:
        return self.dir / LOGS_DIR / f"{self.task}.log"

    @cached_property
    def files(self) -> Path:
        """Files a task wrote through ``ds.output("dir")``, committed when it succeeded."""
        return self.dir / f"{self.task}.files"

    @cached_property
    def artifacts(self) -> Path:
        """Files a task logged with ``ds.log_artifact``, committed when it succeeded."""
        return self.dir / f"{self.task}.artifacts"

    @property
    def outputs(self) -> tuple[Path, ...]:
        """Every output a node may have besides its record and log."""
        return (self.zarr, self.value, self.files, self.artifacts)

    @cached_property
    def done(self) -> Path:
        """A symlink whose target is the key of the succeeded record, written after it."""
        return self.dir / done_name(self.task)


@dataclass(frozen=True)
class RunPaths:
    """Files of one run: ``runs/{env_id}/{config_hash}/``."""

    dir: Path
    root: Path | None = field(default=None, compare=False)

    @property
    def record(self) -> Path:
        return self.dir / RUN_RECORD

    def case(self, case: str) -> Path:
        return self.dir / check_name(case, "case")

    def node(self, case: str | None, task: str) -> NodePaths:
        """A node bound to this run, in its case directory (or the run's own without one)."""
        where = self.dir if case is None else self.case(case)
        return NodePaths(where, check_name(task, "task name"), self.root)


class Layout:
    """Paths of a store rooted at ``root``; :class:`~dscheduler.store.Store` adds behaviour."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(settings.get("store", root)).expanduser().absolute()
        atomic.learn_root(self.root)  # a group store's modes, once per process (docs/design.md §3)

    @property
    def envs_dir(self) -> Path:
        return self.root / "envs"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def runs_dir(self) -> Path:
        return self.root / RUNS_DIR

    @property
    def tasks_dir(self) -> Path:
        return self.root / TASKS_DIR

    @property
    def locks_dir(self) -> Path:
        return self.root / "locks"

    # -- the index (dscheduler.store.index) ------------------------------------------

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def index_snapshot(self) -> Path:
        """The compacted index, replaced by one rename per compaction."""
        return self.index_dir / "snapshot.json"

    def index_summaries(self, generation: int) -> Path:
        """Per-node summaries of snapshot ``generation``, kept apart: planning never reads them."""
        return self.index_dir / f"summaries-{int(generation)}.json"

    def index_summaries_files(self) -> dict[int, Path]:
        """Every summaries file present (:meth:`index_summaries`), by generation."""
        found = {}
        for path in self.index_dir.glob("summaries-*.json"):
            if m := re.fullmatch(r"summaries-(\d+)\.json", path.name):
                found[int(m.group(1))] = path
        return found

    @property
    def index_segments_dir(self) -> Path:
        """One append-only segment file per writer process."""
        return self.index_dir / "segments"

    def index_segment(self, name: str) -> Path:
        return self.index_segments_dir / check_name(name, "index segment")

    def node_id(self, paths: NodePaths) -> str:
        """A node's name in the index: its ``.done`` link relative to the root."""
        done, root = str(paths.done), str(self.root)
        if done.startswith(root) and done[len(root):len(root) + 1] == "/":
            return done[len(root) + 1:]  # the common case, without Path's parsing
        return paths.done.relative_to(self.root).as_posix()

    def run_id_path(self, run_id: str) -> str:
        """A run's name in the index: its ``run.json`` relative to the root."""
        return self.run(run_id).record.relative_to(self.root).as_posix()

    @staticmethod
    def run_of_id(path: str) -> str | None:
        """The run_id whose index name (:meth:`run_id_path`) is ``path``; None for a node."""
        if not path.endswith(RUN_RECORD):  # nodes, nearly every path: no split
            return None
        parts = path.split("/")
        if len(parts) == 4 and parts[0] == RUNS_DIR and parts[3] == RUN_RECORD:
            return f"{parts[1]}/{parts[2]}"
        return None

    @staticmethod
    def run_of_node_id(path: str) -> str | None:
        """The run_id of the node whose index name (:meth:`node_id`) is ``path``; None for
        a node not bound to a run (``tasks/``) and for a run's own name."""
        parts = path.split("/", 3)
        if len(parts) == 4 and parts[0] == RUNS_DIR and parts[3] != RUN_RECORD:
            return f"{parts[1]}/{parts[2]}"
        return None

    def env(self, env_id: str) -> EnvPaths:
        return EnvPaths(self.envs_dir / check_name(env_id, "env_id"))

    def env_leftovers(self, env_id: str) -> list[Path]:
        """Temporary names a builder of ``env_id`` killed mid-build left in ``envs/``."""
        return sorted(self.envs_dir.glob(f".{check_name(env_id, 'env_id')}.*"))

    def all_env_leftovers(self) -> list[tuple[str, Path]]:
        """(env_id, path) of every temporary name in ``envs/`` (``.{env_id}.*``)."""
        return [(p.name.split(".")[1], p) for p in sorted(self.envs_dir.glob(".*"))]

    def image(self, lock_id: str) -> Path:
        return self.images_dir / f"{check_name(lock_id, 'lock id')}{IMAGE_SUFFIX}"

    def images(self) -> list[Path]:
        """Every image, ``images/{lock_id}.sqsh``."""
        return sorted(self.images_dir.glob(f"*{IMAGE_SUFFIX}"))

    def image_leftovers(self) -> list[Path]:
        """Temporary names in ``images/`` (sidecars being written, images being removed)."""
        return sorted(self.images_dir.glob(".*"))

    def image_record(self, image: Path) -> Path:
        """``images/{lock_id}.json`` beside an image: its lock and full digest."""
        return image.with_suffix(".json")

    def image_link(self, image: Path) -> str:
        """The target of ``envs/{env_id}/image.sqsh`` for ``image``: relative to the env dir."""
        return f"../../{self.images_dir.name}/{image.name}"

    def run(self, run_id: str) -> RunPaths:
        env_id, _, config_hash = run_id.partition("/")
        return RunPaths(
            self.runs_dir / check_name(env_id, "env_id") / check_name(config_hash, "config_hash"),
            self.root,
        )

    def run_records(self) -> list[Path]:
        """Every ``runs/*/*/run.json``."""
        return sorted(self.runs_dir.glob(f"*/*/{RUN_RECORD}")) if self.runs_dir.is_dir() else []

    def task_records(self) -> list[Path]:
        """Every node record under ``tasks/`` (nodes not bound to a run)."""
        if not self.tasks_dir.is_dir():
            return []
        return sorted(p for p in self.tasks_dir.glob("*/*/*.json") if record_task(p.name)
                      and p.name == f"{p.parent.parent.name}.json")

    def task(self, task: str, key16: str) -> NodePaths:
        name = check_name(task, "task name")
        return NodePaths(self.tasks_dir / name / check_name(key16, "key"), name, self.root)

    def lease_path(self, name: str) -> Path:
        return self.locks_dir / f"{check_name(name, 'lease name')}.lease"

    @staticmethod
    def env_lease_name(env_id: str) -> str:
        """The name of an env's build lease, for :meth:`lease_path` and ``Store.lease``."""
        return f"env-{env_id}"

    def env_lease_path(self, env_id: str) -> Path:
        return self.lease_path(self.env_lease_name(env_id))

    def env_lease_ids(self) -> list[str]:
        """env_ids of every env lease file present (held or stale)."""
        return [p.name[4:-6] for p in self.locks_dir.glob("env-*.lease")]

    @staticmethod
    def node_lease_name(key16: str) -> str:
        """The name of a node's lease, for :meth:`lease_path` and ``Store.node_lease``."""
        return f"node-{key16}"

    def node_lease_path(self, key16: str) -> Path:
        return self.lease_path(self.node_lease_name(key16))

    def cancel_path(self, submission: str) -> Path:
        """The file whose existence cancels every task of one submission."""
        return self.locks_dir / f"cancel-{check_name(submission, 'submission id')}"

    @staticmethod
    def done_id(env_id: str | None, config_hash: str | None, case: str | None,
                task: str, key16: str) -> str:
        """:meth:`node_id` from a node's names, without making its :class:`NodePaths`.

        Planning's hot loop: three Path joins and four name checks per node were most of
        the time of planning 100,000 nodes (docs/benchmarks.md), and the names were checked
        when the node was made.  The same constants as :class:`NodePaths`; a test checks
        that both give one path.
        """
        if env_id is None:
            return f"{TASKS_DIR}/{task}/{key16}/.{task}{_DONE_SUFFIX}"
        if case is None:
            return f"{RUNS_DIR}/{env_id}/{config_hash}/.{task}{_DONE_SUFFIX}"
        return f"{RUNS_DIR}/{env_id}/{config_hash}/{case}/.{task}{_DONE_SUFFIX}"

    # -- SLURM clusters (docs/design.md §13) ----------------------------------------

    @property
    def slurm_dir(self) -> Path:
        return self.root / "slurm"

    @property
    def slurm_logs_dir(self) -> Path:
        """Default directory of worker logs (setting ``slurm.log_directory``)."""
        return self.slurm_dir / "logs"

    @property
    def slurm_cluster_record(self) -> Path:
        """Address, owner and id of the cluster ``dscheduler cluster up`` started."""
        return self.slurm_dir / "cluster.json"

    @property
    def slurm_scheduler_log(self) -> Path:
        """Output of the ``dscheduler cluster up`` process."""
        return self.slurm_dir / "scheduler.log"

    @property
    def slurm_jobs_dir(self) -> Path:
        return self.slurm_dir / "jobs"

    def slurm_jobs_record(self, cluster_id: str) -> Path:
        """A live cluster's owner (host, pid) and the ids of the jobs it submitted."""
        return self.slurm_jobs_dir / f"{check_name(cluster_id, 'cluster id')}.json"

    def slurm_jobs_records(self) -> list[Path]:
        """Every ``slurm/jobs/*.json``."""
        d = self.slurm_jobs_dir
        return sorted(d.glob("*.json")) if d.is_dir() else []
