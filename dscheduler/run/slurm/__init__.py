"""SLURM: one dask-jobqueue scheduler with kinds of jobs (cpu, gpu, named) each scaled to
its tasks (docs/design.md §13).

:mod:`.options` (the ``dscheduler.slurm`` settings, validated), :mod:`.jobs`
(a job of a kind), :mod:`.routing` (each task to its kind),
:mod:`.scaler` (per-kind adaptive scaling), :mod:`.ledger` and
:mod:`._reaper` (no job outlives its cluster), :mod:`.cluster`
(``SlurmCluster``, ``ds.slurm_cluster``), :mod:`.detached` (``dscheduler
cluster up|down``), :mod:`.preload` (workers release env mounts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ... import lazy

if TYPE_CHECKING:
    from . import jobs as jobs
    from .cluster import SlurmCluster, slurm_cluster
    from .options import SlurmOptions, resolve
    from .routing import check_resources

# Loaded on first use (PEP 562): the cluster imports dask_jobqueue and distributed,
# which `dscheduler status` and a run with nothing to do never need (docs/design.md §4).
_LAZY = {
    ".cluster": ["SlurmCluster", "slurm_cluster"],
    ".jobs": ["jobs"],
    ".options": ["SlurmOptions", "resolve"],
    ".routing": ["check_resources"],
}


__getattr__ = lazy.exports(__name__, _LAZY, globals())


__all__ = ["SlurmCluster", "SlurmOptions", "check_resources", "resolve", "slurm_cluster"]
