"""Kill -9 of task subprocesses, workers and drivers; two drivers at once; cancel; timeout.

docs/design.md §10.  Real LocalClusters, real env subprocesses; executions are
counted by side effects (graphfixtures).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from graphfixtures import Cfg, count, lines
from helpers import wait_for

import dscheduler as ds
from dscheduler.envs.mount import mount_root
from dscheduler.store import atomic

FIXTURES = Path(__file__).with_name("graphfixtures.py")


@ds.task(version="1")
def victim(cfg: Any, case: str) -> dict[str, Any]:
    """In the env: the first execution waits to be killed; later ones finish at once."""
    import os
    import time

    with open(cfg.log, "a") as f:
        f.write(f"start {os.getpid()} {os.getppid()}\n")
    with open(cfg.log) as f:
        starts = sum(1 for line in f if line.startswith("start"))
    if starts == 1:
        time.sleep(cfg.sleep)
    return {"starts": starts}


def _first_start(log: str) -> tuple[int, int]:
    line = wait_for(lambda: next((x for x in lines(log) if x.startswith("start")), None),
                     what="the task to start")
    _, pid, ppid = line.split()
    return int(pid), int(ppid)


def _no_partials(directory: Path) -> None:
    leftovers = [p.name for p in directory.rglob("*") if ".partial" in p.name]
    assert not leftovers, leftovers


def test_kill9_task_subprocess_is_retried(cluster: Any, graph_store: ds.Store,
                                          tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    node = victim.options(retries=1)(Cfg(log=log, sleep=60), "c0")
    handle = ds.submit(node, store=graph_store, cluster=cluster)
    pid, _ = _first_start(log)
    os.kill(pid, signal.SIGKILL)
    results = handle.wait(timeout=120, progress=False)
    assert results.state(node) == "succeeded", results.errors
    assert results.value(node) == {"starts": 2} and count(log, "start") == 2
    record = results.record(node)
    assert record is not None
    first, second = record["attempts"]
    assert first["state"] == "failed" and first["exit_code"] == -9
    assert "killed by signal 9" in first["error"]
    assert second["state"] == "succeeded"
    _no_partials(node.paths(graph_store).dir)


def test_kill9_worker_is_rescheduled(cluster: Any, graph_store: ds.Store,
                                     tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    node = victim(Cfg(log=log, sleep=60, x=1), "c0")
    handle = ds.submit(node, store=graph_store, cluster=cluster)
    task_pid, worker_pid = _first_start(log)
    assert worker_pid in cluster.run(os.getpid).values()
    os.kill(worker_pid, signal.SIGKILL)
    try:
        results = handle.wait(timeout=120, progress=False)
        assert results.state(node) == "succeeded", results.errors
        record = results.record(node)
        assert record is not None
        first, second = record["attempts"]
        assert first["state"] == "failed" and "interrupted" in first["error"]
        assert first["pid"] == worker_pid and second["state"] == "succeeded"
        assert count(log, "start") == 2
        # The killed worker's task subprocess did not outlive it.
        wait_for(lambda: not _alive(task_pid), 10, "the orphaned task to exit")
        _no_partials(node.paths(graph_store).dir)
    finally:
        cluster.wait_for_workers(2, timeout=60)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _driver(store: Path, log: str, n: int, sleep: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(FIXTURES), str(store), log, str(n), str(sleep)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def _finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        _kill_group(proc)
    assert proc.returncode == 0, err[-3000:]
    return dict(json.loads(out.strip().splitlines()[-1]))


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _done_xs(store: Path) -> set[int]:
    """The `x` of every work node whose .done link exists."""
    out = set()
    for case in store.glob("runs/*/*/c0"):
        # a dangling symlink by design (its target is a key): lexists, not exists/glob
        if os.path.lexists(case / ".work.done"):
            out.add(json.loads((case.parent / "run.json").read_text())["config"]["x"])
    return out


def _per_x(log: str, word: str) -> Counter[int]:
    return Counter(int(x.split()[2]) for x in lines(log) if x.startswith(word + " "))


def test_driver_killed_midgraph_then_restarted(cluster: Any, tmp_path: Path) -> None:
    store, log = tmp_path / "data", str(tmp_path / "log")
    first = _driver(store, log, 8, 0.7)
    try:
        done_before = wait_for(lambda: len(_done_xs(store)) >= 2 and _done_xs(store), 120,
                                "two finished tasks")
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        _kill_group(first)  # its orphaned workers, if any
    outcome = _finish(_driver(store, log, 8, 0.7))
    assert outcome["states"]["cached"] >= len(done_before)
    starts, ends = _per_x(log, "start"), _per_x(log, "end")
    assert all(starts[x] == 1 for x in done_before), (done_before, starts)
    assert sorted(ends) == list(range(8)) and set(ends.values()) == {1}, ends
    assert count(log, "total") == 1


def test_two_drivers_at_once(cluster: Any, tmp_path: Path) -> None:
    store, log = tmp_path / "data", str(tmp_path / "log")
    a, b = _driver(store, log, 6, 0.3), _driver(store, log, 6, 0.3)
    outcomes = [_finish(a), _finish(b)]
    built: Counter[str] = Counter()
    for outcome in outcomes:
        assert sum(outcome["states"].values()) == 7, outcome
        for env_id, state in outcome["envs"].items():
            built[env_id] += state == "built"
    # Each env built once: by one driver, or found published by the other's plan.
    assert len(list((store / "envs").glob("*/env.json"))) == 2
    assert all(n <= 1 for n in built.values()), outcomes
    starts, ends = _per_x(log, "start"), _per_x(log, "end")
    assert set(starts.values()) == {1} and set(ends.values()) == {1} and len(ends) == 6
    assert count(log, "total") == 1


@ds.task(version="1")
def sleeper(cfg: Any, case: str) -> None:
    import os
    import time

    with open(cfg.log, "a") as f:
        f.write(f"start {os.getpid()} {os.getppid()}\n")
    time.sleep(cfg.sleep)


def test_cancel_kills_running_subprocess(cluster: Any, graph_store: ds.Store,
                                         tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    node = sleeper(Cfg(log=log, sleep=60), "c0")
    handle = ds.submit(node, store=graph_store, cluster=cluster)
    pid, _ = _first_start(log)
    assert handle.status().get("pending") == 1
    handle.cancel()
    wait_for(lambda: not _alive(pid), 10, "the task subprocess to be killed")
    paths = node.paths(graph_store)
    wait_for(lambda: (atomic.read_json(paths.record) or {}).get("state") == "cancelled",
              10, "the record to say cancelled")
    results = handle.wait(timeout=30, progress=False)
    assert results.state(node) == "cancelled"
    assert ds.plan(node, store=graph_store).reason(node) == "cancelled before"


def test_timeout_kills_the_task(cluster: Any, graph_store: ds.Store, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    node = sleeper.options(timeout=1)(Cfg(log=log, sleep=60), "c0")
    started = time.monotonic()
    results = ds.compute(node, store=graph_store, cluster=cluster, progress=False)
    assert time.monotonic() - started < 30
    assert results.state(node) == "failed"
    record = results.record(node)
    assert record is not None and "timed out after 1 s" in record["attempts"][0]["error"]
    pid = int(lines(log)[0].split()[1])
    wait_for(lambda: not _alive(pid), 5, "the timed-out task to be gone")


@pytest.mark.squashfs
def test_task_in_squashfs_env(cluster: Any, graph_store: ds.Store, tmp_path: Path) -> None:
    import shutil

    if shutil.which("mksquashfs") is None:
        pytest.skip("mksquashfs not installed (apt-get install squashfs-tools)")
    env = ds.Env(image="squashfs", requirements=[], offline=True, smoke_imports=[])

    @ds.task(version="1", env=env)
    def where(tag: str) -> dict[str, str]:
        import os
        import sys

        # What the kernel says is mounted at the prefix the task runs from.
        with open("/proc/self/mounts") as f:
            mounts = {line.split()[1]: line.split()[2] for line in f}
        return {"prefix": sys.prefix, "fstype": mounts.get(os.path.realpath(sys.prefix), "")}

    node = where("sq")
    results = ds.compute(node, store=graph_store, cluster=cluster, progress=False)
    results.raise_for_status()
    assert results.envs == {env.env_id: "built"}
    built = atomic.read_json(graph_store.env(env.env_id).record)
    assert built["kind"] == "squashfs"
    seen = results.value(node)
    # It ran from the image, mounted by the first backend that works here
    # (squashfuse, else a loop mount), at {mount root}/{backend}-{lock_id}/mnt.
    prefix = Path(seen["prefix"])
    assert prefix.name == "mnt" and prefix.parent.parent == mount_root()
    assert prefix.parent.name.endswith("-" + built["lock_digest"][:16])
    assert seen["fstype"] in ("fuse.squashfuse", "squashfs"), seen
