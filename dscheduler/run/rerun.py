"""``dscheduler rerun RUN|NODE``: run recorded calls again, into new attempts.

:func:`rerun` rebuilds the nodes from today's code and the records' typed arguments
(:mod:`dscheduler.graph.calls`) and runs them with ``cache=False`` (upstream nodes stay cached),
so each record gains an attempt.  Before anything runs it refuses when today's code would not be
the recorded call (the task's version or code changed, or an input: a file's content, the env),
naming what differs; ``force=True`` runs today's code anyway.  Today's code is what this process
has loaded, else the files the records name, each checked to be the user's own
(:func:`~dscheduler.graph.imports.own_file`); any other file is refused, naming it and its owner,
and ``on_load`` is told of each file loaded (docs/design.md §15).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..graph import Node
from ..graph import drift as code_drift
from ..graph.calls import Gate, rebuild
from ..graph.explain import explain
from ..graph.imports import own_file
from ..store import Store, store_of
from ..store.catalogue.runs import find
from .compute import compute
from .handle import Results


def own_code(on_load: Callable[[Path], None] | None = None) -> Gate:
    """A gate (:func:`~dscheduler.graph.calls.rebuild`) that lets the user's own files
    through, telling ``on_load`` of each."""
    def gate(file: Path) -> None:
        resolved = own_file(file)
        if on_load is not None:
            on_load(resolved)
    return gate


def plan_rerun(store: Store, ref: str, force: bool = False,
               on_load: Callable[[Path], None] | None = None) -> list[Node]:
    """The nodes to run again for ``ref`` (a run_id, label, node name or key)."""
    nodes, refusals = [], []
    gate = own_code(on_load)
    for path, record in find(store, ref):
        if not record.task:
            continue  # a run with no node record yet
        node = rebuild(store, record, gate=gate)
        problems = []
        if node.key != record.key:
            why = explain(node, store, reason="its key differs from the record's")
            problems += [str(c) for c in why.changes] or ["an identity input changed"]
        if code_drift.differs(code_drift.code_digest(node.task.fn),
                              code_drift.stored_code(record)):
            problems.append(f"code of task {node.task.name!r} changed since the record was "
                            f"made (version {node.task.version!r} unchanged)")
        if problems and not force:
            refusals.append(f"{record.name} ({path}):\n    " + "\n    ".join(problems))
            continue
        nodes.append(Node(node.task.options(cache=False), node.arguments))
    if refusals:
        raise ConfigError(
            "rerun refused: today's code would not make the recorded call of\n  "
            + "\n  ".join(refusals)
            + "\nrun it anyway (today's code, a new attempt or a new record) with --force"
        )
    if not nodes:
        raise ConfigError(f"{ref!r} names no node record to run again")
    return nodes


def rerun(ref: str, *, store: Store | str | os.PathLike[str] | None = None,
          cluster: Any = "local", force: bool = False, progress: bool | None = None,
          on_load: Callable[[Path], None] | None = None) -> Results:
    """Run the recorded calls ``ref`` names again; see the module docstring.

    Raises
    ------
    ConfigError
        ``ref`` names nothing, or today's code differs from the record (without
        ``force``); nothing has run.
    UnsafePathError
        a record names code in a file that is not the user's own; nothing has run.
    """
    store = store_of(store)
    nodes = plan_rerun(store, ref, force, on_load)
    return compute(nodes, store=store, cluster=cluster, progress=progress)
