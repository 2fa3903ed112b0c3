"""Where graphs run: ``cluster="local"``, a scheduler address, or a ``Client``.

``"local"`` is one embedded ``distributed.LocalCluster`` per driver process,
made on first use and reused by every later ``ds.compute`` (starting one
costs seconds), closed at exit.  It is sized to the machine: one worker
process per core (setting ``local.n_workers``), one thread each (setting
``local.threads_per_worker``: tasks in envs are processes of their own, and
one thread per worker keeps a worker's memory for one task), its dashboard
bound to 127.0.0.1 (setting ``local.dashboard_address``); the link is
printed once.  An address (``tcp://host:8786``) connects a Client, also
reused; a ``Client`` is used as it is.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from typing import Any

from . import settings
from .errors import ConfigError

_lock = threading.Lock()
_local: Any = None  # (LocalCluster, Client)
_clients: dict[str, Any] = {}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def local_cluster() -> Any:
    """The process's embedded LocalCluster and its Client, made on first use."""
    global _local
    with _lock:
        if _local is not None and _local[1].status == "running":
            return _local[1]
        import multiprocessing

        if multiprocessing.parent_process() is not None:
            # A worker process started by spawn re-imports the driver's script;
            # distributed then fails with a bare "Nanny failed to start".
            raise ConfigError(
                "cluster='local' was started while a worker process was importing "
                f"{getattr(sys.modules.get('__main__'), '__file__', 'your script')}: put the "
                "script's code under `if __name__ == \"__main__\":` (notebooks need no change)"
            )
        from distributed import Client, LocalCluster

        cluster = LocalCluster(
            n_workers=int(settings.get("local.n_workers") or _cores()),
            threads_per_worker=int(settings.get("local.threads_per_worker")),
            processes=True,
            dashboard_address=settings.get("local.dashboard_address"),
            host="127.0.0.1",
        )
        client = Client(cluster)
        _local = (cluster, client)
        print(f"dscheduler: local cluster dashboard at {cluster.dashboard_link}",
              file=sys.stderr)
        return client


def local_running() -> bool:
    """Whether this process's embedded cluster is up."""
    return _local is not None and _local[1].status == "running"


def is_local(client: Any) -> bool:
    return _local is not None and client is _local[1]


def close_local() -> None:
    """Close the embedded cluster (at exit, or to start afresh)."""
    global _local
    with _lock:
        if _local is not None:
            cluster, client = _local
            _local = None
            # Closing workers that still hold results logs a warning per worker
            # about "lost" tasks: at exit nobody wants them any more.
            logger = logging.getLogger("distributed.scheduler")
            level = logger.level
            logger.setLevel(logging.ERROR)
            try:
                client.close()
                cluster.close()
            finally:
                logger.setLevel(level)


atexit.register(close_local)


def get_client(cluster: Any = "local") -> Any:
    """A ``distributed.Client`` for ``cluster`` ("local", an address, a Client or a cluster)."""
    from distributed import Client

    if isinstance(cluster, Client):
        return cluster
    if cluster is None or cluster == "local":
        return local_cluster()
    if isinstance(cluster, str):
        if cluster == "slurm":
            raise ConfigError(
                "cluster='slurm' needs a SLURM-backed scheduler: start one with "
                "`dscheduler cluster up` or ds.slurm_cluster(...) and pass its address "
                "(tcp://host:port) or its Client"
            )
        if "://" not in cluster and ":" not in cluster:
            raise ConfigError(
                f"cluster={cluster!r} is not 'local', a scheduler address such as "
                "'tcp://127.0.0.1:8786', or a distributed.Client"
            )
        with _lock:
            client = _clients.get(cluster)
            if client is None or client.status != "running":
                client = _clients[cluster] = Client(cluster)
        return client
    if hasattr(cluster, "scheduler_address"):  # a LocalCluster, SLURMCluster, ...
        return get_client(cluster.scheduler_address)
    raise ConfigError(
        f"cluster={cluster!r} is not 'local', a scheduler address or a distributed.Client"
    )
