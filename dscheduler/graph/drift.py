"""Code drift: a task whose code changed while its version did not (docs/design.md §11).

The code is not part of a node's key (§2), so each record keeps a digest of the function's
source (:func:`code_digest`), and :func:`check` compares it for the finished nodes of a plan.
The setting ``results.code_drift`` says what then happens: ``warn`` (the default: a
:class:`CodeDriftWarning` and ``Plan.drift``), ``rerun`` (the nodes run again, and what depends
on them) or ``ignore`` (nothing is read).  The digest covers the function's tokens from its
``def`` line on, without comments, blank lines or the decorator, not the functions it calls;
digests carry their ``scheme`` (tokens differ between Python releases) and are compared only
within one.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import sys
import textwrap
import tokenize
import warnings
from typing import Any, Protocol

from .. import settings
from ..errors import ConfigError, StoreError
from ..store import Store
from ..store.record import Record
from ..store.records import read_node
from ..store.state import Reason, Why, upstream_runs
from .node import Node

SCHEME = f"tokens-py{sys.version_info.major}.{sys.version_info.minor}"
DRIFT = Reason.DRIFT
MODES = ("warn", "rerun", "ignore")
_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}

_digests: dict[Any, dict[str, str] | None] = {}


class PlanLike(Protocol):
    """What :func:`check` reads and annotates of a plan: :class:`~dscheduler.graph.plan.Plan`
    is one (plan.py calls :func:`check`, so this module does not name Plan)."""

    store: Store
    nodes: list[Node]  # upstream first
    reasons: dict[str, Why]  # key -> why it runs: check adds the reruns
    drift: dict[str, str]  # key -> code drift: check fills it


class CodeDriftWarning(UserWarning):
    """Finished nodes whose task's code changed since their results, version unchanged."""


def code_digest(fn: Any) -> dict[str, str] | None:
    """``{"digest", "scheme"}`` of ``fn``'s source, or None when it has none to read."""
    code = getattr(fn, "__code__", None)
    key = code if code is not None else fn
    if key in _digests:
        return _digests[key]
    found: dict[str, str] | None = None
    try:
        source = textwrap.dedent(inspect.getsource(fn))
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (OSError, TypeError, tokenize.TokenError, IndentationError, SyntaxError):
        tokens = []
    start = next((i for i, t in enumerate(tokens)
                  if t.type == tokenize.NAME and t.string in ("def", "async")), None)
    if start is not None:
        text = "\x00".join(t.string if t.type not in (tokenize.INDENT, tokenize.DEDENT)
                           else tokenize.tok_name[t.type]
                           for t in tokens[start:] if t.type not in _SKIP)
        found = {"digest": hashlib.sha256(text.encode()).hexdigest(), "scheme": SCHEME}
    _digests[key] = found
    return found


def differs(current: dict[str, str] | None, stored: Any) -> bool:
    """Whether a stored ``call.code`` differs from ``current`` (False when either is
    missing or they use different schemes: nothing can be told then)."""
    if not current or not isinstance(stored, dict) or stored.get("scheme") != current["scheme"]:
        return False
    return bool(stored.get("digest") != current["digest"])


def stored_code(record: Record | None) -> Any:
    """The ``call.code`` of a record (None for records made before digests were kept)."""
    call = record.call if record is not None else None
    return call.get("code") if isinstance(call, dict) else None


def mode(value: str | None = None) -> str:
    found = str(settings.get("results.code_drift", value))
    if found not in MODES:
        raise ConfigError(f"setting results.code_drift={found!r} must be one of {MODES}")
    return found


def _drifted(node: Node, plan: PlanLike) -> bool:
    try:
        record = read_node(node.paths(plan.store).record)
    except (StoreError, OSError):
        return False
    return differs(code_digest(node.task.fn), stored_code(record))


def check(plan: PlanLike, how: str | None = None) -> None:
    """Find finished nodes of ``plan`` whose code drifted; act per ``results.code_drift``.

    One record is read per task (its first finished node); only when that one
    drifted are the task's other finished records read.  A task whose sampled
    record is current is taken as current: a store index that keeps each
    record's ``call.code`` makes this exact.  Nodes downstream of a rerun run
    too, with the plan's reason (:func:`~dscheduler.store.state.upstream_runs`).
    """
    how = mode(how)
    if how == "ignore":
        return
    cached: dict[str, list[Node]] = {}
    for node in plan.nodes:
        if node.key not in plan.reasons:
            cached.setdefault(node.task.location, []).append(node)
    for nodes in cached.values():
        if code_digest(nodes[0].task.fn) is None or not _drifted(nodes[0], plan):
            continue
        for node in nodes:
            if node is nodes[0] or _drifted(node, plan):
                plan.drift[node.key] = DRIFT
    if not plan.drift:
        return
    if how == "rerun":
        for node in plan.nodes:  # upstream first: what depends on a rerun runs too
            if node.key in plan.drift:
                plan.reasons[node.key] = Why(DRIFT)
            elif node.key not in plan.reasons:
                why = upstream_runs(node.upstream, plan.reasons)
                if why is not None:
                    plan.reasons[node.key] = why
        return
    names = sorted({n.task.name for n in plan.nodes if n.key in plan.drift})
    warnings.warn(
        f"{len(plan.drift)} finished node(s) of task(s) {', '.join(names)} were computed by "
        "code that has changed since, under the same version: their stored results are "
        "reused. Bump the task's version to recompute them, or set results.code_drift to "
        "'rerun' (or 'ignore')",
        CodeDriftWarning, stacklevel=3,
    )
