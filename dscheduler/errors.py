"""Exceptions raised by dscheduler.

Every error derives from :class:`DSchedulerError` and, where callers expect a
builtin, from that builtin too::

    DSchedulerError
    ├── ConfigError(ValueError)         bad user input: configs, experiments, options
    │   └── IdentityError               a value that cannot be hashed canonically
    ├── CollisionError(RuntimeError)    a short id whose stored full digest differs
    ├── StoreError(OSError)             a store that is missing, corrupt or not writable
    ├── LeaseError(RuntimeError)        a lease that could not be taken or was lost
    │   └── LeaseTimeout(TimeoutError)
    ├── EnvBuildError(RuntimeError)     an environment that could not be built
    ├── MountError(RuntimeError)        an image that could not be mounted
    ├── GraphError(ValueError)          a graph that cannot run (cycle, missing env)
    └── TaskError(RuntimeError)         a task that failed; carries its record

Messages quote the bad value and say how to fix it.
"""

from __future__ import annotations

from typing import Any


class DSchedulerError(Exception):
    """Base class of every dscheduler error."""


class ConfigError(DSchedulerError, ValueError):
    """Bad user input: a config, an experiment file or an option."""


class IdentityError(ConfigError):
    """A value that has no canonical JSON form, named by its field path."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class CollisionError(DSchedulerError, RuntimeError):
    """Two different full digests share one short id."""


class StoreError(DSchedulerError, OSError):
    """The store is missing, corrupt or not writable."""


class LeaseError(DSchedulerError, RuntimeError):
    """A lease could not be taken, or was lost while held."""


class LeaseTimeout(LeaseError, TimeoutError):
    """Waiting for a lease took longer than allowed."""


class EnvBuildError(DSchedulerError, RuntimeError):
    """An environment could not be built."""

    def __init__(self, message: str, *, log_path: str | None = None, tail: str = "") -> None:
        self.log_path = log_path
        self.tail = tail
        parts = [message]
        if tail:
            parts.append("--- last lines of output ---\n" + tail.rstrip())
        if log_path:
            parts.append(f"full log: {log_path}")
        super().__init__("\n".join(parts))


class MountError(DSchedulerError, RuntimeError):
    """An environment image could not be mounted by any backend."""


class GraphError(DSchedulerError, ValueError):
    """A graph that cannot be run: a cycle, a missing env, a bad argument."""


class TaskError(DSchedulerError, RuntimeError):
    """A task failed; ``record`` holds every attempt."""

    def __init__(self, message: str, record: Any = None) -> None:
        self.record = record
        super().__init__(message)
