"""Leases with real processes: exclusion, breaking a dead holder, never a live one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import popen, wait_for

import dscheduler as ds
from dscheduler.store.lease import lease_held

HOLDER = """
import os, sys, time
from dscheduler import Lease
lease = Lease(sys.argv[1], ttl=float(sys.argv[2]), poll=0.02, owner="holder")
lease.acquire(timeout=30)
open(sys.argv[3], "w").write(str(os.getpid()))
# hold until the file sys.argv[4] appears (the test says when), 120 s at most
end = time.monotonic() + 120
while not os.path.exists(sys.argv[4]) and time.monotonic() < end:
    time.sleep(0.02)
lost = lease.lost
lease.release()
print("lost" if lost else "kept")
"""

CONTENDER = """
import os, sys, time
from pathlib import Path
from dscheduler import Lease
inside = Path(sys.argv[2])
for _ in range(int(sys.argv[3])):
    with Lease(sys.argv[1], ttl=5, poll=0.01, owner=str(os.getpid())):
        try:
            fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            print("OVERLAP"); sys.exit(3)
        os.close(fd)
        time.sleep(0.01)
        inside.unlink()
print("ok")
"""




def _start(code: str, *args: object) -> subprocess.Popen[str]:
    return popen([sys.executable, "-c", code, *map(str, args)])


def _started(path: Path) -> None:
    wait_for(path.exists, 60, f"the holder to write {path}")


def test_contending_processes_never_overlap(tmp_path: Path) -> None:
    lease, inside = tmp_path / "x.lease", tmp_path / "inside"
    procs = [_start(CONTENDER, lease, inside, 15) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outs
    assert not lease.exists()


def test_holder_killed_is_broken_after_ttl(tmp_path: Path) -> None:
    lease, started = tmp_path / "x.lease", tmp_path / "started"
    ttl = 3.0  # heartbeats every 0.75 s: "not yet breakable" has 2 s to spare under load
    holder = _start(HOLDER, lease, ttl, started, tmp_path / "never")
    _started(started)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    killed_at = time.time()
    heartbeat = json.loads(lease.read_text())["heartbeat"]

    waiter = ds.Lease(lease, ttl=ttl, poll=0.02)
    assert not waiter.try_acquire()  # fresh heartbeat: not yet breakable
    waiter.acquire(timeout=10)
    try:
        took = time.time() - killed_at
        assert time.time() - heartbeat > ttl  # broken only once the heartbeat was stale
        assert took < ttl + 5, f"took {took:.2f} s to break a dead holder's lease"
        assert json.loads(lease.read_text())["token"] == waiter.token
    finally:
        waiter.release()


def test_live_holder_is_never_broken(tmp_path: Path) -> None:
    # ttl 3 s: the holder heartbeats every ttl/4 = 0.75 s, so only a holder process
    # starved for 3 s in a row loses its lease (a 0.4 s ttl broke on a loaded 2-core
    # machine).  The waiter tries for two TTLs: without heartbeats it would break the
    # lease after one.  The holder lets go only when told: no race at the end.
    lease, started, release = tmp_path / "x.lease", tmp_path / "started", tmp_path / "release"
    ttl = 3.0
    holder = _start(HOLDER, lease, ttl, started, release)
    try:
        _started(started)
        first = json.loads(lease.read_text())["heartbeat"]
        waiter = ds.Lease(lease, ttl=ttl, poll=0.05)
        with pytest.raises(ds.LeaseTimeout, match="still held"):
            waiter.acquire(timeout=2 * ttl)
        assert json.loads(lease.read_text())["heartbeat"] > first + ttl  # it was kept alive
    finally:
        release.touch()
    out, err = holder.communicate(timeout=60)
    assert holder.returncode == 0, err
    assert out.strip() == "kept"
    waiter.acquire(timeout=30)  # free once the holder let go
    waiter.release()


def test_release_only_removes_own_lease(tmp_path: Path) -> None:
    path = tmp_path / "x.lease"
    a = ds.Lease(path, ttl=0.2, poll=0.01)
    assert a.try_acquire()
    a.stop_heartbeat()  # a stalled holder: no more heartbeats
    time.sleep(0.3)
    b = ds.Lease(path, ttl=5)
    assert b.try_acquire()  # a's lease was stale and got broken
    a.release()  # must not remove b's lease
    assert json.loads(path.read_text())["token"] == b.token
    b.release()
    assert not path.exists()


def test_dead_local_holder_is_broken_at_once_only_when_asked(tmp_path: Path) -> None:
    lease, started = tmp_path / "x.lease", tmp_path / "started"
    holder = _start(HOLDER, lease, 60, started, tmp_path / "never")  # a TTL past the test
    _started(started)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    patient = ds.Lease(lease, ttl=60, poll=0.02)
    with pytest.raises(ds.LeaseTimeout):
        patient.acquire(timeout=0.5)  # by default a dead holder waits out its TTL
    eager = ds.Lease(lease, ttl=60, poll=0.02, break_dead_local=True)
    assert eager.try_acquire()  # same host, pid gone: broken at once
    eager.release()


def test_live_local_holder_is_not_broken_by_break_dead_local(tmp_path: Path) -> None:
    lease, started, release = tmp_path / "x.lease", tmp_path / "started", tmp_path / "release"
    holder = _start(HOLDER, lease, 60, started, release)
    try:
        _started(started)
        eager = ds.Lease(lease, ttl=60, poll=0.02, break_dead_local=True)
        assert not eager.try_acquire()
    finally:
        release.touch()
    out, _ = holder.communicate(timeout=60)
    assert out.strip() == "kept"


def test_lease_held_means_readable_fresh_and_holder_alive(tmp_path: Path) -> None:
    path = tmp_path / "x.lease"
    assert not lease_held(path)  # no lease
    lease = ds.Lease(path, ttl=30, poll=0.01)  # fresh for the test even when it stalls
    assert lease.try_acquire()
    assert lease_held(path)
    info = json.loads(path.read_text())
    lease.stop_heartbeat()
    path.write_text(json.dumps({**info, "heartbeat": time.time() - 31}))
    assert not lease_held(path)  # stale: its heartbeat is older than its ttl
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    path.write_text(json.dumps({**info, "heartbeat": time.time(), "ttl": 60, "pid": dead.pid,
                                "started": time.time() - 1}))
    assert not lease_held(path)  # fresh, but its holder on this host is gone
    path.write_text(json.dumps({**info, "heartbeat": time.time(), "ttl": 60}))
    assert lease_held(path)  # fresh, and its holder (this process) lives
    path.write_text('{"token": ')
    assert not lease_held(path)  # unreadable
    lease.release()


def test_an_unreadable_lease_waits_then_is_broken_after_the_ttl(tmp_path: Path) -> None:
    # A lease is created with its content in one exclusive open: a waiter may find it
    # empty for a moment (being written), and must wait then; one left empty by a
    # taker that died between create and write is broken once older than the ttl.
    path = tmp_path / "x.lease"
    path.write_bytes(b"")
    waiter = ds.Lease(path, ttl=5, poll=0.01, break_dead_local=True)
    assert not waiter.try_acquire()  # being written: not judged
    old = time.time() - 10
    os.utime(path, (old, old))
    assert waiter.try_acquire()  # unreadable for longer than the ttl
    assert json.loads(path.read_text())["token"] == waiter.token
    waiter.release()


def test_breaking_puts_back_a_lease_taken_meanwhile_even_while_it_is_written(
        tmp_path: Path) -> None:
    path = tmp_path / "x.lease"
    stale = ds.Lease(path, ttl=0.1)
    assert stale.try_acquire()
    stale.stop_heartbeat()
    judged = json.loads(path.read_text())
    path.unlink()
    path.write_bytes(b"")  # a new taker's file, not yet written
    breaker = ds.Lease(path, ttl=0.1)
    assert not breaker._break(judged)
    assert path.exists() and path.read_bytes() == b""  # put back, not removed


# -- fencing: check() after a stall (docs/design.md §7) -------------------------------------


def test_check_touches_no_file_while_the_lease_is_fresh(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    lease = ds.Lease(tmp_path / "x.lease", ttl=60, poll=0.01)  # no heartbeat in this test
    lease.acquire(timeout=10)
    try:
        def no_file_access(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"check() touched a file: {args}")

        with monkeypatch.context() as m:
            for name in ("open", "stat", "rename", "unlink", "link", "read"):
                m.setattr(os, name, no_file_access)
            lease.check()
    finally:
        lease.release()


def test_check_after_a_stall_takes_the_lease_back_while_nobody_else_did(
        tmp_path: Path) -> None:
    path = tmp_path / "x.lease"
    lease = ds.Lease(path, ttl=1, poll=0.01)
    lease.acquire(timeout=10)
    lease.stop_heartbeat()  # stalled: past ttl / 2, even past the ttl
    time.sleep(1.2)
    before = json.loads(path.read_text())["heartbeat"]
    lease.check()  # nobody broke it: taken back with a fresh heartbeat
    after = json.loads(path.read_text())
    assert after["token"] == lease.token and after["heartbeat"] > before + 1
    assert [p.name for p in tmp_path.iterdir()] == ["x.lease"]  # nothing left aside
    lease.release()
    assert not path.exists()


def test_check_after_a_stall_says_lost_once_another_took_it(tmp_path: Path) -> None:
    path = tmp_path / "x.lease"
    stalled = ds.Lease(path, ttl=0.5, poll=0.01)
    stalled.acquire(timeout=10)
    stalled.stop_heartbeat()
    time.sleep(0.7)
    other = ds.Lease(path, ttl=30, poll=0.01)
    assert other.try_acquire()  # broke the stale lease
    assert not stalled.lost  # no heartbeat thread told it: only check() can
    with pytest.raises(ds.LeaseError, match="was lost"):
        stalled.check()
    assert json.loads(path.read_text())["token"] == other.token  # left alone
    stalled.release()  # lost: removes nothing
    other.check()
    other.release()
    with pytest.raises(ds.LeaseError, match="was lost"):
        stalled.check()


def test_a_breaker_puts_back_a_lease_its_holder_took_back_meanwhile(tmp_path: Path) -> None:
    # The waiter judged the stale file; before it renames the file aside, the holder
    # wakes up and takes the lease back (same token, fresh heartbeat): the waiter
    # must see another lease and put it back, not break it.
    path = tmp_path / "x.lease"
    holder = ds.Lease(path, ttl=0.5, poll=0.01)
    holder.acquire(timeout=10)
    holder.stop_heartbeat()
    time.sleep(0.7)
    judged = json.loads(path.read_text())
    holder.check()  # taken back
    waiter = ds.Lease(path, ttl=0.5)
    assert not waiter._break(judged)
    assert json.loads(path.read_text())["token"] == holder.token
    holder.check()  # still its own
    holder.release()
    assert not path.exists()


# -- claims: a lease held by the directory it guards (docs/design.md §7) ---------------------


def test_a_fresh_claim_writes_no_file_and_checks_free(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.lease"
    lease = ds.Lease(path, ttl=60, poll=0.01).claim(time.time(), lambda: False)
    with monkeypatch.context() as m:
        def no_file_access(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"a claim touched a file: {args}")

        for name in ("open", "stat", "rename", "unlink", "link", "read"):
            m.setattr(os, name, no_file_access)
        lease.check()
        lease.release()
    assert not path.exists()


def test_a_claim_takes_its_file_once_a_waiter_that_looked_let_go(tmp_path: Path) -> None:
    """A waiter may hold the file for a moment to judge the claim: while the claim is
    fresh, its holder waits for the file rather than counting the lease lost."""
    path = tmp_path / "x.lease"
    claim = ds.Lease(path, ttl=8, poll=0.01).claim(time.time(), lambda: False)
    waiter = ds.Lease(path, ttl=8, poll=0.01)
    assert waiter.try_acquire()
    proc = popen([sys.executable, "-c", "import sys, time, os; time.sleep(0.3); "
                  "os.unlink(sys.argv[1])", str(path)])
    claim.hold_file()
    assert proc.wait(timeout=30) == 0
    assert not claim.lost and json.loads(path.read_text())["token"] == claim.token
    claim.check()
    claim.release()
    assert not path.exists()


def test_a_stale_claim_is_lost_to_a_waiter_holding_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.lease"
    claim = ds.Lease(path, ttl=8, poll=0.01).claim(time.time() - 2, lambda: False)
    other = ds.Lease(path, ttl=8, poll=0.01)
    assert other.try_acquire()  # judged the claim (2 s, a quarter ttl) stale
    with pytest.raises(ds.LeaseError, match="was lost"):
        claim.check()
    claim.release()
    assert json.loads(path.read_text())["token"] == other.token  # left alone
    other.release()


def test_a_stale_claim_is_lost_once_a_waiter_worked_and_left(tmp_path: Path) -> None:
    """The waiter that broke the claim ran the node and let go of the file: the late
    holder can create the file, but the node's record says someone worked meanwhile."""
    path, record = tmp_path / "x.lease", tmp_path / "record"
    record.write_text("{}")
    claim = ds.Lease(path, ttl=8, poll=0.01).claim(time.time() - 2, record.exists)
    with pytest.raises(ds.LeaseError, match="was lost"):
        claim.check()
    assert not path.exists()
    record.unlink()  # nobody worked: the late holder takes the file and goes on
    late = ds.Lease(path, ttl=8, poll=0.01).claim(time.time() - 2, record.exists)
    late.check()
    assert json.loads(path.read_text())["token"] == late.token
    late.release()
    assert not path.exists()
