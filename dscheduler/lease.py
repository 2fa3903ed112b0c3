"""Leases: mutual exclusion across processes and hosts on a shared filesystem.

``flock`` is not used: it is unreliable or absent on many parallel
filesystems.  Instead (no library does this for shared filesystems with
stale-holder detection, hence hand-written):

* taking a lease is creating its file atomically and exclusively
  (:func:`atomic.create_once`, ``os.link`` of a finished temporary file), the
  file holding a random token, owner, host, pid, ttl and a heartbeat time;
* the holder refreshes the heartbeat every ``ttl / 4`` s (temporary file +
  ``os.replace``), after checking the token is still its own; one daemon
  thread per process beats for every lease it holds (a worker holding a
  lease per tiny task would otherwise spend its time starting threads);
* a waiter may break a lease whose heartbeat is older than its ttl: it renames
  the file to a unique name (only one waiter can win that rename), checks that
  what it moved is the stale lease it judged, and puts it back otherwise;
* a holder that finds its token gone marks the lease ``lost``; work that
  commits under a lease checks :meth:`Lease.check` first.

A live holder is never broken: its heartbeat is at most ttl/4 old.  Clocks of
hosts sharing a store are assumed to agree to well within the ttl.  With
``break_dead_local=True`` a waiter also breaks at once a lease whose holder
ran on this host and whose pid is gone (a task retried right after its
worker was killed should not wait a ttl); a reused pid only delays that
to the ttl.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from . import atomic, settings
from .errors import LeaseError, LeaseTimeout


def read_lease(path: Path) -> dict[str, Any] | None:
    try:
        data = atomic.read_json(path)
    except (json.JSONDecodeError, OSError):
        return None
    return data if isinstance(data, dict) else None


def is_stale(info: dict[str, Any], now: float | None = None) -> bool:
    now = time.time() if now is None else now
    return now - float(info.get("heartbeat", 0)) > float(info.get("ttl", 0))


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def holder_gone(info: dict[str, Any]) -> bool:
    """Whether the lease's holder ran on this host and its process no longer exists."""
    if info.get("host") != socket.gethostname():
        return False
    try:
        pid = int(info.get("pid", -1))
    except (TypeError, ValueError):
        return False
    return pid > 0 and not pid_alive(pid)


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

    def _run(self) -> None:
        while True:
            with self.lock:
                ttls = [lease.ttl for lease in self.leases.values()]
            time.sleep(max(min(ttls, default=4.0) / 8, 0.02))
            now = time.time()
            with self.lock:
                for key, lease in list(self.leases.items()):
                    if now - lease.beaten < lease.ttl / 4:
                        continue
                    info = read_lease(lease.path)
                    if info is None or info.get("token") != lease.token:
                        lease.lost = True
                        del self.leases[key]
                        continue
                    try:
                        atomic.write_bytes(lease.path, lease._content(), durable=False)
                        lease.beaten = now
                    except OSError:
                        pass  # a transient filesystem error; the next round tries again


_heartbeats = _Heartbeats()


class Lease:
    """An exclusive lease on ``path``; use as a context manager or acquire/release."""

    def __init__(
        self,
        path: Path | str,
        *,
        ttl: float | None = None,
        poll: float | None = None,
        owner: str = "",
        break_dead_local: bool = False,
    ) -> None:
        self.path = Path(path)
        self.ttl = float(settings.get("lease.ttl", ttl))
        self.poll = float(settings.get("lease.poll", poll))
        self.owner = owner
        self.break_dead_local = break_dead_local
        self.token = ""
        self.lost = False
        self.beaten = 0.0

    # -- taking and giving back -------------------------------------------------

    # A lease file matters only while its holder lives, and a machine crash
    # ends the holder: it is never fsynced (concurrent fsyncs serialise on the
    # filesystem journal; one per task halved small-task throughput).

    def _content(self) -> bytes:
        info = {
            "token": self.token,
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "ttl": self.ttl,
            "heartbeat": time.time(),
        }
        return json.dumps(info).encode()

    def try_acquire(self) -> bool:
        """Take the lease if it is free or stale; never waits."""
        if self.token:
            raise LeaseError(f"lease {self.path} is already held by this object")
        self.token = uuid.uuid4().hex
        if atomic.create_once(self.path, self._content(), durable=False):
            self._start_heartbeat()
            return True
        info = read_lease(self.path)
        if (
            info is not None
            and (is_stale(info) or (self.break_dead_local and holder_gone(info)))
            and self._break(info)
            and atomic.create_once(self.path, self._content(), durable=False)
        ):
            self._start_heartbeat()
            return True
        self.token = ""
        return False

    def acquire(self, timeout: float | None = None) -> Lease:
        """Wait for the lease; ``timeout`` None waits forever."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.try_acquire():
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
        if self.token and not self.lost:
            info = read_lease(self.path)
            if info is not None and info.get("token") == self.token:
                # Rename first, then delete: a waiter never sees a half-removed file.
                gone = atomic.temp_sibling(self.path, ".released")
                try:
                    os.rename(self.path, gone)
                    gone.unlink()
                except FileNotFoundError:
                    pass
        self.token = ""

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def check(self) -> None:
        """Raise if the lease was lost (broken by a waiter after a stalled heartbeat)."""
        if self.lost or not self.token:
            raise LeaseError(f"lease {self.path} was lost; another process may hold it now")

    # -- heartbeat and breaking -------------------------------------------------

    def _start_heartbeat(self) -> None:
        self.lost = False
        self.beaten = time.time()
        _heartbeats.add(self)

    def stop_heartbeat(self) -> None:
        """Stop refreshing without releasing (tests use it to play a stalled holder)."""
        _heartbeats.remove(self)

    def _break(self, judged: dict[str, Any]) -> bool:
        """Move a stale lease aside; True when the stale one was removed."""
        aside = atomic.temp_sibling(self.path, ".broken")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True  # someone else removed it; creating may now succeed
        moved = read_lease(aside)
        if moved is not None and moved.get("token") != judged.get("token"):
            # Between our read and our rename a new holder took it: put it back.
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True
