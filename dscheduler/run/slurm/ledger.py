"""Job ids of live SLURM clusters, kept in the store: no job outlives its cluster.

``slurm/jobs/{cluster_id}.json`` (written atomically) holds the owner process, the scheduler's
address, the cluster's job names and every job it submitted and has not closed::

    {"cluster": "1a2b3c4d", "kind": "driver", "host": ..., "pid": ..., "started": ...,
     "address": "tcp://...", "beat": 1760000000.0, "names": ["dscheduler-cpu-1a2b3c4d", ...],
     "jobs": {"1234": {"kind": "cpu", "name": ..., "submitted": ...}}}

Jobs are cancelled (docs/design.md §13.6) by closing the cluster (the file is removed too); by a
reaper process (:mod:`._reaper`) started with the file, when the owner dies, kill -9 included;
and by :func:`reap_orphans` (at cluster start, ``dscheduler status``, ``dscheduler cluster
down``) for files whose owner is gone: a dead pid on this host, elsewhere a ``beat`` older than
:data:`STALE` seconds (refreshed every :data:`BEAT` seconds).  Running workers end by themselves
once their scheduler has been gone ``slurm.death_timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ...envs import commands
from ...errors import CommandError
from ...store import atomic
from ...store.layout import Layout
from ...store.lease import holder_gone, own_start, read_lease
from . import _reaper

log = logging.getLogger("dscheduler.slurm")

BEAT = 60.0  # seconds between refreshes of a live owner's ``beat``
STALE = 600.0  # a file whose beat is older is an orphan's, whatever its host


def user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


class Ledger:
    """The job file of one cluster, and the reaper watching its owner (this process)."""

    def __init__(self, layout: Layout, cluster_id: str, kind: str, names: list[str]) -> None:
        self.path = layout.slurm_jobs_record(cluster_id)
        self.cluster_id = cluster_id
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {
            "cluster": cluster_id, "kind": kind, "host": socket.gethostname(),
            "pid": os.getpid(), "started": own_start(), "address": None, "beat": time.time(),
            "names": names, "jobs": {},
        }
        self._reaper: subprocess.Popen[bytes] | None = None
        self.history: dict[str, str] = {}  # every job id ever added -> kind

    def open(self, address: str) -> None:
        """Write the file and start the reaper."""
        with self._lock:
            self._data["address"] = address
            self._write()
        self._reaper = subprocess.Popen(
            [sys.executable, "-I", _reaper.__file__, str(self.path), str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # outlives a kill -9 of our process group
        )

    def _write(self) -> None:
        self._data["beat"] = time.time()
        atomic.write_bytes(self.path, atomic.json_text(self._data).encode(), durable=False)

    def add(self, job_id: str, kind: str, name: str) -> None:
        with self._lock:
            self._data["jobs"][str(job_id)] = {"kind": kind, "name": name,
                                               "submitted": time.time()}
            self.history[str(job_id)] = kind
            self._write()

    def remove(self, job_id: str) -> None:
        with self._lock:
            if self._data["jobs"].pop(str(job_id), None) is not None and self.path.exists():
                self._write()

    def beat(self) -> None:
        """Refresh ``beat`` when older than :data:`BEAT` (cheap to call often)."""
        with self._lock:
            if time.time() - self._data["beat"] > BEAT and self.path.exists():
                self._write()

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._data["jobs"])

    def close(self) -> None:
        """Cancel whatever is still recorded, remove the file; the reaper then exits."""
        with self._lock:
            info = dict(self._data)
        cancel(info)
        atomic.remove(self.path)
        if self._reaper is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._reaper.wait(timeout=5)


# -- reading, cancelling, cleaning up ------------------------------------------------


def read(path: Path) -> dict[str, Any] | None:
    """A job file (same reader as leases: None when missing or unreadable)."""
    return read_lease(path)


def owner_gone(info: dict[str, Any]) -> bool:
    """Whether a job file's owner is gone: a dead pid on this host, else a stale beat."""
    if info.get("host") == socket.gethostname():
        return holder_gone(info)
    try:
        return time.time() - float(info.get("beat") or 0) > STALE
    except (TypeError, ValueError):
        return True  # no beat a live owner writes


def cancel(info: dict[str, Any], where: Path | str = "a job file") -> list[str]:
    """scancel every job of a job file (by id and by the cluster's job names); the job
    ids cancelled.  Ids and names that are not SLURM job ids or dscheduler's job names
    are left out, with a warning naming ``where`` (docs/design.md §15 Trust model)."""
    bad = _reaper.refused(info)
    if bad:
        log.warning("not passed to scancel: %s in %s (not a SLURM job id or a dscheduler "
                    "job name; the file was edited by hand or by someone else)",
                    ", ".join(bad), where)
    for cmd in _reaper.scancel_commands(info, user()):
        try:
            commands.run(cmd, what="cancelling SLURM jobs", timeout=60)
        except CommandError as err:  # jobs that ended already: nothing left to do
            log.debug("%s", err)
    return _reaper.valid_jobs(info)


def reap_orphans(layout: Layout) -> list[dict[str, Any]]:
    """Cancel the jobs of clusters whose owner is gone and remove their files."""
    reaped = []
    for path in layout.slurm_jobs_records():
        info = read(path)
        if info is None or not owner_gone(info):
            continue
        info["refused"] = _reaper.refused(info)
        info["jobs"] = dict.fromkeys(cancel(info, path))
        atomic.remove(path)
        reaped.append(info)
        log.warning("cancelled SLURM jobs %s of cluster %s (its owner, pid %s on %s, is gone)",
                    sorted(info["jobs"]), info.get("cluster"), info.get("pid"),
                    info.get("host"))
    return reaped


def queue_states(job_ids: list[str] | None = None) -> dict[str, dict[str, str]]:
    """``squeue`` of this user: job id -> state, name, node (or pending reason).

    Only ``job_ids`` when given.  An empty dict when squeue is missing or fails.
    """
    try:
        out = commands.run(["squeue", "-h", f"--user={user()}", "-o", "%i|%T|%j|%R"],
                           what="listing SLURM jobs", timeout=60)
    except CommandError as err:
        log.debug("%s", err)
        return {}
    wanted = set(job_ids) if job_ids is not None else None
    states = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4 and (wanted is None or parts[0] in wanted):
            states[parts[0]] = {"state": parts[1], "name": parts[2], "where": parts[3]}
    return states


def cluster_jobs(layout: Layout) -> list[dict[str, Any]]:
    """Each live cluster's job file, with ``queue``: job id -> its squeue entry (or None)."""
    infos = [info for path in layout.slurm_jobs_records() if (info := read(path)) is not None]
    states = queue_states() if infos else {}
    for info in infos:
        info["queue"] = {job: states.get(job) for job in info.get("jobs") or {}}
    return infos
