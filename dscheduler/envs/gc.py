"""What environments a store holds, and garbage collection of unused ones.

:func:`inventory` lists every env directory with its record, the runs that
use it and whether a build holds its lease.  :func:`gc_plan` decides what
garbage collection would remove: envs that no run record names, images no
remaining env uses, temporary leftovers of killed builders and checkpoint fetchers
(``checkpoints/.*``; fetched checkpoints themselves are kept); :func:`gc_apply`
removes it.  An env whose build lease is held is never touched (gc takes the
lease itself while deleting), and no image is removed while any build runs
(it may be about to reuse one).  Removal renames first, then deletes:
readers see an env whole or gone.
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, StoreError
from ..store import EnvPaths, Store, atomic
from ..store.lease import lease_held
from ..store.records import read_node, read_record
from . import checkpoints


@dataclass
class EnvEntry:
    """One directory under ``envs/``: its record (None unless published) and its use."""

    env_id: str
    paths: EnvPaths
    record: dict[str, Any] | None
    runs: int
    building: bool
    last_used: float | None
    status: str = field(init=False)

    def __post_init__(self) -> None:
        if self.record is not None:
            self.status = "published"
        elif self.paths.failed_log.exists():
            self.status = "failed"
        else:
            self.status = "incomplete"

    @property
    def dir(self) -> Path:
        return self.paths.dir

    @property
    def size(self) -> int:
        sizes = (self.record or {}).get("sizes", {})
        if (self.record or {}).get("kind") == "squashfs":
            return int(sizes.get("image_bytes", 0))
        return int(sizes.get("venv_bytes", 0))

    @property
    def image(self) -> str | None:
        return (self.record or {}).get("image")

    @property
    def created(self) -> float | None:
        if not self.record or "created" not in self.record:
            return None
        return dt.datetime.fromisoformat(self.record["created"]).timestamp()


def run_counts(store: Store) -> dict[str, int]:
    """env_id -> how many runs use it: run records, and records of nodes not bound to a
    run (``tasks/``) that ran in it."""
    counts: dict[str, int] = {}
    for record in store.run_records():
        env_id = record.parent.parent.name
        counts[env_id] = counts.get(env_id, 0) + 1
    for path in store.task_records():
        try:
            node = read_node(path)
            used = node.env_id if node is not None else None
        except StoreError:
            continue  # a damaged record names nothing; `dscheduler verify` reports it
        if isinstance(used, str):
            counts[used] = counts.get(used, 0) + 1
    return counts


def inventory(store: Store) -> list[EnvEntry]:
    """Every env directory of the store (temporary names left out), by env_id."""
    counts = run_counts(store)
    entries = []
    for d in sorted(store.envs_dir.iterdir()) if store.envs_dir.is_dir() else []:
        if d.name.startswith(".") or not d.is_dir():
            continue
        paths = store.env(d.name)
        try:
            record = read_record(paths.record)
        except StoreError:
            record = None  # a damaged env.json: not published, gc may remove it
        try:
            last_used: float | None = paths.last_used.stat().st_mtime
        except OSError:
            last_used = None
        entries.append(EnvEntry(d.name, paths, record, counts.get(d.name, 0),
                                lease_held(store.env_lease_path(d.name)), last_used))
    return entries


def find_env(store: Store, env_id: str) -> EnvEntry:
    """The env with this id or unique id prefix; ConfigError listing candidates otherwise."""
    entries = inventory(store)
    matches = [e for e in entries if e.env_id == env_id] or [
        e for e in entries if e.env_id.startswith(env_id)
    ]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ConfigError(
            f"no env {env_id!r} in {store.envs_dir}; `dscheduler envs list` shows the env_ids"
        )
    raise ConfigError(
        f"{env_id!r} matches {len(matches)} envs ({', '.join(e.env_id for e in matches)}); "
        "give more characters"
    )


@dataclass
class GcPlan:
    """What :func:`gc_apply` would remove."""

    envs: list[EnvEntry]
    images: list[Path]
    leftovers: list[Path]
    kept_building: list[str]
    images_held: bool  # a build is running: no image is removed this time

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self.envs if e.image is None) + sum(
            p.stat().st_size for p in self.images if p.exists()
        )

    @property
    def empty(self) -> bool:
        return not (self.envs or self.images or self.leftovers)


def gc_plan(store: Store) -> GcPlan:
    """What gc would remove now."""
    entries = inventory(store)
    doomed = [e for e in entries if e.runs == 0 and not e.building]
    building = [e.env_id for e in entries if e.runs == 0 and e.building]
    gone = {e.env_id for e in doomed}
    used = {e.image for e in entries if e.env_id not in gone and e.image}
    any_build = any(lease_held(store.env_lease_path(env_id))
                    for env_id in store.env_lease_ids())
    images = [] if any_build else [
        p for p in store.images() if p.relative_to(store.root).as_posix() not in used
    ]
    leftovers = [p for env_id, p in store.all_env_leftovers()
                 if not lease_held(store.env_lease_path(env_id))]
    if not any_build:  # temporary names of sidecars and deletions in images/
        leftovers += store.image_leftovers()
    leftovers += checkpoints.leftovers(store)  # of fetches killed midway
    return GcPlan(doomed, images, leftovers, building, any_build)


def gc_apply(store: Store, plan: GcPlan) -> list[str]:
    """Remove what ``plan`` names, checking again under each env's lease; what was removed."""
    removed = []
    for entry in plan.envs:
        lease = store.lease(store.env_lease_name(entry.env_id))
        if not lease.try_acquire():
            continue  # a build started since the plan was made
        try:
            if run_counts(store).get(entry.env_id):
                continue  # a run started using it meanwhile
            atomic.remove(entry.dir)
            removed.append(f"env {entry.env_id}")
        finally:
            lease.release()
    # Envs skipped above still use their images: decide on images again, now.
    still_unused = set(gc_plan(store).images)
    for image in (i for i in plan.images if i in still_unused):
        atomic.remove(image)
        atomic.remove(store.image_record(image))
        removed.append(f"image {image.name}")
    for leftover in plan.leftovers:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(f"leftover {leftover.name}")
    return removed
