"""GPU tasks to GPU jobs, every other task to CPU jobs, on one scheduler.

Workers of CPU jobs offer ``--resources CPU={threads}``, workers of GPU jobs
``--resources GPU={n}``.  A task that asks for ``GPU`` runs only on GPU
workers by Dask's own resource rules.  This scheduler plugin gives every
other task a restriction ``CPU: 1`` as it enters the scheduler, before any
transition, so that env builds, driver-env tasks and plain Dask tasks never
take a GPU job's slot (docs/design.md §13.2).  Doing it in the scheduler
rather than in each driver covers every client of a long-lived scheduler.
"""

from __future__ import annotations

from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

KINDS = ("cpu", "gpu")


def kind_of(restrictions: dict[str, float] | None) -> str:
    """The kind of job a task with these resource restrictions needs."""
    return "gpu" if restrictions and "GPU" in restrictions else "cpu"


class RoutingPlugin(SchedulerPlugin):
    """Adds ``CPU: 1`` to the restrictions of new tasks that do not ask for a GPU."""

    name = "dscheduler-slurm-routing"

    def update_graph(self, scheduler: Any, *, tasks: Any = (), **kwargs: Any) -> None:
        for key in tasks:
            ts = scheduler.tasks.get(key)
            if ts is None or ts.state != "released":
                continue  # already running or done: its placement is decided
            restrictions = ts.resource_restrictions or {}
            if "GPU" not in restrictions and "CPU" not in restrictions:
                ts.resource_restrictions = {**restrictions, "CPU": 1}
