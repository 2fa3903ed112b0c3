"""Fencing: a holder stopped past its lease's ttl never publishes over its successor.

docs/design.md §7.  Two plain processes run one node through the worker's own code
(``run_node``) with real leases and a real store: A starts, is SIGSTOPped (a partition:
no heartbeats), B breaks A's stale lease and commits, then A is SIGCONTed.  A's late
work must not replace B's value or record, and B's record says what became of A.  The
same holds for A's deferred "running" record, and for an A whose heartbeat thread is stuck.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
from helpers import popen, wait_for

import dscheduler as ds
from dscheduler.run.nodespec import make_specs
from dscheduler.store.record import FAILED, RUNNING, SUCCEEDED
from dscheduler.store.records import read_node

pytestmark = pytest.mark.slow

TTL = 3.0  # node lease ttl of both processes: heartbeats every 0.75 s

RUN = """
import sys, cloudpickle
from dscheduler.run.execute import run_node
if sys.argv[2:] == ["stuck"]:  # a heartbeat thread that never gets to write (a hung mount)
    from dscheduler.store.lease import Lease
    Lease._beat = lambda self: None
with open(sys.argv[1], "rb") as f:
    spec = cloudpickle.load(f)
try:
    print("OUTCOME", run_node(spec)[0], flush=True)
except Exception as err:
    print("ERROR", type(err).__name__, err, flush=True)
"""


@ds.task(version="1", env=None, name="fenced")
def stamp(log: str, nap: str) -> int:
    """Says it started, naps as the file ``nap`` says (seconds, or "until PATH" exists,
    two minutes at most), returns its pid."""
    import os
    import time

    with open(nap) as f:
        how = f.read()
    with open(log, "a") as f:
        f.write(f"start {os.getpid()}\n")
    if how.startswith("until "):
        end = time.monotonic() + 120
        while not os.path.exists(how[6:]) and time.monotonic() < end:
            time.sleep(0.05)
    else:
        time.sleep(float(how))
    return os.getpid()




def _attempt(spec_file: Path, *args: str, **settings: float) -> subprocess.Popen[str]:
    env = {**os.environ, "DASK_DSCHEDULER__TASK__LEASE_TTL": str(TTL),
           **{f"DASK_DSCHEDULER__TASK__{k.upper()}": str(v) for k, v in settings.items()},
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    return popen([sys.executable, "-c", RUN, str(spec_file), *args], env=env)


def _spec_file(node: ds.Node, store: ds.Store, tmp: Path, name: str) -> Path:
    p = ds.plan(node, store=store)
    [spec] = make_specs(p, name).values()  # a submission of its own
    path = tmp / f"{name}.spec"
    path.write_bytes(cloudpickle.dumps(spec))
    return path


def _failed_before(node: ds.Node, store: ds.Store, tmp: Path, nap: Path) -> None:
    """A first attempt that fails: the next one is a retry, which stores its value by
    replacing (a first attempt creates it once, and could not overwrite anyway)."""
    nap.write_text("not a number")
    first = _attempt(_spec_file(node, store, tmp, "first"))
    assert "ERROR TaskError" in first.communicate(timeout=120)[0]


def _started(log: Path, pid: int) -> bool:
    return log.exists() and f"start {pid}" in log.read_text().split("\n")


def _take_over(node: ds.Node, store: ds.Store, tmp: Path, nap: Path) -> tuple[int, str]:
    """B runs the node while A is stopped (or its heartbeats stuck): B's pid and its
    record's text."""
    nap.write_text("0.2")
    b = _attempt(_spec_file(node, store, tmp, "b"))
    out, err = b.communicate(timeout=120)  # waits a ttl for A's lease, then runs
    assert "OUTCOME succeeded" in out, (out, err)
    return b.pid, node.paths(store).record.read_text()


def _late(a: subprocess.Popen[str], go: Path, after: float = 0.0) -> tuple[str, str]:
    """SIGCONT A, let its task end ``after`` seconds later, and wait for it: its output
    and its log."""
    os.kill(a.pid, signal.SIGCONT)
    time.sleep(after)
    go.touch()
    out, err = a.communicate(timeout=120)
    assert a.returncode == 0, err
    return out, err


def _said_lost(out: str, err: str) -> None:
    assert "ERROR TaskError" in out and "was lost" in out, (out, err)


def _check_store(node: ds.Node, store: ds.Store, record_text: str, a: int, b: int,
                 claimed: bool = False) -> None:
    """B's commit stands, whole; the record tells A's attempt was cut short (``claimed``:
    A held the node by its new directory alone, so nobody knows its pid)."""
    paths = node.paths(store)
    assert paths.record.read_text() == record_text  # never rewritten by A
    record = read_node(paths.record)
    assert record is not None and record.state == SUCCEEDED
    *_, first, second = record.attempts
    assert (first.pid, first.state) == (None if claimed else a, FAILED)
    assert first.error is not None and "interrupted" in first.error
    assert ("left neither lease nor record" if claimed else "stalled past its lease") \
        in first.error, first.error
    assert (second.pid, second.state, second.submission) == (b, SUCCEEDED, "b")
    results = ds.compute(node, store=store, progress=False)
    assert results.state(node) == "cached" and results.value(node) == b  # B's value
    hidden = sorted(p.name for p in paths.dir.iterdir() if p.name.startswith("."))
    assert hidden == [".fenced.done"], hidden  # no partial value A left behind
    assert not Path(store.node_lease_name(node.key[:16])).exists()


def test_stopped_holder_never_replaces_the_committed_value(tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "data")
    log, nap = tmp_path / "log", tmp_path / "nap"
    node = stamp(str(log), str(nap))
    _failed_before(node, store, tmp_path, nap)
    go = tmp_path / "go"
    nap.write_text(f"until {go}")
    a = _attempt(_spec_file(node, store, tmp_path, "a"))
    wait_for(lambda: _started(log, a.pid), 60, "A to start its task")
    # A's "running" record (the marker a stopped attempt leaves) precedes its task
    record = read_node(node.paths(store).record)
    assert record is not None and record.state == RUNNING and record.last.pid == a.pid
    os.kill(a.pid, signal.SIGSTOP)  # no heartbeats from here on
    b, record_text = _take_over(node, store, tmp_path, nap)
    # A wakes up with its value in hand and its lease long broken: it must notice before
    # storing anything, though its heartbeat thread has not run yet
    out, err = _late(a, go)
    _check_store(node, store, record_text, a.pid, b)
    _said_lost(out, err)


def test_stopped_holder_never_writes_its_deferred_running_record(tmp_path: Path) -> None:
    # A tiny task's "running" record waits task.running_record_after seconds on a
    # thread of its own (docs/design.md §14): due while A was stopped, it fires the
    # moment A continues, while A's task still naps.  A fresh node is held by the
    # directory A made (a claim, §7) until then: B breaks the claim once it is a
    # quarter ttl old, and A, late, must neither take the lease nor write.
    store = ds.Store(tmp_path / "data")
    log, nap = tmp_path / "log", tmp_path / "nap"
    go = tmp_path / "go"
    nap.write_text(f"until {go}")
    node = stamp(str(log), str(nap))
    a = _attempt(_spec_file(node, store, tmp_path, "a"), running_record_after=10)
    wait_for(lambda: _started(log, a.pid), 60, "A to start its task")
    os.kill(a.pid, signal.SIGSTOP)
    started = time.monotonic()
    assert not node.paths(store).record.exists(), "A wrote its record: stopped too late"
    b, record_text = _take_over(node, store, tmp_path, nap)
    time.sleep(max(0.0, started + 11 - time.monotonic()))  # A's deferred write is due
    out, err = _late(a, go, after=3)  # the deferred write first, then the task's end
    _check_store(node, store, record_text, a.pid, b, claimed=True)
    _said_lost(out, err)
    assert "deferred write failed" in err and "was lost" in err, err


def test_holder_whose_heartbeats_stall_finds_out_before_storing(tmp_path: Path) -> None:
    # No SIGSTOP: A's heartbeat thread is stuck (a hung mount), its task runs on and
    # ends after B took over.  A's lost flag is never set: only check() can tell.
    store = ds.Store(tmp_path / "data")
    log, nap = tmp_path / "log", tmp_path / "nap"
    node = stamp(str(log), str(nap))
    _failed_before(node, store, tmp_path, nap)
    go = tmp_path / "go"
    nap.write_text(f"until {go}")
    a = _attempt(_spec_file(node, store, tmp_path, "a"), "stuck")
    wait_for(lambda: _started(log, a.pid), 60, "A to start its task")
    b, record_text = _take_over(node, store, tmp_path, nap)
    go.touch()
    out, err = a.communicate(timeout=120)
    _check_store(node, store, record_text, a.pid, b)
    _said_lost(out, err)
