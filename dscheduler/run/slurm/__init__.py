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

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import jobs as jobs
    from .cluster import SlurmCluster, slurm_cluster
    from .options import SlurmOptions, resolve

# Loaded on first use (PEP 562): the cluster imports dask_jobqueue and distributed,
# which `dscheduler status` and a run with nothing to do never need (docs/design.md §4).
_LAZY = {
    ".cluster": ["SlurmCluster", "slurm_cluster"],
    ".jobs": ["jobs"],
    ".options": ["SlurmOptions", "resolve"],
}


def __getattr__(name: str) -> Any:
    """A name of ``_LAZY``, its module imported on first use (a module's own name: itself)."""
    for module, names in _LAZY.items():
        if name in names:
            found = importlib.import_module(module, __name__)
            value = found if module == f".{name}" else getattr(found, name)
            globals()[name] = value
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SlurmCluster", "SlurmOptions", "resolve", "slurm_cluster"]
