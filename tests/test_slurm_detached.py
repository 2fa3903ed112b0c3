"""Clusters that outlive drivers, and drivers that die: ``cluster up|down``, detach, kill -9.

docs/design.md §13.6-7.  Drivers are subprocesses; the graph's tasks
(graphfixtures' ``work``) leave a line per start, so executions are counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from graphfixtures import count, slow_nodes
from helpers import our_jobs, page_json, run, wait_for, wait_until_gone

import dscheduler as ds

pytestmark = pytest.mark.slurm

TESTS = Path(__file__).parent
CLI = str(Path(sys.executable).with_name("dscheduler"))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=180)


DETACHED_DRIVER = """
import sys
sys.path.insert(0, sys.argv[1])
import dscheduler as ds
from graphfixtures import slow_nodes
handle = ds.submit(slow_nodes(sys.argv[3]), store=sys.argv[2], cluster="store", detach=True)
print("submitted", handle.status(), flush=True)
"""


@pytest.fixture
def detached_store(tmp_path: Path) -> Iterator[ds.Store]:
    """A store whose detached cluster, if one is still up at the end, is stopped:
    ``cluster down``, then a kill of its process if it lives on (its jobs go with it)."""
    store = ds.Store(tmp_path / "data")
    yield store
    try:
        pid = int(json.loads(store.slurm_cluster_record.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return  # none up (the test's own `cluster down` stopped it)
    _cli("cluster", "down", "--store", str(store.root))
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def test_cluster_up_detach_a_new_driver_collects_cluster_down(
        slurm_available: str, node_dirs: Any, tmp_path: Path, detached_store: ds.Store) -> None:
    store = detached_store
    log = str(tmp_path / "log")
    up = _cli("cluster", "up", "--store", str(store.root), "-o", f"partition={slurm_available}",
              "-o", "cores=1", "-o", "memory=1GB", "-o", "max_jobs=2", "-o", "idle_timeout=2",
              "-o", "gpu.max_jobs=0")
    assert up.returncode == 0, up.stderr
    record = json.loads(store.slurm_cluster_record.read_text())
    assert record["address"] in up.stdout and record["pid"] > 0
    try:
        # The dscheduler page is on its dashboard from the start, before any submit.
        first = page_json(record["dashboard"])
        assert isinstance(first, dict), first  # 200, and JSON
        assert first["scheduler"] == record["address"] and first["graphs"] == []
        client = ds.connect(store)  # what a notebook does
        assert client.scheduler.address == record["address"]
        # A driver submits, detached, and exits while its graph runs.
        driver = subprocess.run([sys.executable, "-c", DETACHED_DRIVER, str(TESTS),
                                 str(store.root), log], capture_output=True, text=True,
                                timeout=120)
        assert driver.returncode == 0 and "submitted" in driver.stdout, driver.stderr
        assert count(log, "end") < 3  # gone before its graph finished
        ledger = store.slurm_jobs_record(record["cluster"])
        wait_for(lambda: json.loads(ledger.read_text())["jobs"], 60, "a job in the ledger")
        before = our_jobs()
        status = _cli("status", "--store", str(store.root))
        after = our_jobs()
        assert f"SLURM cluster {record['cluster']} (detached, pid {record['pid']}" in status.stdout
        # ... and its jobs, as squeue saw them: each job id of its ledger with its state
        jobs = json.loads(ledger.read_text())["jobs"]
        rows = {line.split()[0]: line.split() for line in status.stdout.splitlines()
                if line.split() and line.split()[0] in jobs}
        assert rows, status.stdout
        for job, row in rows.items():
            seen = {entry[0] if entry else "gone" for entry in (before.get(job), after.get(job))}
            assert row[1] == jobs[job]["kind"] and row[2] in seen, (job, row, seen, status.stdout)
        # A new driver sees those nodes running, waits for them and collects them.
        wait_for(lambda: count(log, "start") >= 1, 60, "a detached task to start")
        reasons = ds.plan(slow_nodes(log), store=store).reasons.values()
        assert any(r.startswith("in progress elsewhere (its lease is held)") for r in reasons)
        results = run(slow_nodes(log), store, "store")
        assert results.ok and len(results.states) == 3, results.errors
        assert count(log, "start") == 3 and count(log, "end") == 3  # nothing ran twice
        jobs = {r["attempts"][-1]["slurm_job_id"] for r in map(results.record, results.plan.nodes)
                if r is not None}
        assert None not in jobs
    finally:
        ds.connect(store).close()  # the notebook goes away first
        down = _cli("cluster", "down", "--store", str(store.root))
    assert down.returncode == 0, down.stderr
    assert f"stopped SLURM cluster {record['cluster']}" in down.stdout
    assert not store.slurm_cluster_record.exists() and store.slurm_jobs_records() == []
    wait_until_gone(jobs, 60)
    assert not any(record["cluster"] in name for _, name in our_jobs().values())
    wait_for(lambda: not _alive(record["pid"]), 30, "the cluster process to exit")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return False


KILLED_DRIVER = """
import sys, time
import dscheduler as ds

@ds.task(version="1", env=None)
def sleeper(i: int) -> int:
    import time
    time.sleep(300)
    return i

handle = ds.submit([sleeper(i) for i in range(int(sys.argv[2]) + 2)], store=sys.argv[1],
                   cluster="slurm")
print("submitted", flush=True)
time.sleep(600)
"""


def test_kill9_of_a_driver_leaves_no_job_in_the_queue(
        slurm_available: str, slurm_node_cpus: dict[str, int], tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "data")
    # Two one-core jobs more than the partition has CPUs (4 on the one-node cluster,
    # 8 on three 2-CPU nodes), and tasks for all: some jobs run, at least two wait.
    jobs = sum(slurm_node_cpus.values()) + 2
    env = {**os.environ, "DASK_DSCHEDULER__SLURM__PARTITION": slurm_available,
           "DASK_DSCHEDULER__SLURM__CORES": "1", "DASK_DSCHEDULER__SLURM__MEMORY": "1GB",
           "DASK_DSCHEDULER__SLURM__MAX_JOBS": str(jobs)}
    driver = subprocess.Popen([sys.executable, "-c", KILLED_DRIVER, str(store.root),
                               str(jobs)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              start_new_session=True)
    try:
        def running_and_pending() -> dict[str, str] | None:
            records = store.slurm_jobs_records()
            if not records:
                return None
            ids = set(json.loads(records[0].read_text())["jobs"])
            states = {j: s for j, (s, _) in our_jobs().items() if j in ids}
            seen = set(states.values())
            return states if {"RUNNING", "PENDING"} <= seen else None

        states = wait_for(running_and_pending, 120, "running and pending jobs")
        ledger = json.loads(store.slurm_jobs_records()[0].read_text())
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and everything in its group
        driver.wait(timeout=30)
        took = wait_until_gone(set(states), 120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    print(f"{len(states)} jobs ({sorted(states.values())}) left the queue {took:.1f} s "
          "after the driver's kill -9")
    # Well before the workers' own death timeout (60 s), which pending jobs never reach:
    # the reaper cancelled them.
    assert took < 45, took
    assert not any(name in ledger["names"] for _, name in our_jobs().values())
    assert store.slurm_jobs_records() == []  # the reaper removed the ledger after cancelling


def test_the_next_command_cancels_the_jobs_of_a_dead_driver(slurm_available: str,
                                                            tmp_path: Path) -> None:
    """A driver and its reaper both gone (a rebooted login node): ``status`` cleans up."""
    store = ds.Store(tmp_path / "data").ensure()
    name = "dscheduler-cpu-deadbeef"
    held = subprocess.run(["sbatch", "--parsable", "--hold", "-p", slurm_available, "-J", name,
                           "-o", f"{tmp_path}/held-%j.out", "-t", "5", "--wrap", "sleep 300"],
                          capture_output=True, text=True, check=True, timeout=60)
    job = held.stdout.strip().split(";")[0]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ledger = {"cluster": "deadbeef", "kind": "driver", "host": socket.gethostname(),
              "pid": dead.pid, "started": time.time(), "address": None, "beat": time.time(),
              "names": [name], "jobs": {job: {"kind": "cpu", "name": "cpu-0"}}}
    store.slurm_jobs_record("deadbeef").parent.mkdir(parents=True)
    store.slurm_jobs_record("deadbeef").write_text(json.dumps(ledger))
    try:
        assert our_jobs()[job][0] == "PENDING"  # held: it would never start a worker
        status = _cli("status", "--store", str(store.root))
        assert status.returncode == 0, status.stderr
        assert f"cancelled SLURM jobs {job} of cluster deadbeef" in status.stdout
        wait_until_gone({job}, 30)
        assert store.slurm_jobs_records() == []
    finally:
        subprocess.run(["scancel", job], check=False, timeout=30)
