"""SLURM: one dask-jobqueue scheduler with CPU and GPU jobs scaled to the graph
(docs/design.md §13).

:mod:`.options` (the ``dscheduler.slurm`` settings, validated), :mod:`.jobs`
(the two kinds of job), :mod:`.routing` (GPU tasks to GPU jobs),
:mod:`.scaler` (per-kind adaptive scaling), :mod:`.ledger` and
:mod:`._reaper` (no job outlives its cluster), :mod:`.cluster`
(``SlurmCluster``, ``ds.slurm_cluster``), :mod:`.detached` (``dscheduler
cluster up|down``), :mod:`.preload` (workers release env mounts).
"""

from __future__ import annotations

from .cluster import SlurmCluster, slurm_cluster
from .options import SlurmOptions, resolve

__all__ = ["SlurmCluster", "SlurmOptions", "resolve", "slurm_cluster"]
