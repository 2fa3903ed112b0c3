"""How a task runs: env, resources, retries, timeout, cache, priority.

Where and how often a task runs must not move its outputs (docs/design.md §2),
so resources, retries, timeout, cache and priority are not hashed.  The env
is: a node's key covers the env_id it runs in, since another env may give
another result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..envs import Env
from ..errors import ConfigError


class _Auto:
    """The default ``env``: the RunConfig's env for a run-bound task, else none."""

    def __repr__(self) -> str:
        return "auto"

    def __reduce__(self) -> str:
        return "AUTO"


AUTO: Any = _Auto()


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    """How a task runs; none of these is part of its key."""

    env: Any = AUTO  # ds.Env | None | AUTO
    resources: Mapping[str, float] | None = None
    retries: int | None = None  # None: the setting task.retries
    timeout: float | None = None  # None: the setting task.timeout
    cache: bool = True
    priority: int = 0


OPTION_HELP = {
    "env": "auto: cfg.env() when the first argument is a RunConfig, else the worker's own "
    "Python; or a ds.Env; or None for the worker's own Python",
    "resources": "None, or a dict such as {'GPU': 1} (dask worker resources); "
    "{'job': NAME} picks a SLURM job kind",
    "retries": "None (setting task.retries), or how often to retry a failed attempt",
    "timeout": "None (setting task.timeout), or seconds an attempt in an env may run",
    "cache": "True: skip when a finished result is stored; False: always run",
    "priority": "0; higher runs first when workers are busy",
}


def check_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    valid = {f.name for f in dataclasses.fields(TaskOptions)}
    unknown = sorted(set(options) - valid)
    if unknown:
        lines = "\n".join(f"  {k}: {OPTION_HELP[k]}" for k in sorted(valid))
        raise ConfigError(f"task {name!r}: unknown option(s) {unknown}; valid options:\n{lines}")
    out = dict(options)
    env = out.get("env", AUTO)
    if env is not AUTO and env is not None and not isinstance(env, Env):
        raise ConfigError(
            f"task {name!r}: env={env!r} is not a ds.Env; pass ds.Env(...), or None to run "
            "in the worker's own Python"
        )
    retries = out.get("retries")
    if retries is not None and (not isinstance(retries, int) or retries < 0):
        raise ConfigError(f"task {name!r}: retries={retries!r} must be an int >= 0")
    timeout = out.get("timeout")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise ConfigError(f"task {name!r}: timeout={timeout!r} must be seconds > 0, or None")
    resources = out.get("resources")
    if resources is not None:
        if not isinstance(resources, Mapping) or not all(
            (isinstance(k, str) and isinstance(v, int | float))
            or (k == "job" and isinstance(v, str)) for k, v in resources.items()
        ):
            raise ConfigError(
                f"task {name!r}: resources={resources!r} must map names to amounts, "
                "e.g. {'GPU': 1}, and 'job' to the name of a SLURM job kind"
            )
        out["resources"] = dict(resources)
    if not isinstance(out.get("cache", True), bool):
        raise ConfigError(f"task {name!r}: cache must be True or False")
    if not isinstance(out.get("priority", 0), int):
        raise ConfigError(f"task {name!r}: priority must be an int")
    return out


