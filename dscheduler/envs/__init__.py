"""Environments: what they are (:class:`Env`), how they are built once per env_id,
published, mounted and garbage collected (docs/design.md §5.3, §6).

Imports only :mod:`dscheduler.store` and the top-level modules.
"""

from __future__ import annotations

from .build import build_env
from .checkpoints import checkpoint
from .mount import mount
from .published import BuiltEnv, published_env
from .spec import Env

__all__ = ["BuiltEnv", "Env", "build_env", "checkpoint", "mount", "published_env"]
