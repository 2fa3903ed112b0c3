"""Exceptions raised by dscheduler, each also a builtin where callers expect one::

    DSchedulerError                     every message quotes the bad value and says the fix
    ├── ConfigError(ValueError)         bad user input: configs, experiments, options
    │   └── IdentityError               a value that cannot be hashed canonically
    ├── CollisionError(RuntimeError)    a short id whose stored full digest differs
    ├── StoreError(OSError)             a store that is missing, corrupt or not writable
    ├── UnsafePathError(PermissionError) a per-user dir another user could write or plant
    ├── LeaseError(RuntimeError)        a lease that could not be taken or was lost
    │   └── LeaseTimeout(TimeoutError)
    ├── CommandError(RuntimeError)      an external command that failed: command, exit, tail
    ├── EnvBuildError(RuntimeError)     an environment that could not be built
    ├── MountError(RuntimeError)        an image that could not be mounted
    ├── GraphError(ValueError)          a graph that cannot run (cycle, missing env)
    └── TaskError(RuntimeError)         a task that failed; carries its record
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

TAIL_LINES = 25


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


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

    def __reduce__(self) -> tuple[Any, ...]:  # errors cross process boundaries (Dask)
        return (type(self), (self.path, self.problem))


class CollisionError(DSchedulerError, RuntimeError):
    """Two different full digests share one short id."""


class StoreError(DSchedulerError, OSError):
    """The store is missing, corrupt or not writable.

    For a damaged file, ``path`` names it and ``why`` says what is wrong.
    """

    def __init__(self, message: str, *, path: Any = None, why: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.why = why

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnsafePathError(DSchedulerError, PermissionError):
    """A per-user directory outside the store that another user owns, could write, or
    replaced by a symlink: using it could run their code as us (docs/design.md §15)."""


class LeaseError(DSchedulerError, RuntimeError):
    """A lease could not be taken, or was lost while held."""


class LeaseTimeout(LeaseError, TimeoutError):
    """Waiting for a lease took longer than allowed."""


class CommandError(DSchedulerError, RuntimeError):
    """An external command failed: ``what`` it did, the command, its exit code, its output."""

    def __init__(self, what: str, cmd: Sequence[str], code: int, output: str) -> None:
        self.what = what
        self.cmd = list(cmd)
        self.code = code
        self.output = output
        text = f"{what}: `{shlex.join(self.cmd)}` exited with {code}"
        if output.strip():
            text += "\n" + tail(output, 10)
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.what, self.cmd, self.code, self.output))

    @property
    def tail(self) -> str:
        return tail(self.output)


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
