"""Dask gives a task up (KilledWorker) that another process committed: the store has the last word.

docs/design.md §5.6.  A plain process runs node X through the worker's own code and holds
its lease; a graph of X and its downstream Y goes to the embedded cluster, whose attempt at
X waits for the lease; that worker is killed with the scheduler's ``allowed_failures`` at 0,
so Dask errs X and Y at once.  X's record then says succeeded: X is reported ``cached``,
Y ``blocked`` (Dask never ran it), not both ``failed``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from helpers import wait_for

import dscheduler as ds
from dscheduler import settings
from dscheduler.run.nodespec import make_specs

pytestmark = pytest.mark.slow

RUN = """
import sys, cloudpickle
from dscheduler.run.execute import run_node
with open(sys.argv[1], "rb") as f:
    spec = cloudpickle.load(f)
print("OUTCOME", run_node(spec)[0], flush=True)
"""


@ds.task(version="1", env=None, name="lost_x")
def slow(log: str, nap: float) -> int:
    import os
    import time

    with open(log, "a") as f:
        f.write(f"start {os.getpid()}\n")
    time.sleep(nap)
    return 7


@ds.task(version="1", env=None, name="lost_y")
def after(x: int) -> int:
    return x + 1


def _set_allowed_failures(n: int, dask_scheduler: Any = None) -> int:
    """Run on the scheduler: set its allowed_failures, return the old value."""
    old = int(dask_scheduler.allowed_failures)
    dask_scheduler.allowed_failures = n
    return old


def _worker_of(key: str, dask_scheduler: Any = None) -> str | None:
    """Run on the scheduler: the address of the worker processing ``key``."""
    ts = dask_scheduler.tasks.get(key)
    return ts.processing_on.address if ts is not None and ts.processing_on else None


@pytest.fixture
def zero_failures(cluster: Any) -> Iterator[Any]:
    old = cluster.run_on_scheduler(_set_allowed_failures, 0)
    assert old == settings.get("task.lost_workers")  # what the embedded cluster was given
    try:
        yield cluster
    finally:
        cluster.run_on_scheduler(_set_allowed_failures, old)
        cluster.wait_for_workers(2, timeout=120)  # the nanny restarts the killed worker


def test_a_node_dask_gave_up_but_the_store_holds_is_reported_from_the_store(
        zero_failures: Any, tmp_path: Path) -> None:
    client = zero_failures
    assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures) == 0
    store = ds.Store(tmp_path / "data")
    log = tmp_path / "log"
    x = slow(str(log), 6.0)
    y = after(x)
    [spec] = make_specs(ds.plan(x, store=store), "other").values()
    (tmp_path / "x.spec").write_bytes(cloudpickle.dumps(spec))
    other = subprocess.Popen([sys.executable, "-c", RUN, str(tmp_path / "x.spec")],
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: log.exists() and "start" in log.read_text(), 60, "the other run")
        handle = ds.submit(y, store=store, cluster=client)
        # our attempt at X waits for the other process's lease on some worker: kill it
        address = wait_for(lambda: client.run_on_scheduler(_worker_of, x.name), 60,
                           "X to be processing on a worker")
        pid = client.run(os.getpid, workers=[address])[address]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: handle.futures[x.key].status == "error", 60, "Dask to give X up")
        out, err = other.communicate(timeout=120)  # the other process commits X
        assert "OUTCOME succeeded" in out, err
        assert handle.status() == {"cached": 1, "error": 1}  # X counted from its record
        results = handle.wait(timeout=60, progress=False)
    finally:
        if other.poll() is None:
            other.kill()
        other.communicate(timeout=60)
    assert results.state(x) == "cached" and results.value(x) == 7
    assert results.state(y) == "blocked", results.errors
    assert "Dask gave up on upstream lost_x" in results.errors[y.key]
    assert "KilledWorker" in results.errors[y.key]
    assert "run the graph again" in results.errors[y.key]
    assert ds.compute(y, store=store, cluster=client, progress=False).state(y) == "succeeded"
