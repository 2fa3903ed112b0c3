"""dscheduler: content-hashed run graphs on Dask.

Environments are built once per ``env_id``; runs whose results are stored are
never submitted; results land in Zarr.  See README.md and DESIGN.
"""

from __future__ import annotations

from . import settings as settings
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
from .runconfig import RunConfig
from .store import Store

__version__ = "0.1.0"

__all__ = [
    "CollisionError",
    "ConfigError",
    "DSchedulerError",
    "Env",
    "EnvBuildError",
    "Experiment",
    "GraphError",
    "IdentityError",
    "Lease",
    "LeaseError",
    "LeaseTimeout",
    "MountError",
    "RunConfig",
    "Store",
    "StoreError",
    "TaskError",
    "load_experiment",
]
