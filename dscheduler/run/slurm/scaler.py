"""Adaptive scaling per kind of job: each kind's jobs (cpu, gpu, named) for its own tasks.

Written here rather than distributed's ``Adaptive`` (docs/design.md §13.2).  Every ``interval``
seconds, on the cluster's event loop, :class:`Scaler`:

1. **forgets ended jobs**: one whose workers came and went, or that left ``squeue`` without
   connecting, leaves the worker spec at once;
2. **measures demand** per kind, in slots: tasks that can run now (``no-worker``, ``queued``,
   ``processing``), the amount of their kind's resource each (:mod:`.routing`); tasks awaiting
   inputs do not;
3. **asks for** ``min(max_jobs, ceil(demand / slots per job))`` jobs of each kind (never more
   than runnable tasks), at least its ``min_jobs``; after a failed ``sbatch`` that kind waits
   :data:`BACKOFF` seconds;
4. **gives back surplus** jobs that stayed surplus ``idle_timeout`` seconds: pending ones are
   cancelled, running ones retired gracefully (data moved first) once their workers are idle.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Any, Protocol

from tornado.ioloop import PeriodicCallback

from .ledger import queue_states
from .options import resource_of
from .routing import kind_of

if TYPE_CHECKING:
    from .options import SlurmOptions

log = logging.getLogger("dscheduler.slurm")

BACKOFF = 30.0  # seconds without new jobs of a kind after its sbatch failed
SQUEUE_EVERY = 5.0  # seconds between squeue checks of jobs not (or no longer) connected
SQUEUE_SOON = 1.0  # ... when a job's workers just left
GONE_GRACE = 60.0  # a job whose workers left this long ago is cancelled, whatever squeue says


class Jobs(Protocol):
    """What the scaler needs of a cluster (:class:`~.cluster.SlurmCluster` is one): its
    loop, scheduler and jobs, and what it does to them.  The scaler decides; the cluster
    edits its worker spec and submits."""

    @property
    def loop(self) -> Any: ...
    @property
    def scheduler(self) -> Any: ...
    @property
    def status(self) -> Any: ...
    @property
    def workers(self) -> Mapping[str, Any]: ...  # spec name -> its job (sbatch done or not)
    def add_job(self, kind: str) -> str: ...
    def drop_job(self, name: str) -> None: ...
    def job_workers(self, name: str) -> list[str]: ...
    async def sync_jobs(self) -> None: ...


@dataclass
class JobState:
    """What the scaler knows of one worker spec (one SLURM job)."""

    kind: str
    seen: bool = False  # a worker of this job connected once
    left: float | None = None  # when its workers were last seen leaving
    surplus: float | None = None  # since when the job is beyond what the tasks need


def demand(scheduler: Any, caps: Mapping[str, float]) -> dict[str, float]:
    """Slots wanted per kind (the kinds of ``caps``) by the tasks that can run now (stops
    counting at ``caps``)."""
    wanted = dict.fromkeys(caps, 0.0)
    by_resource = {resource_of(kind): kind for kind in caps}
    tasks: Iterable[Any] = chain(scheduler.unrunnable, scheduler.queued,
                                 *(ws.processing for ws in scheduler.workers.values()))
    for ts in tasks:
        kind, slots = kind_of(ts.resource_restrictions, by_resource)
        if kind in wanted:
            wanted[kind] += slots
        if all(wanted[k] >= caps[k] for k in caps):
            break
    return wanted


def targets(wanted: Mapping[str, float], options: SlurmOptions) -> dict[str, int]:
    """Jobs wanted per kind for ``wanted`` slots (:func:`demand`).

    ``min(max_jobs, ceil(slots / slots per job))``: never more jobs than the
    runnable tasks fill, nor than the kind's ``max_jobs``; at least its
    ``min_jobs``.
    """
    out = {}
    for name in options.kind_names:
        kind = options.kind(name)
        target = min(kind.max_jobs, math.ceil(wanted.get(name, 0) / kind.slots))
        out[name] = max(target, kind.min_jobs)
    return out


def slot_caps(options: SlurmOptions) -> dict[str, float]:
    """Slots per kind beyond which :func:`demand` need not count: all ``max_jobs`` full."""
    return {name: float(options.kind(name).max_jobs * options.kind(name).slots)
            for name in options.kind_names}


class Scaler:
    """Keeps each kind of job at what its tasks need (see the module docstring)."""

    def __init__(self, cluster: Jobs, options: SlurmOptions) -> None:
        self.cluster = cluster
        self.options = options
        self.jobs: dict[str, JobState] = {}
        self.backoff = dict.fromkeys(options.kind_names, 0.0)
        self.errors: list[str] = []  # sbatch failures, newest last
        self._next_squeue = 0.0
        self._busy = False
        self.state = "running"
        self._callback = PeriodicCallback(self._tick, self.options.interval * 1000)
        loop = cluster.loop
        if loop is None:
            raise RuntimeError("the SLURM cluster has no event loop: it is not running")
        loop.add_callback(self._callback.start)

    def stop(self, reason: str = "") -> None:
        """Stop scaling (the cluster's close calls it)."""
        self.state = "stopped"
        self._callback.stop()

    async def _tick(self) -> None:
        if self._busy or self.state != "running":
            return
        self._busy = True
        try:
            await self.adapt()
        except Exception:
            log.warning("scaling the SLURM cluster failed", exc_info=True)
        finally:
            self._busy = False

    # -- one round ---------------------------------------------------------------------

    async def adapt(self) -> None:
        cluster = self.cluster
        if cluster.status.name != "running" or cluster.scheduler is None:
            return
        scheduler = cluster.scheduler
        await self._forget_ended(scheduler)
        wanted = targets(demand(scheduler, slot_caps(self.options)), self.options)  # jobs per kind
        now = time.time()
        for kind, target in wanted.items():
            live = [n for n, s in self.jobs.items() if s.kind == kind and s.left is None]
            if target > len(live):
                for name in live:
                    self.jobs[name].surplus = None
                if now >= self.backoff[kind]:
                    for _ in range(target - len(live)):
                        self._add(kind)
            else:
                await self._shrink(scheduler, kind, live, len(live) - target, now)
        try:
            await cluster.sync_jobs()  # sbatch of new specs, scancel of dropped ones
        except Exception as err:  # a failed sbatch: the job keeps it in .error
            log.debug("correcting the SLURM cluster's state: %s", err)
        self._note_failures(now)

    def _add(self, kind: str) -> None:
        self.jobs[self.cluster.add_job(kind)] = JobState(kind)

    def _drop(self, name: str) -> None:
        """Out of the spec: the next ``sync_jobs`` closes (scancels) its job."""
        self.cluster.drop_job(name)
        self.jobs.pop(name, None)

    def _note_failures(self, now: float) -> None:
        for name, job in list(self.cluster.workers.items()):
            error = getattr(job, "error", None)
            if error is None or name not in self.jobs:
                continue
            kind = self.jobs[name].kind
            self.backoff[kind] = now + BACKOFF
            self.errors.append(f"{kind} job: {error}")
            log.warning("sbatch of a %s job failed; retrying in %d s: %s", kind, BACKOFF,
                        error)
            self._drop(name)

    # -- ended jobs ------------------------------------------------------------------

    def _worker_names(self, name: str) -> list[str]:
        return self.cluster.job_workers(name)

    async def _forget_ended(self, scheduler: Any) -> None:
        connected = {str(ws.name) for ws in scheduler.workers.values()}
        now = time.time()
        unconnected: dict[str, str] = {}  # job id -> spec name
        for name, state in list(self.jobs.items()):
            job = self.cluster.workers.get(name)
            if job is None or not getattr(job, "job_id", None):
                continue  # not submitted yet
            if any(w in connected for w in self._worker_names(name)):
                state.seen, state.left = True, None
                continue
            if state.seen and state.left is None:
                state.left = now  # its workers are gone: no longer counts as live
                self._next_squeue = min(self._next_squeue, now + SQUEUE_SOON)
            unconnected[str(job.job_id)] = name
        if not unconnected or now < self._next_squeue:
            return
        self._next_squeue = now + SQUEUE_EVERY
        in_queue = await asyncio.get_running_loop().run_in_executor(
            None, queue_states, list(unconnected))
        for job_id, name in unconnected.items():
            queued = in_queue.get(job_id, {}).get("state")
            left = self.jobs[name].left
            if queued not in ("PENDING", "CONFIGURING", "RUNNING") or (
                    left is not None and now - left > GONE_GRACE):
                self._drop(name)  # ended in SLURM (or ending): nothing of it comes back

    # -- surplus -------------------------------------------------------------------------

    def _surplus_candidates(self, scheduler: Any, live: list[str]) -> Iterator[str]:
        """Pending jobs (newest first), then running jobs whose workers are all idle."""
        by_name = {str(ws.name): ws for ws in scheduler.workers.values()}
        for name in reversed(live):
            if not self.jobs[name].seen:
                yield name
        for name in live:
            workers = [by_name.get(w) for w in self._worker_names(name)]
            if self.jobs[name].seen and all(ws is not None and not ws.processing
                                            for ws in workers):
                yield name

    async def _shrink(self, scheduler: Any, kind: str, live: list[str], extra: int,
                      now: float) -> None:
        chosen = list(self._surplus_candidates(scheduler, live))[:extra]
        for name in live:
            state = self.jobs[name]
            if name not in chosen:
                state.surplus = None
            elif state.surplus is None:
                state.surplus = now
        wait = self.options.idle_timeout
        due = [n for n in chosen if now - (self.jobs[n].surplus or now) >= wait]
        running = [n for n in due if self.jobs[n].seen]
        for name in due:
            if name not in running:
                self._drop(name)
        # One job at a time: retiring them all at once leaves their data nowhere to
        # go, so none would leave, and a job waiting for the cores they hold (a GPU
        # job behind idle CPU jobs on a full partition) would wait for good.
        for name in running:
            workers = self._worker_names(name)
            retired = await scheduler.retire_workers(names=workers, close_workers=True,
                                                     remove=True)
            gone = {str(info.get("name")) for info in retired.values()}
            if all(w in gone for w in workers):
                self._drop(name)
            else:  # its data had nowhere to go: keep it for now
                self.jobs[name].surplus = None
