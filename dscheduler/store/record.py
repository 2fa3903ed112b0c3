"""A node record and its attempts as types: the one place their fields are named.

:class:`Record` is ``{task}.json`` (docs/design.md §3, §11); :class:`Attempt`
is one entry of its ``attempts``.  ``Record.from_json(dict)`` and
``Record.to_json()`` are the only translation between them and the stored
JSON (format 2); reading and writing the file is
:mod:`dscheduler.store.records`.  Every other module uses attributes.

Keys a stored record has that this version does not know (written by a newer
one, or by hand) are kept in ``extra`` and written back, so a
read-modify-write (a retry, ``verify --repair``) loses nothing.  Optional
fields are written only when set, as the dicts were: a record read and written
again keeps its keys.  A record whose ``attempts`` is not a list of objects
raises :class:`RecordFormError` (a damaged record to its reader).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class State(StrEnum):
    """A node's state: the states of a record and of an attempt (docs/design.md §3), and
    ``interrupted``, a ``running`` record whose node lease nobody holds (never stored).
    A str: JSON, display and comparisons with stored text are unchanged."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DAMAGED = "damaged"
    INTERRUPTED = "interrupted"


RUNNING = State.RUNNING
SUCCEEDED = State.SUCCEEDED
FAILED = State.FAILED
CANCELLED = State.CANCELLED
DAMAGED = State.DAMAGED
INTERRUPTED = State.INTERRUPTED
#: The states a record or an attempt is stored with.
NODE_STATES = (RUNNING, FAILED, DAMAGED, CANCELLED, SUCCEEDED)

#: The record format this version writes: ``format`` 2 records also say what the node
#: is (label, model, config, env, call: docs/design.md §11).
FORMAT = 2


class RecordFormError(ValueError):
    """A stored record whose structure is not a record's (the reader names the file)."""


#: Attempt fields written even when None (every attempt has them).
_ATTEMPT_ALWAYS = ("attempt", "state", "host", "pid", "worker", "slurm_job_id", "slurm_node",
                   "worker_log", "submission", "start")
#: Attempt fields written only when set.
_ATTEMPT_OPTIONAL = ("log", "subprocess_pid", "exit_code", "function_seconds", "end",
                     "seconds", "error", "traceback", "log_tail")
_ATTEMPT_KNOWN = frozenset(_ATTEMPT_ALWAYS + _ATTEMPT_OPTIONAL)


@dataclass(slots=True)
class Attempt:
    """One try at a node: where and when it ran and how it ended."""

    attempt: int = 1  # 1, 2, ...
    state: str = RUNNING
    host: str | None = None
    pid: int | None = None
    worker: str | None = None  # the Dask worker's address
    slurm_job_id: str | None = None  # on a SLURM worker (docs/design.md §13.4)
    slurm_node: str | None = None
    worker_log: str | None = None
    submission: str | None = None  # the ds.compute/ds.submit call's id
    start: str | None = None  # ISO times, UTC
    log: str | None = None  # the node's log file (env tasks)
    subprocess_pid: int | None = None  # the env task's process
    exit_code: int | None = None
    function_seconds: float | None = None  # the function's own time, in the env
    end: str | None = None
    seconds: float | None = None
    error: str | None = None
    traceback: str | None = None
    log_tail: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attempt:
        """An attempt from its stored dict (unknown keys into ``extra``)."""
        attempt = cls(**{k: v for k, v in data.items() if k in _ATTEMPT_KNOWN})
        if not _ATTEMPT_KNOWN.issuperset(data):
            attempt.extra = {k: v for k, v in data.items() if k not in _ATTEMPT_KNOWN}
        return attempt

    def to_json(self) -> dict[str, Any]:
        """The stored dict: the fields every attempt has, those set, then ``extra``."""
        out = {"attempt": self.attempt, "state": self.state, "host": self.host,
               "pid": self.pid, "worker": self.worker, "slurm_job_id": self.slurm_job_id,
               "slurm_node": self.slurm_node, "worker_log": self.worker_log,
               "submission": self.submission, "start": self.start}
        for name in _ATTEMPT_OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.extra:
            out.update(self.extra)
        return out


#: Record fields every record has (written even when None).
_RECORD_ALWAYS = ("task", "version", "key", "name", "env_id", "run_id", "case", "upstream",
                  "state", "attempts")
#: What the node is (graph/calls.py): written when ``format`` is set (format 2 on).
_RECORD_INFO = ("format", "label", "model", "config", "env", "call")
#: Written only when set (not None, and for tracking, not empty).
_RECORD_OPTIONAL = ("seq", "output", "damaged")
_RECORD_TRACKING = ("params", "metrics", "metric_history", "tags", "artifacts")
_RECORD_KNOWN = frozenset(_RECORD_ALWAYS + _RECORD_INFO + _RECORD_OPTIONAL + _RECORD_TRACKING)


@dataclass(slots=True)
class Record:
    """A node's record: what the node is, its state, its attempts and its output."""

    task: str | None = None
    version: str | None = None
    key: str | None = None  # the full key; the .done link points at it
    name: str | None = None  # f"{task}-{key16}"
    env_id: str | None = None
    run_id: str | None = None
    case: str | None = None
    upstream: list[str] = field(default_factory=list)  # full keys
    state: str | None = None  # one of NODE_STATES (a listing's pseudo-records: "pending")
    attempts: list[Attempt] = field(default_factory=list)
    format: int | None = None  # None: written before records said what the node is
    label: str = ""
    model: str | None = None  # the RunConfig's class, "module.Class"
    config: dict[str, Any] | None = None  # the RunConfig's fields
    env: dict[str, Any] | None = None  # the Env's fields
    call: dict[str, Any] | None = None  # fn, module, qualname, file, code, args
    seq: int | None = None  # orders the node's index entries (records.next_seq)
    output: dict[str, Any] | None = None  # what the value is and where (store/values.py)
    damaged: str | None = None  # why `verify --repair` demoted it
    params: dict[str, Any] = field(default_factory=dict)  # tracking (run/tracking.py)
    metrics: dict[str, Any] = field(default_factory=dict)
    metric_history: dict[str, list[list[Any]]] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        """A record from its stored dict; RecordFormError when ``attempts`` is no list
        of objects."""
        known = {k: v for k, v in data.items() if k in _RECORD_KNOWN}
        stored = known.pop("attempts", None) or []
        if not isinstance(stored, list) or not all(isinstance(a, dict) for a in stored):
            raise RecordFormError(f"its attempts are {stored!r:.80}, not a list of objects")
        for name in ("upstream", "params", "metrics", "metric_history", "tags", "artifacts"):
            if name in known and not known[name]:
                del known[name]  # null or empty: the default
        if known.get("label") is None:
            known.pop("label", None)
        record = cls(**known, attempts=[Attempt.from_json(a) for a in stored])
        if not _RECORD_KNOWN.issuperset(data):
            record.extra = {k: v for k, v in data.items() if k not in _RECORD_KNOWN}
        return record

    def to_json(self) -> dict[str, Any]:
        """The stored dict (json.dumps-able as :func:`records.record_text` writes it)."""
        out: dict[str, Any] = {
            "task": self.task, "version": self.version, "key": self.key, "name": self.name,
            "env_id": self.env_id, "run_id": self.run_id, "case": self.case,
            "upstream": self.upstream, "state": self.state,
            "attempts": [a.to_json() for a in self.attempts]}
        if self.format is not None:
            out.update(format=self.format, label=self.label, model=self.model,
                       config=self.config, env=self.env, call=self.call)
        if self.seq is not None:
            out["seq"] = self.seq
        if self.output is not None:
            out["output"] = self.output
        if self.damaged is not None:
            out["damaged"] = self.damaged
        for name in _RECORD_TRACKING:
            value = getattr(self, name)
            if value:
                out[name] = value
        if self.extra:
            out.update(self.extra)
        return out

    def describe(self, info: dict[str, Any]) -> None:
        """Set what the node is from :func:`dscheduler.graph.calls.describe`'s dict."""
        for name, value in info.items():
            if name in _RECORD_INFO:
                setattr(self, name, value)
            else:
                self.extra[name] = value

    @property
    def last(self) -> Attempt:
        """The last attempt (an empty one when there is none)."""
        return self.attempts[-1] if self.attempts else Attempt(attempt=0, state="")

    @property
    def code_digest(self) -> str | None:
        """The digest of the task's code the record keeps (``call.code.digest``)."""
        code = (self.call or {}).get("code")
        return code.get("digest") if isinstance(code, dict) else None
