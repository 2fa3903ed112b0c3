"""dscheduler: content-hashed run graphs on Dask.

Environments are built once per ``env_id``; runs whose results are stored are
never submitted; results land in Zarr.  See README.md and DESIGN.
"""

from __future__ import annotations

from . import settings as settings
from .build import BuiltEnv
from .compute import Handle, Results, compute, submit
from .env import Env
from .errors import (
    CollisionError,
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
)
from .experiment import Experiment, load_experiment
from .lease import Lease
from .mount import mount
from .plan import Plan, plan
from .runconfig import RunConfig
from .store import Store
from .task import Node, Task, task

__version__ = "0.1.0"

__all__ = [
    "BuiltEnv",
    "CollisionError",
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
    "compute",
    "load_experiment",
    "mount",
    "plan",
    "submit",
    "task",
]
