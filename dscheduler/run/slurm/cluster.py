"""``SlurmCluster``: one dask-jobqueue ``SLURMCluster`` scheduler, jobs of several kinds.

A distributed ``SpecCluster`` whose ``worker_spec`` holds :class:`~.jobs.KindJob` entries of
kinds ``cpu``, ``gpu`` and the named kinds of ``slurm.kinds``, scaled per kind by
:class:`~.scaler.Scaler`, with :class:`~.routing.RoutingPlugin` sending each task to the kind
it asks for (GPU tasks to ``gpu``, the rest to ``cpu``), and the dscheduler page
(:mod:`..dashboard`) on its dashboard (docs/design.md §13.2).

Its jobs are recorded in the store (:mod:`.ledger`): closing the cluster cancels every job it
submitted, and a reaper process cancels them when the process holding the cluster dies, even by
kill -9 (§13.6).  Scheduler, workers and clients speak TLS with credentials of this cluster that
only its owner can read (:mod:`..security`), removed when it closes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from distributed import Client
from distributed.core import Status
from distributed.deploy.cluster import Cluster
from distributed.utils import format_dashboard_link
from tornado.ioloop import PeriodicCallback

from ... import settings
from ...errors import ConfigError
from ...store import Store, store_of
from .. import security
from ..dashboard import DashboardPlugin
from .jobqueue import SLURMCluster, SLURMJob
from .jobs import CpuJob, KindJob, inherited_config, job_label
from .ledger import BEAT, Ledger, reap_orphans
from .options import SlurmOptions, resolve
from .routing import RoutingPlugin, kinds_of
from .scaler import Scaler

log = logging.getLogger("dscheduler.slurm")


class SlurmCluster(SLURMCluster):
    """A SLURM-backed Dask cluster whose jobs follow the graph's CPU and GPU tasks.

    Parameters
    ----------
    store
        The store whose ``slurm/`` directory records the jobs and, unless
        ``log_directory`` says otherwise, holds the worker logs.
    adapt
        Scale each kind of job to its tasks (default); False: no job is
        submitted unless :meth:`scale` asks.
    owner
        "driver" (the process using it) or "detached" (``dscheduler cluster up``).
    **overrides
        ``dscheduler.slurm`` options (partition, cores, memory, walltime,
        max_jobs, gpu={...}, kinds={NAME: {...}}, ...); see :func:`~.options.resolve`.

    Raises
    ------
    ConfigError
        A bad option or no SLURM commands, before a scheduler starts or a job
        is submitted.
    """

    job_cls: type[SLURMJob] = CpuJob

    def __init__(self, store: Store | str | os.PathLike[str] | None = None, *,
                 adapt: bool = True, owner: str = "driver", **overrides: Any) -> None:
        options = resolve(**overrides)
        missing = [tool for tool in ("sbatch", "squeue", "scancel") if shutil.which(tool) is None]
        if missing:
            raise ConfigError(
                f"a SLURM cluster needs SLURM's commands on PATH, and {', '.join(missing)} "
                "cannot be found: run on a SLURM login node, or use cluster='local'")
        self.options: SlurmOptions = options
        self.store = store_of(store)
        reap_orphans(self.store)  # the jobs of a killed earlier driver, if any
        self.cluster_id = os.urandom(4).hex()
        log_dir = Path(options.log_directory or self.store.slurm_logs_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        self.ledger = Ledger(self.store, self.cluster_id, owner,
                             [job_label(options, kind, self.cluster_id)
                              for kind in options.kind_names])
        self._kind_counts = dict.fromkeys(options.kind_names, 0)
        self._client: Client | None = None
        self.certs = self.cluster_id if security.enabled() else None
        sec = security.create(self.cluster_id) if self.certs else None
        try:
            self._start_jobqueue(options, log_dir, sec)
        except BaseException:
            if self.certs:
                security.remove(self.certs)
            raise
        try:
            self.ledger.open(self.scheduler_address)
        except BaseException:
            self.close()
            raise
        # the ledger's beat tells other hosts this cluster lives (scaling or not)
        self._beat = PeriodicCallback(self.ledger.beat, BEAT * 1000 / 4)
        if self.loop is not None:  # always, once started
            self.loop.add_callback(self._beat.start)
        if adapt:
            self.adapt()

    def _start_jobqueue(self, options: SlurmOptions, log_dir: Path, sec: Any) -> None:
        """dask-jobqueue's SLURMCluster.__init__: the scheduler starts (``tls://`` with
        ``sec``, a Security whose files every job script names; else plain TCP)."""
        super().__init__(
            # The dscheduler page is on the dashboard from the start, before any submit
            # (a detached scheduler may be watched long before its first graph).
            scheduler_options={"dashboard_address": options.dashboard_address,
                               # a job lost is no task's failure (docs/design.md §5.6)
                               "allowed_failures": int(settings.get("task.lost_workers")),
                               "plugins": [RoutingPlugin(kinds_of(options)), DashboardPlugin()]},
            interface=options.interface,
            name=f"dscheduler-slurm-{self.cluster_id}",
            options=options, cluster_id=self.cluster_id, log_dir=str(log_dir),
            ledger=self.ledger, config=inherited_config(), security=sec,
        )

    # -- heterogeneous worker specs --------------------------------------------------

    def new_job_spec(self, kind: str) -> tuple[str, dict[str, Any]]:
        """A fresh name and worker-spec entry for one ``kind`` job (a ConfigError naming the
        known kinds for an unknown one)."""
        self.options.kind(kind)
        name = f"{kind}-{self._kind_counts[kind]}"
        self._kind_counts[kind] += 1
        spec: dict[str, Any] = {"cls": KindJob, "options": {**self._job_kwargs, "kind": kind}}
        processes = self.options.kind(kind).processes
        if processes > 1:
            spec["group"] = [f"-{i}" for i in range(processes)]
        return name, spec

    # What the scaler does with the jobs (scaler.Jobs): it decides, the cluster acts.

    def add_job(self, kind: str) -> str:
        """A new ``kind`` job in the worker spec; :meth:`sync_jobs` submits it."""
        name, spec = self.new_job_spec(kind)
        self.worker_spec[name] = spec
        return name

    def drop_job(self, name: str) -> None:
        """``name`` out of the worker spec; :meth:`sync_jobs` closes (scancels) its job."""
        self.worker_spec.pop(name, None)

    def job_workers(self, name: str) -> list[str]:
        """The names of the workers of job ``name`` (one per process)."""
        spec = self.worker_spec.get(name) or {}
        return [f"{name}{suffix}" for suffix in spec.get("group", [""])]

    async def sync_jobs(self) -> None:
        """sbatch the new jobs of the worker spec, scancel those dropped from it."""
        await self._correct_state()

    def job_script(self, kind: str = "cpu") -> str:
        """The batch script of a ``kind`` ("cpu", "gpu" or a named kind) job of this cluster."""
        job = KindJob(self.scheduler_address, name="dummy-name", **self._job_kwargs, kind=kind)
        return str(job.job_script())

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds of job of this cluster: cpu, gpu, then the named ones."""
        return self.options.kind_names

    @property
    def history(self) -> dict[str, str]:
        """Every job this cluster submitted: job id -> kind."""
        return dict(self.ledger.history)

    # -- scaling -------------------------------------------------------------------------

    # Not distributed's Adaptive (one target for one worker spec) but a scaler per
    # kind of job, configured by the options: hence another signature.
    def adapt(self, *args: Any, **kwargs: Any) -> Scaler:  # type: ignore[override]
        """Start scaling each kind of job to its tasks (options max_jobs, min_jobs,
        gpu.max_jobs, kinds.NAME.max_jobs, idle_timeout, interval); replaces any earlier
        adaptivity."""
        if args or kwargs:
            raise TypeError("SlurmCluster.adapt takes no arguments: set max_jobs, min_jobs "
                            "and gpu={'max_jobs': ...} when making the cluster")
        previous = getattr(self, "_adaptive", None)
        if previous is not None:
            previous.stop()
        self._adaptive = Scaler(self, self.options)
        return self._adaptive

    @property
    def scaler(self) -> Scaler | None:
        found = getattr(self, "_adaptive", None)
        return found if isinstance(found, Scaler) else None

    def _update_worker_status(self, op: str, msg: Any) -> None:
        # SpecCluster closes the job of a worker that left after a delay but
        # keeps its spec, so that the next correction submits it again under
        # the old name; the scaler decides instead (docs/design.md §13.2).
        Cluster._update_worker_status(self, op, msg)

    @property
    def dashboard_link(self) -> str:
        """The dashboard's address as it is bound (loopback by default), not the scheduler's."""
        link = str(super().dashboard_link)
        host = self.options.dashboard_address.rpartition(":")[0].strip("[]")
        if host in ("", "0.0.0.0", "::"):
            return link
        port = self.scheduler_info.get("services", {}).get("dashboard")
        return format_dashboard_link(host, port) if port else link

    # -- its client, and closing --------------------------------------------------------

    @property
    def client(self) -> Client:
        """The cluster's own Client, made on first use and closed with the cluster."""
        if self._client is None or self._client.status != "running":
            self._client = Client(self)
        return self._client

    def close(self, timeout: float | None = None) -> Any:
        """Close the cluster's client, then the cluster: every job it submitted is cancelled."""
        if self._client is not None:
            self._client.close()
            self._client = None
        return super().close(timeout)

    async def _close(self) -> None:
        beat = getattr(self, "_beat", None)
        if beat is not None:
            beat.stop()
        try:
            await self._close_dropped_jobs()
            await super()._close()
        finally:
            self.ledger.close()  # scancel what is left, by id and by job name
            if self.certs:
                security.remove(self.certs)


    async def _close_dropped_jobs(self) -> None:
        """Close jobs that distributed took out of ``workers`` when their worker was lost
        (a node cut off or dead) without closing them yet: SpecCluster's close requires
        every job it made to be closed (seen after a link cut, tests/test_slurm_nodes.py).
        Their scancel may fail (the job is gone); the ledger cancels what is left."""
        kept = {id(job) for job in self.workers.values()}
        for job in getattr(self, "_created", ()):
            if id(job) in kept or job.status != Status.running:
                continue
            try:
                with contextlib.suppress(Exception):
                    await job.close()
            finally:
                job.status = Status.closed


def slurm_cluster(store: Store | str | os.PathLike[str] | None = None, *, adapt: bool = True,
                  **overrides: Any) -> SlurmCluster:
    """A SLURM cluster to hold: ``ds.compute(..., cluster=ds.slurm_cluster(max_jobs=8))``.

    Parameters
    ----------
    store
        Where its jobs are recorded and worker logs go (default: setting ``store``).
    adapt
        Scale each kind of job to the graph's tasks (default True).
    **overrides
        ``dscheduler.slurm`` options: partition, account, cores, memory,
        processes, walltime, max_jobs, min_jobs, gpu={"gpus", "max_jobs", ...},
        kinds={NAME: {"partition", "qos", "gpus", "walltime", ...}}, directives,
        prologue, interface, log_directory, python, lifetime, ...

    Returns
    -------
    SlurmCluster
        A ``dask_jobqueue.SLURMCluster``; ``close()`` cancels every job it submitted.

    Raises
    ------
    ConfigError
        An unknown option or a bad value, before anything is submitted.
    """
    return SlurmCluster(store, adapt=adapt, **overrides)
