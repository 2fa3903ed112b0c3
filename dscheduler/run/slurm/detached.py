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

import psutil

from ...errors import ConfigError, DSchedulerError, tail
from ...store import Store, atomic
from ...store.lease import holder_gone, own_start, read_lease
from .. import security, slurm
from . import ledger
from .options import resolve

START_TIMEOUT = 120.0
REMOTE_TIMEOUT = 10.0  # seconds to reach a scheduler on another host
#: The command line of a detached cluster: ``python -c SERVE_CODE ROOT OVERRIDES``.
SERVE_CODE = ("import sys; from dscheduler.run.slurm.detached import serve; "
              "sys.exit(serve(sys.argv[1], sys.argv[2]))")


def cluster_record(store: Store) -> dict[str, Any] | None:
    """The store's detached cluster record, or None."""
    return read_lease(store.slurm_cluster_record)


def cluster_address(store: Store) -> str:
    """The scheduler address of the store's detached cluster; a ConfigError when none is up."""
    return str(live_record(store)["address"])


def live_record(store: Store) -> dict[str, Any]:
    """The record of the store's detached cluster, whose process lives; a ConfigError when
    none is up.  Its address is to be used only with its owner's credentials
    (:func:`~..security.load`)."""
    record = cluster_record(store)
    if record is None or not record.get("address"):
        raise ConfigError(
            f"no SLURM cluster is up for the store {store.root}: start one with "
            f"`dscheduler cluster up --store {store.root}` (or use cluster='slurm')")
    if holder_gone(record):
        raise ConfigError(
            f"the SLURM cluster recorded for {store.root} (pid {record.get('pid')}) is gone; "
            f"`dscheduler cluster down --store {store.root}` cleans up, then `cluster up`")
    return record


# -- the long-lived process -------------------------------------------------------------


def serve(root: str, overrides_json: str) -> int:
    """Run a detached cluster for the store at ``root`` until SIGTERM or SIGINT."""
    store = Store(root)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    overrides = json.loads(overrides_json)
    cluster = slurm.SlurmCluster(store, owner="detached", **overrides)
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
    code = SERVE_CODE
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


def _stop_self(pid: int, root: str) -> bool:
    """Run on a detached cluster's scheduler: stop its process if it is the one the
    record names (pid, and :func:`serve` of the store at ``root``); whether it was."""
    if os.getpid() != pid or len(sys.argv) < 2 or \
            os.path.realpath(sys.argv[1]) != os.path.realpath(root):
        return False
    os.kill(os.getpid(), signal.SIGTERM)
    return True


def down(store: Store, timeout: float = START_TIMEOUT) -> dict[str, Any]:
    """Stop the store's detached cluster and cancel its jobs; what was stopped.

    Also cancels the jobs of any cluster of this store whose owner is gone.
    Returns ``{"cluster": id or None, "cancelled": [job ids], "gone": bool}``
    (``gone``: its process had ended already).  Only a process verified to be
    this store's scheduler is signalled (:func:`_scheduler`, docs/design.md §15
    Trust model); waits are bounded by ``timeout``.

    Raises
    ------
    DSchedulerError
        The record names a process that is not this store's scheduler (nothing
        signalled, nothing removed), or a scheduler on another host that cannot be
        reached or is not this store's.
    """
    record = cluster_record(store)
    reaped = ledger.reap_orphans(store)
    cancelled = sorted(j for info in reaped for j in info.get("jobs") or {})
    if record is None:
        return {"cluster": None, "cancelled": cancelled, "gone": False}
    jobs_path = store.slurm_jobs_record(str(record.get("cluster")))
    gone = holder_gone(record)
    if not gone:
        if record.get("host") == socket.gethostname():
            proc = _scheduler(store, record)
            proc.terminate()
            with contextlib.suppress(psutil.Error):
                proc.wait(timeout=timeout)
        else:
            _stop_remote(store, record)
        deadline = time.monotonic() + timeout
        while store.slurm_cluster_record.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    left = ledger.read(jobs_path)
    if left is not None:  # the process did not close its cluster: cancel for it
        cancelled += ledger.cancel(left, jobs_path)
        atomic.remove(jobs_path)
    atomic.remove(store.slurm_cluster_record)
    return {"cluster": record.get("cluster"), "cancelled": cancelled, "gone": gone}


def _scheduler(store: Store, record: dict[str, Any]) -> psutil.Process:
    """The process the record names, once checked to be this store's scheduler: on this
    host, of this user, started when recorded, running :func:`serve` of this store.

    The record is data that whoever writes the store can edit; signalling the pid it
    names unchecked would kill any process of ours (docs/design.md §15 Trust model).
    """
    where = store.slurm_cluster_record
    try:
        proc = psutil.Process(int(record["pid"]))
        started = float(record["started"])
        with proc.oneshot():
            cmdline, created, uid = proc.cmdline(), proc.create_time(), proc.uids().real
    except (KeyError, TypeError, ValueError) as err:
        raise DSchedulerError(f"{where} names no valid pid and start time ({err}); nothing "
                              f"signalled: if no cluster of this store is up, remove {where}"
                              ) from None
    except psutil.Error as err:
        raise DSchedulerError(f"cannot inspect pid {record.get('pid')} that {where} names "
                              f"({type(err).__name__}); nothing signalled") from None
    found = f"pid {proc.pid} runs {' '.join(cmdline)[:200]!r} (uid {uid}, started {created})"
    ours = (uid == os.getuid() and abs(created - started) < 0.02
            and cmdline[1:3] == ["-c", SERVE_CODE] and len(cmdline) > 3
            and os.path.realpath(cmdline[3]) == os.path.realpath(store.root))
    if not ours:
        raise DSchedulerError(
            f"not stopping pid {proc.pid}: {where} names it as the SLURM scheduler of "
            f"{store.root} (started {started}), but {found}, which is not that scheduler. "
            f"Nothing was signalled; if no cluster of this store is up, remove {where}")
    return proc


def _stop_remote(store: Store, record: dict[str, Any]) -> None:
    """Ask the scheduler on another host to stop itself (it checks it is the one recorded)."""
    from distributed import Client

    where = store.slurm_cluster_record
    try:
        sec = (security.load(str(record.get("cluster")), str(record["address"]), where)
               if security.enabled() else None)  # the owner's credentials, or a ConfigError
        with Client(str(record["address"]), timeout=REMOTE_TIMEOUT, security=sec) as client:
            stopped = client.run_on_scheduler(_stop_self, int(record["pid"]), str(store.root))
    except (KeyError, TypeError, ValueError, OSError, TimeoutError) as err:
        raise DSchedulerError(
            f"cannot reach the SLURM scheduler {where} records on {record.get('host')} at "
            f"{record.get('address')} ({type(err).__name__}: {err}); nothing signalled: run "
            f"`dscheduler cluster down` on {record.get('host')}, or if no cluster of this "
            f"store is up, remove {where}") from None
    if not stopped:
        raise DSchedulerError(
            f"the scheduler at {record.get('address')} is not the one {where} records (pid "
            f"{record.get('pid')} serving {store.root}); nothing signalled")
