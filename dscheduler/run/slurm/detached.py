"""A long-lived SLURM scheduler for a store: ``dscheduler cluster up|down``, ``ds.connect``.

:func:`up` starts :func:`serve` as a process of its own (a new session, so
that it outlives the shell and the command that started it).  That process
holds a :class:`~.cluster.SlurmCluster` and records it in the store::

    slurm/cluster.json   {"cluster", "address", "dashboard", "host", "pid", "started", "options"}
    slurm/scheduler.log  its output

Drivers find the address there (:func:`cluster_address`: ``ds.connect(store)``,
``cluster="store"``, ``--cluster store``) and may submit graphs that keep
running after they exit (``ds.submit(..., detach=True)``).  :func:`down`
stops the process (SIGTERM on its host, else through its scheduler); closing
its cluster cancels its jobs, and whatever its job file still lists is
cancelled here too (docs/design.md §13.7).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from ...errors import ConfigError, DSchedulerError, tail
from ...store import Store, atomic
from ...store.lease import holder_gone, own_start, read_lease
from . import ledger
from .cluster import SlurmCluster
from .options import resolve

START_TIMEOUT = 120.0


def cluster_record(store: Store) -> dict[str, Any] | None:
    """The store's detached cluster record, or None."""
    return read_lease(store.slurm_cluster_record)


def cluster_address(store: Store) -> str:
    """The scheduler address of the store's detached cluster; a ConfigError when none is up."""
    record = cluster_record(store)
    if record is None or not record.get("address"):
        raise ConfigError(
            f"no SLURM cluster is up for the store {store.root}: start one with "
            f"`dscheduler cluster up --store {store.root}` (or use cluster='slurm')")
    if holder_gone(record):
        raise ConfigError(
            f"the SLURM cluster recorded for {store.root} (pid {record.get('pid')}) is gone; "
            f"`dscheduler cluster down --store {store.root}` cleans up, then `cluster up`")
    return str(record["address"])


# -- the long-lived process -------------------------------------------------------------


def serve(root: str, overrides_json: str) -> int:
    """Run a detached cluster for the store at ``root`` until SIGTERM or SIGINT."""
    store = Store(root)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    overrides = json.loads(overrides_json)
    cluster = SlurmCluster(store, owner="detached", **overrides)
    record = {
        "cluster": cluster.cluster_id, "address": cluster.scheduler_address,
        "dashboard": cluster.dashboard_link, "host": socket.gethostname(),
        "pid": os.getpid(), "started": own_start(), "options": overrides,
    }
    try:
        atomic.write_json(store.slurm_cluster_record, record)
        print(f"dscheduler: SLURM cluster {cluster.cluster_id} at {cluster.scheduler_address}, "
              f"dashboard {cluster.dashboard_link}", flush=True)
        while not stop.wait(1.0):
            if cluster.status.name != "running":
                break
    finally:
        cluster.close()
        mine = cluster_record(store)
        if mine is not None and mine.get("cluster") == cluster.cluster_id:
            atomic.remove(store.slurm_cluster_record)
        print(f"dscheduler: SLURM cluster {cluster.cluster_id} stopped", flush=True)
    return 0


# -- up and down ---------------------------------------------------------------------


def up(store: Store, timeout: float = START_TIMEOUT, **overrides: Any) -> dict[str, Any]:
    """Start the store's detached cluster; its record once it is up.

    Raises
    ------
    ConfigError
        A bad option (before anything starts), or a cluster already up.
    DSchedulerError
        The process ended before recording its address (its log's tail).
    """
    resolve(**overrides)  # bad options fail here, in the caller
    store.ensure()
    ledger.reap_orphans(store)
    existing = cluster_record(store)
    if existing is not None:
        if not holder_gone(existing):
            raise ConfigError(
                f"a SLURM cluster is already up for {store.root} at {existing.get('address')} "
                f"(pid {existing.get('pid')} on {existing.get('host')}); use it, or "
                f"`dscheduler cluster down --store {store.root}` first")
        atomic.remove(store.slurm_cluster_record)  # its owner died; its jobs were reaped
    store.slurm_dir.mkdir(parents=True, exist_ok=True)
    code = "import sys; from dscheduler.run.slurm.detached import serve; " \
           "sys.exit(serve(sys.argv[1], sys.argv[2]))"
    with open(store.slurm_scheduler_log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(store.root), json.dumps(overrides)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = cluster_record(store)
        if record is not None and record.get("pid") == proc.pid:
            return record
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    else:
        proc.terminate()
    text = store.slurm_scheduler_log.read_text(errors="replace")
    raise DSchedulerError(
        f"the SLURM cluster process (pid {proc.pid}) did not come up; the end of "
        f"{store.slurm_scheduler_log}:\n{tail(text, 15)}")


def _stop_self() -> None:
    """Run on a detached cluster's scheduler: ask its process to stop."""
    os.kill(os.getpid(), signal.SIGTERM)


def down(store: Store, timeout: float = START_TIMEOUT) -> dict[str, Any]:
    """Stop the store's detached cluster and cancel its jobs; what was stopped.

    Also cancels the jobs of any cluster of this store whose owner is gone.
    Returns ``{"cluster": id or None, "cancelled": [job ids]}``.
    """
    record = cluster_record(store)
    reaped = ledger.reap_orphans(store)
    cancelled = sorted(j for info in reaped for j in info.get("jobs") or {})
    if record is None:
        return {"cluster": None, "cancelled": cancelled}
    jobs_path = store.slurm_jobs_record(str(record["cluster"]))
    if not holder_gone(record):
        _signal(record)
        deadline = time.monotonic() + timeout
        while store.slurm_cluster_record.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    left = ledger.read(jobs_path)
    if left is not None:  # the process did not close its cluster: cancel for it
        ledger.cancel(left)
        atomic.remove(jobs_path)
        cancelled += sorted(left.get("jobs") or {})
    atomic.remove(store.slurm_cluster_record)
    return {"cluster": record.get("cluster"), "cancelled": cancelled}


def _signal(record: dict[str, Any]) -> None:
    if record.get("host") == socket.gethostname():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(record["pid"]), signal.SIGTERM)
        return
    from distributed import Client

    try:
        with Client(str(record["address"]), timeout=30) as client:
            client.run_on_scheduler(_stop_self)
    except (OSError, TimeoutError):
        pass  # unreachable: its job file, cancelled below, is what is left to do
