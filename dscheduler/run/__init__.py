"""Running graphs: compute and submit, Results and Handle, clusters, and the
worker side (node specs, execution, env subprocesses, payloads, the runner)
(docs/design.md §5, §8).

Imports everything below it (graph, envs, store), nothing above.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import lazy

# ``compute`` is also a submodule's name: importing it binds the attribute to the module,
# which this import then rebinds to the function, so it stays eager (and cheap).
from .compute import compute, submit

if TYPE_CHECKING:
    from .clusters import connect
    from .handle import Handle, Results
    from .slurm import slurm_cluster

# Loaded on first use (PEP 562), as the top package's names are (docs/design.md §4).
_LAZY = {".clusters": ["connect"], ".handle": ["Handle", "Results"],
         ".slurm": ["slurm_cluster"]}


__getattr__ = lazy.exports(__name__, _LAZY, globals())


__all__ = ["Handle", "Results", "compute", "connect", "slurm_cluster", "submit"]
