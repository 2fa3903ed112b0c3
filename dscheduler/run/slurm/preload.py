"""A Dask preload of SLURM workers: give back the node's env mounts when they stop.

Loaded by every worker of a SLURM job (``--preload``).  Env tasks mount
their env per node and release it when done (:mod:`dscheduler.envs.mount`);
a worker killed mid-task (``scancel``, a walltime) leaves a mount held by a
dead process.  At start and at stop a worker detaches every mount on its
node that no live process holds, so a node's mounts leave with their last
user (docs/design.md §13.5).
"""

from __future__ import annotations

import logging
from typing import Any

from ...envs.mount import release_unused

log = logging.getLogger("dscheduler.slurm")


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
