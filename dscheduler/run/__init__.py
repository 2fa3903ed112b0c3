"""Running graphs: compute and submit, Results and Handle, clusters, and the
worker side (node specs, execution, env subprocesses, payloads, the runner)
(docs/design.md §5, §8).

Imports everything below it (graph, envs, store), nothing above.
"""

from __future__ import annotations

from .clusters import connect
from .compute import compute, submit
from .results import Handle, Results
from .slurm import slurm_cluster

__all__ = ["Handle", "Results", "compute", "connect", "slurm_cluster", "submit"]
