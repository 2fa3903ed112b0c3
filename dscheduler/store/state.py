"""A node's state and why it runs: the one place they are decided.

:func:`state_of` says what a record's state is now (a ``running`` record
whose node lease nobody holds is ``interrupted``); :func:`judge` says, from a
node's record and ``.done`` link, whether it finished with its key and, if
not, why it runs.  Planning, ``status``, the executor and drift checking ask
these, never the record's text.  A :class:`Why` is a :class:`Reason` (what
kind) and a detail (the upstream's name); it is the str people read, so
JSON and display are unchanged, and code decides on ``why.kind``, never on
the text (docs/design.md §5.1, §12).  Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from .. import identity
from ..errors import StoreError
from .layout import Layout, NodePaths
from .lease import lease_held
from .record import CANCELLED, DAMAGED, FAILED, INTERRUPTED, RUNNING, SUCCEEDED, Record, State
from .records import done_key, read_node


class Reason(StrEnum):
    """Why a node runs; the value is the text people read."""

    NO_RECORD = "no record"
    FAILED = "failed before"
    FORCED = "forced"
    NO_CACHE = "cache=False"
    CHANGED = "changed since the stored result (task version, arguments or upstream)"
    INTERRUPTED = "interrupted (its last attempt never finished)"
    IN_PROGRESS = "in progress elsewhere (its lease is held): waited for, not run twice"
    CANCELLED = "cancelled before"
    DAMAGED = "its stored record or value is damaged"
    UNLINKED = ("finished, but its .done link is missing: its task restores the link and "
                "reports it cached, without running it again")
    UPSTREAM = "upstream will run"
    DRIFT = "code changed since the stored result, version unchanged"

    @property
    def text(self) -> str:
        return self.value

    @property
    def forces_rerun(self) -> bool:
        """Whether the node runs even over a stored success (its task must not take it)."""
        return self in _FORCING


_FORCING = frozenset({Reason.FORCED, Reason.NO_CACHE, Reason.DRIFT})

#: Why an unfinished record's node runs, by its state (a held ``running`` lease aside).
_BY_STATE = {FAILED: Reason.FAILED, RUNNING: Reason.INTERRUPTED,
             INTERRUPTED: Reason.INTERRUPTED, CANCELLED: Reason.CANCELLED,
             DAMAGED: Reason.DAMAGED}


class Why(str):
    """A reason with its detail; the str is the text people read: ``"upstream will run
    (prep-0a1b...)"``.  A str subclass, so tables, JSON and ``==`` with the text work
    as they did; decisions use :attr:`kind`."""

    kind: Reason
    detail: str

    def __new__(cls, kind: Reason, detail: str = "") -> Why:
        self = super().__new__(cls, f"{kind.value} ({detail})" if detail else kind.value)
        self.kind, self.detail = kind, detail
        return self

    def __reduce__(self) -> tuple[type[Why], tuple[Reason, str]]:
        return Why, (self.kind, self.detail)

    @property
    def forces_rerun(self) -> bool:
        return self.kind.forces_rerun


class _Upstream(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def name(self) -> str: ...


def upstream_runs(upstream: Iterable[_Upstream], reasons: Mapping[str, Why]) -> Why | None:
    """``upstream will run ({name})`` for the first of a node's ``upstream`` nodes that
    runs (has a reason); None when none does.  Planning and drift both ask this."""
    up = next((u for u in upstream if u.key in reasons), None)
    return None if up is None else Why(Reason.UPSTREAM, up.name)


@dataclass(frozen=True, slots=True)
class Judged:
    """What :func:`judge` found: ``why`` the node runs (None: finished with its key),
    and the record it read (None when it had none to read)."""

    why: Why | None
    record: Record | None = None


def state_of(layout: Layout, record: Record) -> State | None:
    """The record's state now: ``interrupted`` for a ``running`` record whose node lease
    nobody holds (its process died); None for a record without a known state."""
    try:
        state = State(record.state) if record.state is not None else None
    except ValueError:
        return None
    if state == RUNNING and not lease_held(
            layout.node_lease_path(str(record.key or "")[:16] or "x")):
        return INTERRUPTED
    return state


def judge(layout: Layout, paths: NodePaths, key: str) -> Judged:
    """Whether the node at ``paths`` finished with ``key``, from its record and link.

    Not finished: the record is missing or another key's (``no record``, or
    ``changed`` over a success), damaged, not succeeded (its state's reason;
    ``in progress`` for a running record whose lease is held), or succeeded
    without its link (``unlinked``: the node's task restores the link).
    A record of another key with the same short id is a CollisionError.
    """
    try:
        record = read_node(paths.record)
    except StoreError:
        return Judged(Why(Reason.DAMAGED))
    except OSError:
        return Judged(Why(Reason.NO_RECORD))
    if record is None:
        return Judged(Why(Reason.NO_RECORD))
    stored = record.key
    if stored != key:
        if isinstance(stored, str) and identity.short_id(stored) == identity.short_id(key):
            identity.check_collision(key, stored, str(paths.record))
        return Judged(Why(Reason.CHANGED if record.state == SUCCEEDED else Reason.NO_RECORD),
                      record)
    if record.state == SUCCEEDED:
        if done_key(paths) != key:
            return Judged(Why(Reason.UNLINKED), record)  # docs/design.md §14.1, point 3
        return Judged(None, record)
    state = state_of(layout, record)
    if state == RUNNING:  # e.g. a detached graph still running it (docs/design.md §13.7)
        return Judged(Why(Reason.IN_PROGRESS), record)
    reason = Reason.NO_RECORD if state is None else _BY_STATE.get(state, Reason.NO_RECORD)
    return Judged(Why(reason), record)
