"""Where graphs run: ``"local"``, ``"slurm"``, ``"store"``, an address, a Client or a cluster.

``"local"``: one embedded cluster per driver process, made on first use, reused by later
``ds.compute`` calls, closed at exit (docs/design.md §8).  Its scheduler runs in the driver; its
workers (``python -m dask spec``, a nanny each, preloading :mod:`dscheduler.run.watchdog`) never
import the driver's script and end with the driver, even after kill -9.  One worker per core
(``local.n_workers``), ``local.threads_per_worker`` threads each offered as a ``CPU`` resource
(§5.2), bound to 127.0.0.1 (dashboard too, ``local.dashboard_address``), TLS with credentials of
its own (:mod:`.security`); its dashboard link and that of the dscheduler page
(:mod:`dscheduler.run.dashboard`) are printed once.
An address (``tcp://host:8786``) connects a Client with dask's configured security, reused, or
is a ConfigError naming it within ``security.connect_timeout``; a ``Client`` is used as it is.
``"slurm"``: like ``"local"``, one :class:`~dscheduler.run.slurm.SlurmCluster` per driver
process (§13).  ``"store"``: the long-lived cluster ``dscheduler cluster up`` recorded in the
store (:func:`connect`), only with this user's credentials for it.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
from typing import Any

from .. import settings
from ..errors import ConfigError
from ..store import Store, store_of
from . import dashboard, security, slurm
from .slurm.detached import live_record

log = logging.getLogger("dscheduler.cluster")

_lock = threading.Lock()
_local: Any = None  # (SpecCluster, Client)
_local_certs: str | None = None  # its credentials' cluster id, under TLS
_slurm: Any = None  # (SlurmCluster, Client)
_clients: dict[str, Any] = {}

HOST = "127.0.0.1"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _local_worker_class(extra: dict[str, Any] | None = None) -> type:
    """distributed's SubprocessWorker, started with the driver's Dask config and ``extra``.

    Settings made in the driver (``dask.config.set`` in a notebook) must hold
    on its workers too; dask passes a serialized config to a child process
    through ``DASK_INTERNAL_INHERIT_CONFIG``, which distributed's own
    subprocess worker does not set.  Their nannies get :data:`.slurm.jobs.NANNY_CONFIG`
    (no ``MALLOC_TRIM_THRESHOLD_``).  ``extra`` gives them the paths of the
    cluster's TLS files (:func:`.security.worker_config`), never a key: the
    spec is on the command line, which every user may read.
    """
    import asyncio

    import dask.config
    from distributed.deploy.subprocess import SubprocessWorker

    class LocalWorker(SubprocessWorker):
        async def _start(self) -> None:
            config = {**dask.config.config, "logging": {
                **dask.config.get("logging", {}), **_QUIET_LOGGERS}}
            config = dask.config.merge(config, slurm.jobs.NANNY_CONFIG, extra or {})
            env = {**os.environ, "DASK_INTERNAL_INHERIT_CONFIG": dask.config.serialize(config)}
            spec = json.dumps({"cls": self.worker_class, "opts": self.worker_kwargs})
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dask", "spec", self.scheduler, "--spec", spec, env=env)

    return LocalWorker


def _local_spec(n_workers: int, threads: int,
                config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Worker spec of the embedded cluster: a nanny per process, watched by the driver,
    with the Dask ``config`` (its TLS files) on top of the driver's."""
    from distributed.worker_memory import parse_memory_limit

    return {
        "cls": _local_worker_class(config),
        "options": {
            "worker_class": "distributed.Nanny",
            "worker_kwargs": {
                "host": HOST,
                "nthreads": threads,
                "resources": {"CPU": threads},
                "memory_limit": parse_memory_limit("auto", 1, n_workers, logger=log),
                "preload_nanny": ["dscheduler.run.watchdog"],
                "silence_logs": logging.WARNING,
                # Not dask's shared $TMPDIR/dask-scratch-space: spilled data are pickles.
                "local_directory": str(settings.node_local("local.local_directory",
                                                           "dscheduler-workers")),
            },
        },
    }


#: distributed's loggers that speak at INFO only of what a user cannot act on: the
#: preloads we load, and a comm closed under a batched send when the cluster closes
#: (with a traceback). The embedded cluster sets them to warning, in its workers too.
_QUIET_LOGGERS = {"distributed.preloading": "warning", "distributed.batched": "warning"}


def local_cluster() -> Any:
    """The process's embedded cluster's Client, made on first use."""
    global _local, _local_certs
    with _lock:
        if _local is not None and _local[1].status == "running":
            return _local[1]
        from distributed import Client, Scheduler, SpecCluster

        for name, level in _QUIET_LOGGERS.items():
            logging.getLogger(name).setLevel(level.upper())

        # TLS with credentials of its own, else any user of the node could connect to
        # 127.0.0.1 and run code as us (docs/design.md §15)
        certs = security.local_id() if security.enabled() else None
        sec = security.create(certs) if certs else None
        n_workers = int(settings.get("local.n_workers") or _cores())
        worker = _local_spec(n_workers, int(settings.get("local.threads_per_worker")),
                             security.worker_config(sec) if sec else None)
        try:
            cluster = SpecCluster(
                scheduler={"cls": Scheduler, "options": {
                    "host": HOST, "dashboard": True, "protocol": "tls" if sec else "tcp",
                    "security": sec,
                    "dashboard_address": settings.get("local.dashboard_address"),
                    "allowed_failures": int(settings.get("task.lost_workers")),
                }},
                workers=dict.fromkeys(range(n_workers), worker),
                worker=worker,
                name="dscheduler-local",
                silence_logs=logging.WARNING,
                security=sec,
            )
        except BaseException:
            if certs:
                security.remove(certs)
            raise
        try:
            client = Client(cluster)
            client.wait_for_workers(n_workers, timeout=120)
        except BaseException:
            cluster.close()
            if certs:
                security.remove(certs)
            raise
        _local, _local_certs = (cluster, client), certs
        dashboard.install(client)  # the dscheduler page; prints the dashboard's link
        return client


def local_running() -> bool:
    """Whether this process's embedded cluster is up."""
    return _local is not None and _local[1].status == "running"


def is_local(client: Any) -> bool:
    return _local is not None and client is _local[1]


def close_local() -> None:
    """Close the embedded cluster (at exit, or to start afresh)."""
    global _local, _local_certs
    with _lock:
        if _local is not None:
            cluster, client = _local
            certs, _local, _local_certs = _local_certs, None, None
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
                if certs:
                    security.remove(certs)


atexit.register(close_local)


def slurm_client(store: Store | None = None) -> Any:
    """The process's SLURM cluster's Client, made on first use (options: ``dscheduler.slurm``).

    Its jobs and worker logs are recorded in the store of the first call.
    """
    global _slurm
    with _lock:
        if _slurm is not None and _slurm[1].status == "running":
            return _slurm[1]
        cluster = slurm.SlurmCluster(store)
        try:
            client = cluster.client
        except BaseException:
            cluster.close()
            raise
        _slurm = (cluster, client)
        print(f"dscheduler: SLURM cluster {cluster.cluster_id}, dashboard at "
              f"{cluster.dashboard_link}", file=sys.stderr)
        return client


def slurm_running() -> bool:
    """Whether this process's SLURM cluster is up."""
    return _slurm is not None and _slurm[1].status == "running"


def close_slurm() -> None:
    """Close this process's SLURM cluster: every job it submitted is cancelled."""
    global _slurm
    with _lock:
        if _slurm is not None:
            cluster, _ = _slurm
            _slurm = None
            cluster.close()  # its client too


atexit.register(close_slurm)


def connect(store: Store | str | os.PathLike[str] | None = None) -> Any:
    """A Client of the cluster ``dscheduler cluster up`` started for ``store``.

    Parameters
    ----------
    store
        The store (or its path; default: setting ``store``) whose
        ``slurm/cluster.json`` records the scheduler's address.

    Raises
    ------
    ConfigError
        No cluster is up for this store (the message says how to start one), this
        user holds no credentials for the one recorded (another user's, or an
        edited record: the address is never tried without them), or it cannot be
        reached.
    """
    st = store_of(store)
    record = live_record(st)
    address = str(record["address"])
    sec = (security.load(str(record.get("cluster")), address, st.slurm_cluster_record)
           if security.enabled() else None)
    return _client_for(address, sec, f" (the cluster {st.slurm_cluster_record} records)",
                       f"If it is gone: `dscheduler cluster down --store {st.root}`, then "
                       "`cluster up`")


def _client_for(address: str, sec: Any, what: str = "", fix: str = "") -> Any:
    """The Client of ``address``, reused; a ConfigError naming it when it cannot be reached
    within ``security.connect_timeout`` seconds (a closed port, a refused handshake)."""
    from distributed import Client
    from distributed.comm.core import CommClosedError

    with _lock:
        client = _clients.get(address)
        if client is not None and client.status == "running":
            return client
        timeout = float(settings.get("security.connect_timeout"))
        try:
            client = _clients[address] = Client(address, timeout=timeout, security=sec)
        except (OSError, TimeoutError, CommClosedError, TypeError) as err:
            if isinstance(err, TypeError) and "ssl_context" not in str(err):
                raise  # a bug; "ssl_context" is distributed's word for tls:// without TLS settings
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(
                f"cannot connect to the scheduler at {address}{what} within {timeout:g} s: "
                f"{reason}. " + (fix or "Check the address (for a cluster dscheduler "
                "started, use cluster='store' or 'slurm'; a tls:// address needs your "
                "distributed.comm.tls settings)")) from None
        return client


def _where() -> tuple[str, int]:
    import socket

    return socket.gethostname(), os.getpid()


def check_detachable(client: Any) -> None:
    """A ConfigError unless ``client``'s scheduler outlives this process (``detach=True``)."""
    import socket

    if is_local(client) or client.run_on_scheduler(_where) == (socket.gethostname(),
                                                                os.getpid()):
        raise ConfigError(
            "detach=True needs a scheduler that outlives this process, but this cluster's "
            "scheduler runs inside it: start one with `dscheduler cluster up` and pass "
            "cluster='store' (or its address)")


def check_resources(client: Any, asks: dict[str, Any]) -> None:
    """A ConfigError, before anything is submitted, when a task's resources (``asks``: task
    name -> resources) ask for a kind of SLURM job, or GPUs, that ``client``'s scheduler does
    not have (docs/design.md §13.2); the local cluster ignores resources."""
    if not is_local(client):
        slurm.check_resources(client, asks)


def get_client(cluster: Any = "local", store: Store | None = None) -> Any:
    """A ``distributed.Client`` for ``cluster``.

    ``"local"``, ``"slurm"`` (this process's SLURM cluster, recording its jobs
    in ``store``), ``"store"`` (the cluster ``dscheduler cluster up`` started
    for ``store``), a scheduler address, a Client, or a cluster object.
    """
    from distributed import Client

    if isinstance(cluster, Client):
        return cluster
    if cluster is None or cluster == "local":
        return local_cluster()
    if isinstance(cluster, str):
        if cluster == "slurm":
            return slurm_client(store)
        if cluster == "store":
            return connect(store)
        if "://" not in cluster and ":" not in cluster:
            raise ConfigError(
                f"cluster={cluster!r} is not 'local', 'slurm', 'store', a scheduler address "
                "such as 'tcp://127.0.0.1:8786', or a distributed.Client"
            )
        return _client_for(cluster, None)  # dask's configured security: the user's own
    if isinstance(cluster, slurm.SlurmCluster):
        return cluster.client  # closed with the cluster
    if hasattr(cluster, "scheduler_address"):  # a SpecCluster, SLURMCluster, ...
        return _client_for(cluster.scheduler_address, getattr(cluster, "security", None))
    raise ConfigError(
        f"cluster={cluster!r} is not 'local', 'slurm', 'store', a scheduler address or a "
        "distributed.Client"
    )
