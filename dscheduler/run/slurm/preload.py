"""What a SLURM job runs of dscheduler around its workers: their private scratch, and a
Dask preload that gives back the node's env mounts when they stop.

Before the workers start, the job script runs :func:`main`: it prints the node's
worker scratch (setting ``slurm.local_directory``, null: ``$TMPDIR/dscheduler-workers-$UID``
of the node), made 0700 and checked there, or refuses (message in the job's log, exit
1, no worker started): dask's default ``dask-scratch-space`` in a shared ``/tmp`` is a
directory any user can make first, and spilled data are pickles (docs/design.md §15).

Loaded by every worker of a SLURM job (``--preload``).  Env tasks mount
their env per node and release it when done (:mod:`dscheduler.envs.mount`);
a worker killed mid-task (``scancel``, a walltime) leaves a mount held by a
dead process.  At start and at stop a worker detaches every mount on its
node that no live process holds, so a node's mounts leave with their last
user (docs/design.md §13.5).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from ... import settings
from ...envs.mount import release_unused
from ...errors import DSchedulerError

log = logging.getLogger("dscheduler.slurm")


def worker_dir(override: str | None = None) -> Path:
    """This node's scratch for dask workers, made 0700 and checked."""
    return settings.node_local("slurm.local_directory", "dscheduler-workers", override)


def main(argv: list[str]) -> int:
    """``[DIR]``: print :func:`worker_dir` (of DIR when given); a refusal on stderr, 1."""
    try:
        print(worker_dir(argv[0] if argv else None))
    except (DSchedulerError, OSError) as err:
        print(f"dscheduler: no worker scratch on this node: {err}", file=sys.stderr)
        return 1
    return 0


def _release() -> None:
    try:
        released = release_unused()
    except OSError as err:  # the mount root vanished meanwhile: nothing held
        log.debug("releasing mounts: %s", err)
        return
    if released:
        log.info("released unused env mounts %s", [str(p) for p in released])


def dask_setup(worker: Any) -> None:
    _release()


def dask_teardown(worker: Any) -> None:
    _release()
