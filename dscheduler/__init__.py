"""dscheduler: content-hashed run graphs on Dask (the design and its reasons: docs/design.md).

Environments are built once per ``env_id``; runs whose results are stored are never submitted;
results land in Zarr.  Subpackages, each importing only those before it: :mod:`.store`,
:mod:`.envs`, :mod:`.graph`, :mod:`.run`, :mod:`.cli`.

Importing the package loads only :mod:`.errors` and :mod:`.settings`; each other name loads its
subpackage on first use (PEP 562 ``__getattr__``, docs/design.md §4).  ``_LAZY`` names where each
name lives; the ``TYPE_CHECKING`` block imports the same names, for type checkers and for
tests/test_layout.py, which holds the two equal.
"""

from __future__ import annotations

import typing

from . import lazy
from . import settings as settings
from .errors import (
    CollisionError,
    CommandError,
    ConfigError,
    DSchedulerError,
    EnvBuildError,
    GraphError,
    IdentityError,
    LeaseError,
    LeaseTimeout,
    MountError,
    StoreError,
    TaskError,
    UnsafePathError,
)

if typing.TYPE_CHECKING:
    # mypy takes a name that is also a submodule's (envs.mount, graph.plan, run.compute)
    # for a second definition under TYPE_CHECKING; they are the functions, as at run time.
    from .envs import BuiltEnv, Env, checkpoint, mount  # type: ignore[no-redef]
    from .graph import Experiment, Node, Plan, RunConfig, Task, load_experiment, plan, task  # type: ignore[no-redef]
    from .graph.files import File
    from .run import Handle, Results, compute, connect, slurm_cluster, submit  # type: ignore[no-redef]
    from .run.tracking import log_artifact, log_metric, log_param, output, set_tag
    from .store import Lease, Store, open_results

_LAZY = {
    ".envs": ["BuiltEnv", "Env", "checkpoint", "mount"],
    ".graph": ["Experiment", "Node", "Plan", "RunConfig", "Task", "load_experiment", "plan",
               "task"],
    ".graph.files": ["File"],
    ".run": ["Handle", "Results", "compute", "connect", "slurm_cluster", "submit"],
    ".run.tracking": ["log_artifact", "log_metric", "log_param", "output", "set_tag"],
    ".store": ["Lease", "Store", "open_results"],
}
__getattr__ = lazy.exports(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"

__all__ = [
    "BuiltEnv",
    "CollisionError",
    "CommandError",
    "ConfigError",
    "DSchedulerError",
    "Env",
    "EnvBuildError",
    "Experiment",
    "File",
    "GraphError",
    "Handle",
    "IdentityError",
    "Lease",
    "LeaseError",
    "LeaseTimeout",
    "MountError",
    "Node",
    "Plan",
    "Results",
    "RunConfig",
    "Store",
    "StoreError",
    "Task",
    "TaskError",
    "UnsafePathError",
    "checkpoint",
    "compute",
    "connect",
    "load_experiment",
    "log_artifact",
    "log_metric",
    "log_param",
    "mount",
    "open_results",
    "output",
    "plan",
    "set_tag",
    "slurm_cluster",
    "submit",
    "task",
]
