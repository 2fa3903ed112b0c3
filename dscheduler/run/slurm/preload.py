"""What a SLURM job runs of dscheduler around its workers: their private scratch, their
share of the job's GPUs, and a Dask preload that gives back the node's env mounts.

Before the workers start, the job script runs :func:`main`: it prints the node's worker
scratch (``slurm.local_directory``, null: ``$TMPDIR/dscheduler-workers-$UID``), made 0700 and
checked there, or refuses (message in the job's log, exit 1, no worker started): dask's
``dask-scratch-space`` in a shared ``/tmp`` is a directory any user can make first, and
spilled data are pickles (docs/design.md §15).  Loaded by every worker (``--preload``): in a
GPU job of several worker processes (``DSCHEDULER_GPUS_PER_WORKER`` set) worker ``{job}-{i}``
keeps the i-th share of SLURM's ``CUDA_VISIBLE_DEVICES`` (:func:`gpu_share`), so its tasks
see exactly those GPUs; at start and at stop it detaches every env mount on its node that
no live process holds (a worker killed mid-task leaves one), so a node's mounts leave with
their last user (docs/design.md §13.5).
"""

from __future__ import annotations

import logging
import os
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


GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL")


def gpu_share(devices: str, per_worker: int, worker_name: str) -> str:
    """This worker's GPUs of the job's ``devices`` ("0,1,2,3"): the i-th ``per_worker`` of
    them for worker ``{job}-{i}`` (dask's names for the workers of one job)."""
    index = int(str(worker_name).rsplit("-", 1)[1])
    mine = devices.split(",")[index * per_worker:(index + 1) * per_worker]
    return ",".join(mine)


def _share_gpus(worker: Any) -> None:
    per_worker = os.environ.get("DSCHEDULER_GPUS_PER_WORKER")
    if not per_worker:
        return
    for variable in GPU_VARIABLES:
        if os.environ.get(variable):
            os.environ[variable] = gpu_share(os.environ[variable], int(per_worker),
                                             str(worker.name))


def dask_setup(worker: Any) -> None:
    _share_gpus(worker)
    _release()


def dask_teardown(worker: Any) -> None:
    _release()
