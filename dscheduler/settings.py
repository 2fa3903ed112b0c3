"""Defaults, resolved in one place through dask's config system.

The packaged ``dscheduler.yaml`` is merged into ``dask.config`` under the
``dscheduler`` namespace, so dask's own rules give the precedence: an
argument (``override``) beats an environment variable
(``DASK_DSCHEDULER__LEASE__TTL``), which beats a user file
(``~/.config/dask/dscheduler.yaml``), which beats the packaged default.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import dask.config
import yaml

_DEFAULTS = Path(__file__).with_name("dscheduler.yaml")

with _DEFAULTS.open() as _f:
    _defaults = yaml.safe_load(_f)
dask.config.update_defaults(_defaults)


def get(key: str, override: Any = None) -> Any:
    """The setting ``dscheduler.{key}``, or ``override`` when it is not None."""
    return dask.config.get(f"dscheduler.{key}", override_with=override)


def node_local(key: str, fallback: str, override: Any = None) -> Path:
    """A node-local directory setting; ``null`` means ``fallback`` under the temp dir."""
    value = get(key, override)
    if value is None:
        value = Path(tempfile.gettempdir()) / f"{fallback}-{os.getuid()}"
    return Path(value).expanduser()
