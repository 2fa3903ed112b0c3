"""Kinds of SLURM job: dask-jobqueue's ``SLURMJob`` told apart by their ``kind``.

A :class:`KindJob` of kind ``cpu``, ``gpu`` or a named one (``slurm.kinds``) asks for that
kind's partition, account, QoS, cores, memory, walltime, directives and ``--gres=gpu:N``
(:meth:`SlurmOptions.kind`); its workers offer the kind's resource (:mod:`.routing`), each
worker process of a GPU job seeing its share of the GPUs (:mod:`.preload`).  Every job adds:
* ``--output`` one log per job, ``{job_name}-{kind}-{cluster}-{job id}.log`` (stderr included),
  named by ``DSCHEDULER_WORKER_LOG`` for node records to quote;
* ``--lifetime``/``--lifetime-stagger`` from the walltime, without restart;
* the driver's ``dscheduler`` settings and :data:`NANNY_CONFIG`;
* a scratch ``--local-directory`` made 0700 and checked before the workers start, else the job
  ends (:func:`.preload.main`), and the preload that releases env mounts (:mod:`.preload`);
* the job id in the cluster's ledger once ``sbatch`` returns it, out when closed (:mod:`.ledger`).
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any, ClassVar

from distributed.deploy.spec import ProcessInterface

from ... import settings
from ...store.layout import slurm_log_name
from .jobqueue import SLURMJob
from .ledger import Ledger
from .options import SlurmOptions

log = logging.getLogger("dscheduler.slurm")

PRELOAD = "dscheduler.run.slurm.preload"
WORKER_DIR = "DSCHEDULER_WORKER_DIR"
GPUS_PER_WORKER = "DSCHEDULER_GPUS_PER_WORKER"


def job_label(options: SlurmOptions, kind: str, cluster_id: str) -> str:
    """The SLURM job name (``-J``) of a cluster's ``kind`` jobs."""
    return f"{options.job_name}-{kind}-{cluster_id}"


def worker_dir_line(options: SlurmOptions) -> str:
    """The job script's line that makes and checks the workers' scratch on the node, into
    ``$DSCHEDULER_WORKER_DIR``, or ends the job (:func:`.preload.main`)."""
    code = "import sys; from dscheduler.run.slurm.preload import main; sys.exit(main(sys.argv[1:]))"
    given = [options.local_directory] if options.local_directory else []
    cmd = shlex.join([options.interpreter, "-c", code, *given])
    return f"{WORKER_DIR}=$({cmd}) || exit 1"


#: Dask config for the nannies of every worker dscheduler starts (here and the embedded
#: cluster's): Dask's ``MALLOC_TRIM_THRESHOLD_=65536`` unset.  Setting it at all also fixes
#: glibc's mmap threshold at 128 KiB, so each buffer of a Zarr write (several MB per chunk)
#: is mapped, faulted in and unmapped again (docs/design.md §11).  A variable of the
#: driver's own environment still reaches the workers.
NANNY_CONFIG: dict[str, Any] = {
    "distributed": {"nanny": {"pre-spawn-environ": {"MALLOC_TRIM_THRESHOLD_": None}}}}


def inherited_config() -> str:
    """The driver's ``dscheduler`` settings and :data:`NANNY_CONFIG`, serialized for the
    workers' environment."""
    return settings.dask_config().serialize({"dscheduler": settings.current(), **NANNY_CONFIG})


class KindJob(SLURMJob):
    """One SLURM job running the dask workers of a ``kind`` job."""

    default_kind: ClassVar[str] = "cpu"

    def __init__(self, scheduler: str | None = None, name: str | None = None, *,
                 options: SlurmOptions, cluster_id: str, log_dir: str,
                 ledger: Ledger | None = None, config: str = "", kind: str | None = None,
                 **jobqueue: Any) -> None:
        self.ledger = ledger
        self.error: str | None = None  # why sbatch failed (text: no frames kept alive)
        self.kind = kind or self.default_kind
        job = options.kind(self.kind)
        label = job_label(options, self.kind, cluster_id)
        logs = Path(log_dir)
        worker_args = ["--resources", f"{job.resource}={job.per_worker}", "--preload", PRELOAD]
        lifetime = options.lifetime_seconds(self.kind)
        if lifetime is not None:
            worker_args += ["--lifetime", f"{lifetime[0]:g}s",
                            "--lifetime-stagger", f"{lifetime[1]:g}s", "--no-lifetime-restart"]
        prologue = [
            *options.prologue,
            f"export DSCHEDULER_WORKER_LOG={shlex.quote(str(logs))}/"
            f"{slurm_log_name(label, '$SLURM_JOB_ID')}",
        ]
        if config:
            prologue.append(f"export DASK_INTERNAL_INHERIT_CONFIG={config}")
        if job.gpus and job.processes > 1:  # each worker process takes its share
            prologue.append(f"export {GPUS_PER_WORKER}={job.gpus // job.processes}")
        prologue.append(worker_dir_line(options))
        super().__init__(
            scheduler=scheduler, name=name, queue=job.partition, account=job.account,
            walltime=job.walltime, cores=job.cores, memory=job.memory,
            processes=job.processes, death_timeout=options.death_timeout,
            local_directory=f'"${WORKER_DIR}"', worker_extra_args=worker_args,
            job_extra_directives=[f"--output={logs / slurm_log_name(label, '%j')}",
                                  *job.directives],
            # null walltime: no -t line (dask-jobqueue would write its own default)
            job_directives_skip=["-t "] if job.walltime is None else [],
            job_script_prologue=prologue, log_directory=None, python=options.interpreter,
            job_name=label, **jobqueue,
        )

    async def start(self) -> None:
        """sbatch, then record the job id in the ledger (an error is kept in ``error``)."""
        try:
            await super().start()
        except Exception as err:
            self.error = str(err)
            raise
        if self.ledger is not None and self.job_id:
            self.ledger.add(self.job_id, self.kind, str(self.name))

    async def close(self) -> None:
        """scancel (a job that ended already is fine), then out of the ledger."""
        await super().close()
        if self.ledger is not None and self.job_id:
            self.ledger.remove(self.job_id)
        # dask-jobqueue leaves the status as it was; SpecCluster's close checks it
        await ProcessInterface.close(self)


class CpuJob(KindJob):
    """A ``cpu`` job (dask-jobqueue's ``job_cls``: ``cluster.scale(n)`` makes these)."""


class GpuJob(KindJob):
    """A ``gpu`` job: ``--gres=gpu:N``, workers that run the tasks asking for ``GPU``."""

    default_kind: ClassVar[str] = "gpu"


def job_script(options: SlurmOptions, kind: str = "cpu", cluster_id: str = "0" * 8,
               log_dir: str = "logs", scheduler: str = "tcp://scheduler:8786") -> str:
    """The batch script of a ``kind`` job, without a cluster (what ``sbatch`` would get)."""
    job = KindJob(scheduler, name="dummy-name", options=options, cluster_id=cluster_id,
                  log_dir=log_dir, config=inherited_config(), interface=options.interface,
                  kind=kind)
    return str(job.job_script())
