"""The store index under many processes at once, compaction racing them, and kill -9.

Run as a script, this file is a worker of its own: ``run STORE LOG N SEED
[force] [sleep]`` runs the nodes ``step(0..N-1)`` in a shuffled order through
``run_node`` (no cluster), ``compact STORE SECONDS`` compacts in a loop.
Segments rotate every 0.5 s and compaction seals them after 3 s, so
rotation, sealing and folding all happen while entries are written.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dask.config
import pytest
from helpers import wait_for

import dscheduler as ds
from dscheduler.run.execute import run_node
from dscheduler.run.nodespec import make_specs
from dscheduler.store.state import Reason

FAST_INDEX = {
    "DASK_DSCHEDULER__INDEX__SEGMENT_SECONDS": "0.5",
    "DASK_DSCHEDULER__INDEX__SEAL_AFTER": "3",
    "DASK_DSCHEDULER__INDEX__COMPACT_BYTES": "0",
}


@ds.task(version="1")
def step(i: int, log: str) -> dict[str, int]:
    with open(log, "a") as f:
        f.write(f"start {i}\n")
    time.sleep(float(os.environ.get("STEP_SLEEP", "0")))
    if os.environ.get("STEP_HANG") == str(i):
        time.sleep(3600)  # killed here
    with open(log, "a") as f:
        f.write(f"end {i}\n")
    return {"i": i}


def graph(n: int, log: str) -> list[ds.Node]:
    return [step(i, log) for i in range(n)]


def count(log: str, word: str) -> dict[int, int]:
    out: dict[int, int] = {}
    try:
        text = Path(log).read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        what, _, i = line.partition(" ")
        if what == word:
            out[int(i)] = out.get(int(i), 0) + 1
    return out


def finished_truth(store: ds.Store, nodes: list[ds.Node]) -> set[str]:
    out = set()
    for node in nodes:
        try:
            if os.readlink(node.paths(store).done) == node.key:
                out.add(node.key)
        except OSError:
            pass
    return out


def finished_index(store: ds.Store, nodes: list[ds.Node]) -> set[str]:
    view = store.index.load()
    return {n.key for n in nodes if view.finished(store.node_id(n.paths(store)), n.key)}


def worker(argv: list[str]) -> None:
    command, root = argv[0], argv[1]
    store = ds.Store(root)
    if command == "compact":
        end = time.time() + float(argv[2])
        while time.time() < end:
            store.index.compact()
            time.sleep(0.05)
        return
    log, n, seed = argv[2], int(argv[3]), int(argv[4])
    force = len(argv) > 5 and argv[5] == "force"
    nodes = graph(n, log)
    p = ds.plan(nodes, store=store, force=force)
    specs = make_specs(p, f"proc-{os.getpid()}")
    order = list(p.to_run)
    random.Random(seed).shuffle(order)
    for node in order:
        run_node(specs[node.key])


@pytest.fixture(autouse=True)
def same_index_settings() -> Iterator[None]:
    """This process writes index entries too (a plan restores missed ones), so it uses
    the workers' index settings: every process sharing a store must (a compactor seals
    segments older than its ``seal_after``, which writers leave well before)."""
    with dask.config.set({f"dscheduler.index.{k.rsplit('__', 1)[1].lower()}": float(v)
                          for k, v in FAST_INDEX.items()}):
        yield


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, *args],
                            env={**os.environ, **FAST_INDEX, **(env or {})})


def test_many_processes_finish_tasks_at_once(tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "data").ensure()
    log, n = str(tmp_path / "log"), 120
    nodes = graph(n, log)
    compactor = spawn("compact", str(store.root), "8")
    # Four writers over the same nodes in different orders: every node is
    # contended, each must run once, entries land in four segments at once.
    procs = [spawn("run", str(store.root), log, str(n), str(seed),
                   env={"STEP_SLEEP": "0.01"}) for seed in range(4)]
    for proc in procs:
        assert proc.wait(timeout=240) == 0
    assert compactor.wait(timeout=60) == 0
    assert count(log, "end") == dict.fromkeys(range(n), 1)
    truth = finished_truth(store, nodes)
    assert len(truth) == n
    assert finished_index(store, nodes) == truth
    assert ds.plan(nodes, store=store).nothing_to_do
    assert store.index.compact()
    assert finished_index(store, nodes) == truth


def test_kill9_mid_update_then_plan_is_right(tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "data").ensure()
    log, n = str(tmp_path / "log"), 40
    nodes = graph(n, log)
    spawn("run", str(store.root), log, str(n), "0").wait(timeout=120)
    rng = random.Random(7)
    for round_ in range(6):
        # Forced reruns killed with kill -9: in the first rounds while one node's
        # function runs (its stored result already dropped), then at any moment.
        hang = rng.randrange(n) if round_ < 3 else -1
        started = sum(count(log, "start").values())
        proc = spawn("run", str(store.root), log, str(n), str(round_), "force",
                     env={"STEP_SLEEP": "0.002", "STEP_HANG": str(hang)})
        if hang >= 0:
            before = count(log, "start").get(hang, 0)
            wait_for(lambda: count(log, "start").get(hang, 0) > before, 120,  # noqa: B023
                     f"node {hang} to start", interval=0.005)
        else:
            wait_for(lambda: sum(count(log, "start").values()) > started, 120,  # noqa: B023
                     "a node to start", interval=0.005)
            time.sleep(rng.uniform(0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        truth = finished_truth(store, nodes)
        assert finished_index(store, nodes) <= truth  # never finished when it is not
        p = ds.plan(nodes, store=store)
        assert {node.key for node in p.cached} == truth
        interrupted = {node.key for node in p.to_run if p.reason(node) == Reason.INTERRUPTED}
        if hang >= 0:
            assert nodes[hang].key in interrupted
        assert len(interrupted) <= round_ + 1  # one per kill at most, until rerun
    spawn("run", str(store.root), log, str(n), "9").wait(timeout=120)
    assert ds.plan(nodes, store=store).nothing_to_do
    assert finished_index(store, nodes) == finished_truth(store, nodes)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import test_index_processes

    test_index_processes.worker(sys.argv[1:])
