"""What a published environment is: ``envs/{env_id}/env.json`` read back.

:func:`published_env` is the cheap question "is this env built?": one read of
env.json (written last, by a rename, so never seen half-written) and one stat
of its image or venv.  No lease is taken.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..store import EnvPaths, atomic
from ..store.records import read_record

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger("dscheduler.build")

RECORD_FORMAT = 1


@dataclass(frozen=True)
class BuiltEnv:
    """A published environment, as :func:`build_env` and :func:`published_env` return it."""

    env_id: str  # the Env's env_id (may be a RunConfig's env_id: Env.with_identity)
    digest: str  # full digest
    kind: str  # "squashfs" or "dir"
    paths: EnvPaths  # store.env(env_id)
    image: Path | None  # images/{lock_id}.sqsh for kind "squashfs"
    venv: Path | None  # envs/{env_id}/venv for kind "dir"
    record: dict[str, Any]  # env.json contents
    built: bool  # True when this call did the build

    @property
    def lock_digest(self) -> str:
        return str(self.record["lock_digest"])

    def touch(self) -> None:
        """Note a use (``envs list`` shows it); a read-only store just goes without."""
        with contextlib.suppress(OSError):
            try:
                os.utime(self.paths.last_used)  # group-writable in a group store: any member
            except FileNotFoundError:
                os.close(atomic.create_file(self.paths.last_used))  # the store's mode


# -- reading what is published ---------------------------------------------------------


def published_env(store: Store, env_id: str) -> BuiltEnv | None:
    """The published env ``env_id``, or None; reads env.json only (no lease)."""
    paths = store.env(env_id)
    record = read_record(paths.record)
    if record is None or record.get("format") != RECORD_FORMAT:
        return None
    return from_record(store, paths, record, built=False)


def from_record(
    store: Store, paths: EnvPaths, record: dict[str, Any], built: bool
) -> BuiltEnv | None:
    kind = record["kind"]
    image = store.root / record["image"] if kind == "squashfs" else None
    venv = paths.venv if kind == "dir" else None
    if (image is not None and not image.is_file()) or (venv is not None and not venv.is_dir()):
        # Removed by hand or by a gc racing a build: not usable, build again.
        log.warning("env %s: env.json names a missing %s; rebuilding", record.get("env_id"),
                    image or venv)
        return None
    return BuiltEnv(
        env_id=record["env_id"], digest=record["digest"], kind=kind, paths=paths,
        image=image, venv=venv, record=record, built=built,
    )
