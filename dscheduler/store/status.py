"""What a store holds right now, read from its files alone (no scheduler needed).

:func:`summarize` counts nodes by state and finds the latest failures.  It
does not parse finished records: a node whose ``.done`` link exists has
succeeded; only the other records are read.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StoreError
from .layout import Layout, done_name, record_task
from .records import read_record


@dataclass
class Failure:
    """A failed node's record, where it is and when it was written."""

    path: Path
    mtime: float
    record: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.record.get("name"))

    @property
    def last_attempt(self) -> dict[str, Any]:
        return (self.record.get("attempts") or [{}])[-1]


@dataclass
class Summary:
    """Counts of runs, built envs and nodes by state; failures, newest first."""

    root: Path
    runs: int = 0
    envs: int = 0
    states: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    damaged: list[Path] = field(default_factory=list)


def _node_dirs(layout: Layout) -> list[tuple[Path, list[str]]]:
    dirs = []
    for root in (layout.runs_dir, layout.tasks_dir):
        if root.is_dir():
            for dirpath, _dirnames, filenames in os.walk(root):
                if any(record_task(f) for f in filenames):
                    dirs.append((Path(dirpath), filenames))
    return dirs


def summarize(layout: Layout) -> Summary:
    """Walk the store once: runs, envs, node states, failures."""
    out = Summary(layout.root, runs=len(layout.run_records()), envs=len(layout.env_records()))
    for folder, filenames in _node_dirs(layout):
        names = set(filenames)
        for name in filenames:
            task = record_task(name)
            if task is None:
                continue
            if done_name(task) in names:
                out.states["succeeded"] += 1  # the link says so: no need to parse the record
                continue
            path = folder / name
            try:
                record = read_record(path)
            except StoreError:
                out.damaged.append(path)
                continue
            if not record or "attempts" not in record:
                continue
            state = str(record.get("state"))
            out.states[state] += 1
            if state == "failed":
                out.failures.append(Failure(path, path.stat().st_mtime, record))
    out.failures.sort(key=lambda f: f.mtime, reverse=True)
    return out
