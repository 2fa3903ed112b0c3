"""Tracking inside a task, the worker's half: ``ds.log_param``, ``log_metric``,
``set_tag``, ``log_artifact`` and ``ds.output``.

The functions are implemented once, in :mod:`dscheduler.run.runner`, which
also runs inside env subprocesses.  :mod:`dscheduler.run.execute` calls
:func:`begin` when an attempt starts (a :class:`~dscheduler.run.runner.Tracker`
for this thread), :func:`save` to store the task's value with what it wrote
through ``ds.output`` and ``ds.log_artifact``, and :func:`end` to put the
tracked params, metrics, tags and artifacts into the record
(docs/design.md §11).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import TaskError
from ..store import atomic
from ..store.layout import NodePaths
from ..store.record import Record
from ..store.values import commit_dir, commit_written, save_value
from . import runner

log_param = runner.log_param
log_metric = runner.log_metric
set_tag = runner.set_tag
log_artifact = runner.log_artifact
output = runner.output

__all__ = ["begin", "end", "log_artifact", "log_metric", "log_param", "output", "save",
           "set_tag", "summarize"]


def begin(paths: NodePaths) -> runner.Tracker:
    """A Tracker for the attempt starting now in this thread, with temporary output dirs
    beside the node's outputs (their names are those :func:`remove_partials` sweeps)."""
    # Strings with one token, not three temp_sibling Paths: a tiny task makes these
    # names and uses none of them.
    folder, token = str(paths.dir), os.urandom(6).hex()
    tracker = runner.Tracker(
        None, *(f"{folder}/{atomic.temp_name(f'{paths.task}{suffix}', token)}"
                for suffix in (".zarr", ".files", ".artifacts")))
    runner.CURRENT.set(tracker)
    return tracker


def save(paths: NodePaths, value: Any, *, fresh: bool = False, here: bool = False,
         new_dir: bool = False) -> dict[str, Any]:
    """Store the task's value, or the Zarr group it wrote through ``ds.output()``; then
    publish its ``ds.output("dir")`` files and artifacts.  The record's ``output``.

    ``fresh``: the node has no earlier result whose files would need replacing.
    ``new_dir``: this attempt made the node's directory (:func:`save_value`).
    ``here``: the task ran in this thread (not in an env's subprocess), so it
    asked for its directories through this Tracker, and those it never asked
    for are not looked for: each look is a round trip on a shared
    filesystem, and a tiny task uses none.
    """
    tracker = runner.CURRENT.get()

    def made(folder: str) -> bool:
        if here and tracker is not None and folder not in tracker.made:
            return False
        return Path(folder).is_dir()

    if tracker is not None and made(tracker.output_dir):
        if value is not None:
            raise TaskError(
                f"the task wrote its result through ds.output() and also returned a "
                f"{type(value).__qualname__}; return None from such a task (log small "
                "numbers with ds.log_metric), or use ds.output('dir') for side files"
            )
        out = commit_written(paths, Path(tracker.output_dir))
    else:
        out = save_value(paths, value, fresh=fresh, new_dir=new_dir)
    if tracker is not None:
        for folder, final in ((tracker.files_dir, paths.files),
                              (tracker.artifacts_dir, paths.artifacts)):
            if made(folder):
                name = commit_dir(Path(folder), final)
                if name and final == paths.files:
                    out["files"] = name
            elif not fresh:
                atomic.remove(final)  # an earlier result's
    return out


def summarize(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Record fields from tracking entries: params, metrics (last values),
    metric_history (``[step, value, time]`` per call), tags, artifacts; empty ones left out."""
    params: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    history: dict[str, list[list[Any]]] = {}
    tags: dict[str, str] = {}
    artifacts: dict[str, dict[str, Any]] = {}
    for entry in entries:
        kind, name = entry.get("kind"), str(entry.get("name"))
        if kind == "param":
            params[name] = entry["value"]
        elif kind == "metric":
            metrics[name] = entry["value"]
            history.setdefault(name, []).append([entry["step"], entry["value"], entry["time"]])
        elif kind == "tag":
            tags[name] = entry["value"]
        elif kind == "artifact":
            artifacts[name] = {"name": name, "bytes": entry["bytes"]}
    fields = {"params": params, "metrics": metrics, "metric_history": history, "tags": tags,
              "artifacts": list(artifacts.values())}
    return {k: v for k, v in fields.items() if v}


def end(record: Record, succeeded: bool) -> None:
    """Put the attempt's tracking into ``record``; drop outputs it did not commit."""
    tracker = runner.CURRENT.get()
    runner.CURRENT.set(None)
    if tracker is None:
        return
    fields = summarize(tracker.entries)
    record.params = fields.get("params", {})
    record.metrics = fields.get("metrics", {})
    record.metric_history = fields.get("metric_history", {})
    record.tags = fields.get("tags", {})
    record.artifacts = fields.get("artifacts", [])
    if not succeeded:
        for folder in (tracker.output_dir, tracker.files_dir, tracker.artifacts_dir):
            shutil.rmtree(folder, ignore_errors=True)
