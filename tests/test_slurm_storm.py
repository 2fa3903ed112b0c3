"""A scancel storm on real SLURM (one node or three): workers lost with their jobs are not failures.

docs/design.md §5.6, §13.3: a job cancelled (or preempted, or past its walltime) takes its
worker and the tasks it held; Dask reschedules them, the next attempt breaks the dead
attempt's lease and records it interrupted, and every node ends ``succeeded``, committed once.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from distributed import wait
from helpers import our_jobs, wait_until_gone

import dscheduler as ds
from dscheduler.run.slurm.jobs import job_label
from dscheduler.store.lease import read_lease
from dscheduler.store.record import FAILED, SUCCEEDED
from dscheduler.store.records import read_node

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TASKS = 24
CANCELS = 7
EVERY = 6.0  # seconds between two cancels


@ds.task(version="1", env=None, name="storm_nap")
def nap(i: int, log: str) -> int:
    """Two seconds of work; says when it finished, and where."""
    import os
    import time

    time.sleep(2)
    with open(log, "a") as f:
        f.write(f"{i} {os.getpid()} {os.environ.get('SLURM_JOB_ID')}\n")
    return i * i


def _storm(cluster: Any, handle: ds.Handle) -> list[str]:
    """scancel one running job of ``cluster`` every EVERY seconds, CANCELS times (fewer if
    the graph finishes first, or after 150 s); the job ids cancelled.

    The job cancelled is one running a node (holding its lease) whenever one does within
    EVERY more seconds, else any running job: so that cancels hit running tasks whatever
    the cluster's shape (one node, or several where a new job starts at once elsewhere).
    Every other cancel is a SIGKILL (``scancel -s KILL``: a node failure, the end of a
    preemption's grace time), the others SLURM's own SIGTERM, then SIGKILL after KillWait
    (a plain scancel, a preemption, a walltime)."""
    label = job_label(cluster.options, "cpu", cluster.cluster_id)
    cancelled: list[str] = []
    deadline = time.monotonic() + 150
    while len(cancelled) < CANCELS and time.monotonic() < deadline:
        time.sleep(EVERY)
        job = _victim(label, cluster.store, handle, time.monotonic() + EVERY)
        if job is None:
            break  # the graph finished
        if job:
            kill = ["-s", "KILL"] if len(cancelled) % 2 else []
            subprocess.run(["scancel", *kill, job], check=True, timeout=30)
            cancelled.append(job)
    return cancelled


def _victim(label: str, store: ds.Store, handle: ds.Handle, until: float) -> str | None:
    """A running job of ``label`` that holds a node's lease, polled until ``until``; then
    any running one ("" if none runs); None once the graph has finished."""
    while True:
        if all(f.done() for f in handle.futures.values()):
            return None
        running = sorted((job for job, (state, name) in our_jobs().items()
                          if name == label and state == "RUNNING"), key=int)
        busy = [job for job in running if job in _busy_jobs(store)]
        if busy or time.monotonic() > until:
            return (busy or running or [""])[0]
        time.sleep(0.2)


def _busy_jobs(store: ds.Store) -> set[str]:
    """The jobs running a node now: their ids, from the node leases they hold."""
    leases = (read_lease(path) for path in store.locks_dir.glob("node-*.lease"))
    return {str(info["slurm_job_id"]) for info in leases
            if info is not None and info.get("slurm_job_id")}


def _succeeded_seqs(store: ds.Store) -> dict[str, set[int]]:
    """The ``seq`` of every "succeeded" entry of the index's segments, by node key (the
    driver appends the workers' entries again: a set)."""
    seqs: dict[str, set[int]] = {}
    for segment in (store.root / "index" / "segments").glob("*.log"):
        for line in segment.read_text().splitlines():
            _path, seq, state, key, _summary = json.loads(line)
            if state == SUCCEEDED:
                seqs.setdefault(key, set()).add(seq)
    return seqs


def test_scancel_storm_ends_with_every_node_succeeded_once(
        slurm_available: str, tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "data")
    log = str(tmp_path / "log")
    nodes = [nap(i, log) for i in range(TASKS)]
    cluster = ds.slurm_cluster(store, partition=slurm_available, cores=1, memory="1GB",
                               max_jobs=2, walltime="00:15:00", idle_timeout=2, interval=0.5)
    try:
        start = time.monotonic()
        handle = ds.submit(nodes, store=store, cluster=cluster)
        cancelled = _storm(cluster, handle)
        wait(list(handle.futures.values()), timeout=240)
        # task.lost_workers reached the scheduler: Dask gave no task up (KilledWorker)
        erred = [key for key, f in handle.futures.items() if f.status == "error"]
        results = handle.wait(timeout=60, progress=False)
        took = time.monotonic() - start
    finally:
        cluster.close()
    wait_until_gone(set(cluster.history), 60)
    assert not [job for job, (_, name) in our_jobs().items() if cluster.cluster_id in name]
    print(f"{TASKS} tasks, {len(cancelled)} jobs cancelled, {took:.1f} s; "
          f"{len(cluster.history)} jobs submitted; {len(erred)} futures erred; "
          f"{results.counts()}")
    assert len(cancelled) >= 3, cancelled  # a storm, not a breeze
    assert results.counts() == {"succeeded": TASKS}, results.errors
    assert not erred, erred
    interrupted = 0
    seqs = _succeeded_seqs(store)
    for i, node in enumerate(nodes):
        record = read_node(node.paths(store).record)
        assert record is not None and record.state == SUCCEEDED, node.name
        states = [a.state for a in record.attempts]
        # committed once: one succeeded attempt, the last; every earlier one interrupted
        assert states == [FAILED] * (len(states) - 1) + [SUCCEEDED], (node.name, states)
        assert [a.attempt for a in record.attempts] == list(range(1, len(states) + 1))
        assert all("interrupted" in (a.error or "") for a in record.attempts[:-1])
        # and in the index: its commit's entry has the record's seq, and no succeeded
        # entry is older (one above it is a rerun that found the result stored)
        assert min(seqs[node.key]) == record.seq, (node.name, seqs[node.key], record.seq)
        interrupted += len(states) - 1
        assert results.value(node) == i * i
    finished = [line.split() for line in Path(log).read_text().splitlines()]
    assert {int(i) for i, *_ in finished} == set(range(TASKS))
    assert interrupted >= 1, "no cancel hit a running task"
