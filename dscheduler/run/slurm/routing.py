"""Each task to the kind of job it asks for, on one scheduler (docs/design.md §13.2).

Workers of a ``kind`` job offer that kind's resource (:func:`.options.resource_of`): ``CPU``
(kind ``cpu``), ``GPU`` (kind ``gpu``), ``job-{name}`` (a named kind).  As a task enters the
scheduler, before any transition, :class:`RoutingPlugin` rewrites its restrictions: ``{"job":
NAME}`` (plus ``GPU: n`` for n GPUs) becomes ``{resource of NAME: n or 1}``; a task asking for
neither ``job``, ``GPU`` nor ``CPU`` gets ``CPU: 1``, so env builds, driver-env tasks and plain
Dask tasks never take another kind's slot.  In the scheduler, it covers every client of a
long-lived one.  :func:`check_resources` checks a driver's asks against the kinds the
scheduler knows before anything is submitted: an unknown kind, or more GPUs than a worker of
the kind has, is a ConfigError naming the task, the kind and the known ones.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from ...errors import ConfigError
from .options import SlurmOptions

log = logging.getLogger("dscheduler.slurm")

#: The kinds of a cluster without named kinds: name -> what a worker offers.
DEFAULT_KINDS: dict[str, dict[str, Any]] = {
    "cpu": {"resource": "CPU", "per_worker": 1, "gpus": 0},
    "gpu": {"resource": "GPU", "per_worker": 1, "gpus": 1}}


def kinds_of(options: SlurmOptions) -> dict[str, dict[str, Any]]:
    """Every kind of ``options``: name -> its resource, amount per worker and GPUs per
    worker (plain values: the driver asks the scheduler for them)."""
    out = {}
    for name in options.kind_names:
        kind = options.kind(name)
        out[name] = {"resource": kind.resource, "per_worker": kind.per_worker,
                     "gpus": kind.gpus // kind.processes}
    return out


def kind_of(restrictions: Mapping[str, float] | None,
            kinds: Mapping[str, str]) -> tuple[str, float]:
    """(kind, slots) a task with these (routed) restrictions needs; ``kinds``: resource ->
    kind name."""
    for resource, amount in (restrictions or {}).items():
        kind = kinds.get(resource)
        if kind is None and resource.startswith("job-"):
            kind = resource[4:]  # an unknown kind: counted for none
        if kind is not None and kind != "cpu":
            return kind, amount
    return "cpu", (restrictions or {}).get("CPU", 1)


def route(restrictions: Mapping[str, Any] | None,
          kinds: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The restrictions a task gets in the scheduler (see the module docstring)."""
    out = dict(restrictions or {})
    if "job" in out:
        name = str(out.pop("job"))
        amount = out.pop("GPU", None) or out.pop("CPU", None) or 1
        out.pop("CPU", None)
        # an unknown kind (a client that skipped check_resources): a resource no worker
        # offers, so the task waits as no-worker rather than running in the wrong job
        resource = kinds[name]["resource"] if name in kinds else f"job-{name}"
        out[resource] = amount
    elif "GPU" not in out and "CPU" not in out:
        out["CPU"] = 1
    return out


class RoutingPlugin(SchedulerPlugin):
    """Rewrites the restrictions of new tasks to their kind's resource (:func:`route`)."""

    name = "dscheduler-slurm-routing"

    def __init__(self, kinds: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.kinds = {k: dict(v) for k, v in (kinds or DEFAULT_KINDS).items()}

    def update_graph(self, scheduler: Any, *, tasks: Any = (), **kwargs: Any) -> None:
        for key in tasks:
            ts = scheduler.tasks.get(key)
            if ts is None or ts.state != "released":
                continue  # already running or done: its placement is decided
            asked = ts.resource_restrictions or {}
            if "job" in asked and str(asked["job"]) not in self.kinds:
                log.warning("task %s asks for the unknown job kind %r (known: %s): it waits",
                            key, asked["job"], ", ".join(self.kinds))
            ts.resource_restrictions = route(asked, self.kinds)


def _scheduler_kinds(dask_scheduler: Any) -> dict[str, dict[str, Any]] | None:
    """Run on the scheduler: its kinds of job, None without a RoutingPlugin."""
    plugin = dask_scheduler.plugins.get(RoutingPlugin.name)
    return None if plugin is None else dict(plugin.kinds)


def check_resources(client: Any, asks: Mapping[str, Mapping[str, Any]]) -> None:
    """A ConfigError unless the scheduler of ``client`` has a kind of job for each task's
    resources (``asks``: task name -> resources); one round trip, only when a task asks for
    a ``job`` or ``GPU``."""
    asks = {t: r for t, r in asks.items() if "job" in r or "GPU" in r}
    if not asks:
        return
    try:
        kinds = client.run_on_scheduler(_scheduler_kinds)
    except Exception:  # a scheduler without dscheduler: no kinds known
        kinds = None
    for task, resources in sorted(asks.items()):
        _check_one(task, resources, kinds)


def _check_one(task: str, resources: Mapping[str, Any],
               kinds: Mapping[str, Mapping[str, Any]] | None) -> None:
    if "job" not in resources:
        if kinds is None:
            return  # GPU workers of a cluster of the user's own: up to them
        name = "gpu"
    elif kinds is None:
        raise ConfigError(
            f"task {task!r} asks for the job kind {resources['job']!r}, but its scheduler "
            "has no dscheduler kinds of job: run it with cluster='slurm', 'store' or "
            "ds.slurm_cluster()")
    else:
        name = str(resources["job"])
    if name not in kinds:
        raise ConfigError(
            f"task {task!r} asks for the job kind {name!r}, which this SLURM cluster does not "
            f"have; known kinds: {', '.join(kinds)} (named kinds are set in the settings "
            "dscheduler.slurm.kinds)")
    gpus, have = resources.get("GPU", 0), kinds[name]["gpus"]
    if gpus > have:
        fix = {"cpu": "pick a kind with GPUs", "gpu": "raise gpu.gpus or lower gpu.processes"
               }.get(name, f"raise kinds.{name}.gpus or lower kinds.{name}.processes")
        raise ConfigError(
            f"task {task!r} asks for {gpus:g} GPU(s) of job kind {name!r}, whose workers have "
            f"{have}: it would never run; {fix}")
