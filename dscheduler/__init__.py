"""dscheduler: content-hashed run graphs on Dask.

Environments are built once per ``env_id``; runs whose results are stored are
never submitted; results land in Zarr.  The design, and the reasons behind
it, are in docs/design.md.

Subpackages, each importing only those before it: :mod:`.store` (layout,
atomic writes, leases, values), :mod:`.envs` (specs, builds, mounts),
:mod:`.graph` (RunConfig, tasks, nodes, plans, experiments), :mod:`.run`
(compute, clusters, the worker side), :mod:`.cli`.
"""

from __future__ import annotations

from . import settings as settings
from .envs import BuiltEnv, Env, mount
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
from .graph import Experiment, Node, Plan, RunConfig, Task, load_experiment, plan, task
from .run import Handle, Results, compute, connect, slurm_cluster, submit
from .run.tracking import log_artifact, log_metric, log_param, output, set_tag
from .store import Lease, Store, open_results

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
