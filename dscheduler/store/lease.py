"""Leases: mutual exclusion across processes and hosts on a shared filesystem.

Contract (the reasons, and why not ``flock``: docs/design.md §7):

* taking a lease creates its file exclusively, content and all: token, owner, host, pid and
  start time, ttl, heartbeat.  A file unreadable for longer than the waiter's ttl is broken;
* one daemon thread per process refreshes its leases' heartbeats every ``ttl / 4`` s;
* a waiter may break a lease whose heartbeat is older than its ttl, and with
  ``break_dead_local=True`` at once one whose holder on this host is gone;
* fencing: a lease written less than ``ttl / 2`` ago is its holder's for another half ttl, so
  :meth:`Lease.check` is free then; older, the holder takes its file back or counts it lost;
* a claim (:meth:`Lease.claim`): the exclusive ``mkdir`` of the directory a lease guards holds
  it with no file for :func:`claim_ttl`; the file comes with the holder's first marker.  Hosts'
  clocks agree well within a ttl.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from .. import settings
from ..errors import LeaseError, LeaseTimeout
from . import atomic


def read_lease(path: Path) -> dict[str, Any] | None:
    try:
        data = atomic.read_json(path)
    except (json.JSONDecodeError, OSError):
        return None
    return data if isinstance(data, dict) else None


def is_stale(info: dict[str, Any], now: float | None = None) -> bool:
    now = time.time() if now is None else now
    return now - float(info.get("heartbeat", 0)) > float(info.get("ttl", 0))


def process_started(pid: int) -> float:
    """When process ``pid`` started (seconds since the epoch); with the pid it names one
    process, also after the pid is reused."""
    return float(psutil.Process(pid).create_time())


def process_alive(pid: int, started: float | None = None) -> bool:
    """Whether process ``pid`` runs on this host (a zombie does not).

    With ``started`` (from :func:`process_started`), a process that reuses the
    pid but started at another time does not count either.
    """
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - started) < 0.02
    except psutil.NoSuchProcess:
        return False
    except (psutil.AccessDenied, ValueError):
        return True  # another user's process: it exists


def claim_ttl(ttl: float) -> float:
    """Seconds a claim holds without a file: a quarter of the lease's ttl, the interval
    in which a lease holder would have written its heartbeat anyway."""
    return ttl / 4


def claimed_at(directory: Path) -> float | None:
    """When ``directory`` was made or last changed (its mtime, set by the filesystem's
    clock); None when it is missing.  A claim is judged by it."""
    try:
        return os.stat(directory).st_mtime
    except FileNotFoundError:
        return None


def _same_lease(info: dict[str, Any], judged: dict[str, Any]) -> bool:
    """Whether a lease file read now is the one judged before (its holder may have taken it
    back since, with a fresh heartbeat: :meth:`Lease._reclaim`)."""
    return (info.get("token"), info.get("heartbeat")) == (
        judged.get("token"), judged.get("heartbeat"))


def holder_gone(info: dict[str, Any]) -> bool:
    """Whether the lease's holder ran on this host and its process no longer exists."""
    if info.get("host") != socket.gethostname():
        return False
    try:
        pid = int(info.get("pid", -1))
        started = info.get("started")
        started = float(started) if started is not None else None
    except (TypeError, ValueError):
        return False
    return pid > 0 and not process_alive(pid, started)


def lease_held(path: Path) -> bool:
    """Whether someone holds the lease at ``path``: a readable lease that is not stale
    and whose holder is not gone (:func:`holder_gone`).

    The one check of "held" for readers that only look (plan, status, gc); a
    lease that fails it is one a waiter could break.
    """
    info = read_lease(path)
    return info is not None and not is_stale(info) and not holder_gone(info)


class _Heartbeats:
    """One thread per process refreshing every lease the process holds.

    The lock is held while a lease's file is rewritten and while a lease
    leaves the set, so a released lease is never written again.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.leases: dict[int, Lease] = {}
        self.thread: threading.Thread | None = None

    def add(self, lease: Lease) -> None:
        with self.lock:
            self.leases[id(lease)] = lease
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="dscheduler-leases",
                                               daemon=True)
                self.thread.start()

    def remove(self, lease: Lease) -> None:
        with self.lock:
            self.leases.pop(id(lease), None)

    def drop(self, lease: Lease) -> None:
        """Forget a lost lease (``self.lock`` held)."""
        self.leases.pop(id(lease), None)

    def _run(self) -> None:
        while True:
            with self.lock:
                ttls = [lease.ttl for lease in self.leases.values()]
            time.sleep(max(min(ttls, default=4.0) / 8, 0.02))
            with self.lock:
                for lease in list(self.leases.values()):
                    if time.time() - lease.beaten >= lease.ttl / 4:
                        lease._beat()


_heartbeats = _Heartbeats()
_own_start: dict[int, float] = {}  # by pid: a forked child is another process


def own_start() -> float:
    """:func:`process_started` of this process, looked up once."""
    pid = os.getpid()
    if pid not in _own_start:
        _own_start[pid] = process_started(pid)
    return _own_start[pid]


class Lease:
    """An exclusive lease on a file, across processes and hosts.

    Use it as a context manager (``with Lease(path): ...``) or call
    :meth:`acquire` and :meth:`release`.

    Parameters
    ----------
    path
        The lease file; its directory must be on a filesystem every
        contender sees.
    ttl
        Seconds without a heartbeat after which a waiter may break the
        lease (default: setting ``lease.ttl``).
    poll
        Seconds between attempts while waiting (default: ``lease.poll``).
    owner
        Free text shown to waiters and in timeouts.
    break_dead_local
        Also break at once a lease whose holder ran on this host and is gone.
    details
        More JSON fields for the file: whoever breaks the lease reads them in
        :attr:`broken_holder` (a node's lease names its SLURM job and worker log).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        ttl: float | None = None,
        poll: float | None = None,
        owner: str = "",
        break_dead_local: bool = False,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.ttl = float(settings.get("lease.ttl", ttl))
        self.poll = float(settings.get("lease.poll", poll))
        self.owner = owner
        self.break_dead_local = break_dead_local
        self.details = details or {}
        self.token = ""
        self.lost = False
        self.beaten = 0.0
        #: The fields of the stale lease this one broke (its holder's host, pid, owner and
        #: ``details``), or None: its holder's attempt was cut short.
        self.broken_holder: dict[str, Any] | None = None
        #: ``time.time()`` when this process made the directory the lease guards, while
        #: it holds the lease by that claim and not yet by a file (:meth:`claim`).
        self.claimed: float | None = None
        self._overtaken: Callable[[], bool] = lambda: False

    # -- taking and giving back -------------------------------------------------

    # A lease file matters only while its holder lives, and a machine crash
    # ends the holder: it is never fsynced (docs/design.md §7).

    def _content(self, now: float) -> bytes:
        """The file's text, with heartbeat ``now``: the time :attr:`beaten` takes, so that
        this process never thinks its lease fresher than its waiters do."""
        info = {
            **self.details,
            "token": self.token,
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": own_start(),
            "ttl": self.ttl,
            "heartbeat": now,
        }
        return json.dumps(info).encode()

    def try_acquire(self) -> bool:
        """Take the lease if it is free or stale; never waits."""
        if self.token:
            raise LeaseError(f"lease {self.path} is already held by this object")
        self.token = uuid.uuid4().hex
        now = time.time()
        if atomic.create_exclusive(self.path, self._content(now)):
            self._start_heartbeat(now)
            return True
        info = read_lease(self.path)
        stale = info is not None and (
            is_stale(info) or (self.break_dead_local and holder_gone(info)))
        if info is None and self._unreadable_for() > self.ttl:
            info, stale = {}, True  # its taker died between creating and writing it
        now = time.time()
        if stale and info is not None and self._break_and_take(info):
            return True
        self.token = ""
        return False

    def claim(self, since: float, overtaken: Callable[[], bool]) -> Lease:
        """Hold the lease by a claim: at ``since`` (``time.time()`` right after it)
        this process made, exclusively, the directory the lease guards, so no one else
        can have worked on it.  No file is written (a fresh tiny task's lease costs
        nothing); :meth:`hold_file` writes one.

        ``overtaken()`` says whether someone else's work reached the directory (its
        record exists): checked when the file is created after the claim was old
        enough for a waiter to judge it stale, which would make the file a late one.
        """
        if self.token:
            raise LeaseError(f"lease {self.path} is already held by this object")
        self.token = uuid.uuid4().hex
        self.claimed, self._overtaken, self.lost = since, overtaken, False
        return self

    def hold_file(self) -> None:
        """Turn a claim (:meth:`claim`) into a lease file with heartbeats; nothing for a
        lease that has its file.  Marks the lease lost when a waiter judged the claim
        stale and took the lease, or worked on the node since.

        While the claim is fresh, a waiter may hold the file for a moment to look at
        the claim (it then sees the directory young and lets go): wait for that.
        """
        if self.claimed is None or self.lost or not self.token:
            return
        while True:
            fresh = self._fresh()
            now = time.time()
            if atomic.create_exclusive(self.path, self._content(now)):
                if not fresh and self._overtaken():
                    os.unlink(self.path)  # a waiter ran the node meanwhile: not ours
                    self.lost = True
                    return
                self.claimed = None
                self._start_heartbeat(now)
                return
            if not fresh:
                self.lost = True
                return
            time.sleep(min(self.poll, 0.05))

    def acquire(
        self, timeout: float | None = None, abort: Callable[[], str | None] | None = None
    ) -> Lease:
        """Wait for the lease.

        Parameters
        ----------
        timeout
            Seconds to wait; None waits until the lease is free (a dead
            holder's lease is broken after its ttl).  Past it: :class:`LeaseTimeout`.
        abort
            Called between attempts; a non-empty string it returns ends the
            wait with a :class:`LeaseError` quoting it (e.g. "cancelled").
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.try_acquire():
            reason = abort() if abort is not None else None
            if reason:
                raise LeaseError(f"gave up waiting for lease {self.path}: {reason}")
            if deadline is not None and time.monotonic() > deadline:
                holder = read_lease(self.path) or {}
                raise LeaseTimeout(
                    f"lease {self.path} still held after {timeout} s by "
                    f"{holder.get('owner') or '?'} (host {holder.get('host')}, "
                    f"pid {holder.get('pid')}); it is broken automatically "
                    f"{holder.get('ttl')} s after its holder stops heart-beating"
                )
            time.sleep(self.poll)
        return self

    def release(self) -> None:
        _heartbeats.remove(self)
        if self.claimed is not None:  # held by its directory alone: no file to remove
            self.claimed, self.token = None, ""
            return
        if self.token and not self.lost:
            if self._fresh():
                # Written by this process less than half a ttl ago: no waiter can have
                # judged it stale (hosts keep their clocks well within a ttl) and its
                # holder lives, so the file is still this lease.  One unlink, where
                # reading it and renaming it aside are three more round trips on a
                # shared filesystem, for every tiny task (docs/design.md §14.2).
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            else:
                aside = self._take()
                if aside is not None:
                    aside.unlink(missing_ok=True)
        self.token = ""

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def check(self) -> None:
        """Raise LeaseError unless this process still holds the lease, and will for at
        least the margin of half a ttl in which to publish (docs/design.md §7).

        Free (no file access) when the last heartbeat is younger than ``ttl / 2``, as it
        is unless this process was stopped or starved.  Older, a waiter may judge the
        lease stale at any moment: the file is taken back (:meth:`_reclaim`) when it is
        still this lease's, else the lease is lost and nothing may be published.
        """
        if not self.lost and self.token and self._fresh():
            return
        if self.claimed is not None:
            self.hold_file()
        with _heartbeats.lock:  # not while the heartbeat thread rewrites it
            if not self.lost and self.token and not self._fresh():
                self._reclaim()
        if self.lost or not self.token:
            raise LeaseError(f"lease {self.path} was lost; another process may hold it now")

    # -- heartbeat and breaking -------------------------------------------------

    def _start_heartbeat(self, now: float) -> None:
        self.lost = False
        self.beaten = now
        _heartbeats.add(self)

    def _fresh(self) -> bool:
        """Whether this process wrote the lease less than half a ttl ago: then no waiter
        can judge it stale for another half ttl (clocks agreeing well within a ttl).
        A claim likewise, with :func:`claim_ttl`."""
        if self.claimed is not None:
            return time.time() - self.claimed < claim_ttl(self.ttl) / 2
        return time.time() - self.beaten < self.ttl / 2

    def _lose(self) -> None:
        """Mark the lease lost and stop its heartbeats (``_heartbeats.lock`` held)."""
        self.lost = True
        _heartbeats.drop(self)

    def _beat(self) -> None:
        """Refresh the heartbeat (``_heartbeats.lock`` held).  While fresh, no waiter can
        be breaking the file: read, check the token, replace.  Older (this process was
        stopped or starved), a waiter may be breaking it right now, and a plain replace
        could overwrite the lease it just took: :meth:`_reclaim` instead."""
        if not self._fresh():
            self._reclaim()
            return
        info = read_lease(self.path)
        if info is None or info.get("token") != self.token:
            self._lose()
            return
        now = time.time()
        try:
            atomic.write_bytes(self.path, self._content(now), durable=False)
            self.beaten = now
        except OSError:
            pass  # a transient filesystem error; the next round tries again

    def _reclaim(self) -> None:
        """Take back a lease a waiter may judge stale, or mark it lost (``_heartbeats.lock``
        held).  The file is renamed aside, so that no waiter can break it meanwhile, and
        checked to be this lease; then it is created anew, exclusively, with a fresh
        heartbeat.  A waiter that judged the old file and renames the new one aside sees
        another heartbeat and puts it back (:meth:`_break`); one that finds the name free
        meanwhile and creates it first wins, and this lease is lost."""
        info = read_lease(self.path)
        aside = self._take() if info is not None and info.get("token") == self.token \
            else None
        if aside is None:
            self._lose()
            return
        now = time.time()
        try:
            if atomic.create_exclusive(self.path, self._content(now)):
                self.beaten = now
            else:
                self._lose()
        except OSError:
            self._lose()
        finally:
            aside.unlink(missing_ok=True)

    def _take(self) -> Path | None:
        """Rename the lease file aside when it is this lease's: the aside path, or None
        (gone, or someone else's, which is put back)."""
        aside = atomic.temp_sibling(self.path, ".taken")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return None
        moved = read_lease(aside)
        if moved is not None and moved.get("token") == self.token:
            return aside
        with contextlib.suppress(FileExistsError):
            os.link(aside, self.path)
        aside.unlink(missing_ok=True)
        return None

    def stop_heartbeat(self) -> None:
        """Stop refreshing without releasing (tests use it to play a stalled holder)."""
        _heartbeats.remove(self)

    def _unreadable_for(self) -> float:
        """Seconds since the (unreadable) lease file was last written; 0 when gone."""
        try:
            return time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return 0.0

    def _break_and_take(self, judged: dict[str, Any]) -> bool:
        """Break the stale lease ``judged`` and create ours, one breaker at a time.

        Breakers take the guard file ``.{name}.breaking`` first and hold it until
        their own lease exists; they look again under it and go only if the lease
        is still the one they judged.  Without the guard, a second breaker that
        judged the same stale lease could move the first one's new lease aside and
        put it back a moment later, and a third process could create the name in
        that moment: two holders (seen on an NFS-like store, tests/test_slowfs.py).
        """
        guard = self.path.with_name(f".{self.path.name}.breaking")
        if not atomic.create_exclusive(guard, b""):
            self._clear_stale_guard(guard)
            return False
        try:
            now_info = read_lease(self.path)
            if now_info is not None and not _same_lease(now_info, judged):
                return False  # broken and taken by another since we looked
            if not self._break(judged):
                return False
            now = time.time()
            if not atomic.create_exclusive(self.path, self._content(now)):
                return False
            self._start_heartbeat(now)
            return True
        finally:
            guard.unlink(missing_ok=True)

    def _clear_stale_guard(self, guard: Path) -> None:
        """Remove a breaker's guard left by a breaker that died holding it: a breaker
        holds it for a few file operations, so one older than a ttl is dead."""
        try:
            if time.time() - os.stat(guard).st_mtime > self.ttl:
                guard.unlink(missing_ok=True)
        except FileNotFoundError:
            pass

    def _break(self, judged: dict[str, Any]) -> bool:
        """Move a stale lease aside; True when the stale one was removed."""
        aside = atomic.temp_sibling(self.path, ".broken")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True  # someone else removed it; creating may now succeed
        moved = read_lease(aside)
        same = _same_lease(moved, judged) if moved is not None else not judged
        if not same:
            # Between our read and our rename a new holder took it (maybe still writing
            # it, unreadable), or its holder took it back with a fresh heartbeat
            # (:meth:`Lease._reclaim`): put it back.
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        self.broken_holder = judged  # its holder's attempt was cut short: callers may say so
        return True
