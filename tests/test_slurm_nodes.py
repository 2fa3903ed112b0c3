"""SLURM on several nodes: envs, records, node-local caches, leases, detached clusters.

The multi-node cluster of ``ci/slurm/up`` (DSCHEDULER_SLURM_NODES=3, docs/design.md §9):
nodes dsn1..dsn3, each with its own network, hostname, /tmp, mounts and pids, joined to
the host by a bridge.  The stores are under pytest's temporary root, which every node
sees (tests/conftest.py); node-local directories are the nodes' own (their /tmp).  A
test reads a node's files through ``/proc/{its pid 1}/root`` and runs code on it with
``nsenter``.  Every test ends with none of its jobs in ``squeue``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.config
import psutil
import pytest
from graphfixtures import Cfg, count, work
from helpers import our_jobs, run, wait_for, wait_until_gone

import dscheduler as ds

pytestmark = pytest.mark.slurm

TESTS = Path(__file__).parent
CLI = str(Path(sys.executable).with_name("dscheduler"))
UID = os.getuid()
#: node_dirs (tests/wheelhouse.py) points these at one shared directory: not here
NODE_LOCAL = ("env.uv_cache", "env.scratch", "mount.root")
#: one 2-core job per 2-CPU node: three jobs are on three nodes
THREE_NODES = {"cores": 2, "memory": "1GB", "max_jobs": 3, "min_jobs": 3,
               "walltime": "00:15:00", "idle_timeout": 2, "interval": 0.5,
               "gpu": {"max_jobs": 0}}


@pytest.fixture(scope="module")
def nodes(slurm_nodes: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The multi-node cluster's description, with this module's SLURM commands and
    clusters on it (SLURM_CONF, Dask's interface) and node-local dirs left to the nodes."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", slurm_nodes["slurm_conf"])
        mp.setenv("DASK_DSCHEDULER__SLURM__INTERFACE", slurm_nodes["interface"])
        for key in NODE_LOCAL:
            mp.delenv("DASK_DSCHEDULER__" + key.upper().replace(".", "__"), raising=False)
        with dask.config.set({**{f"dscheduler.{key}": None for key in NODE_LOCAL},
                              "dscheduler.slurm.interface": slurm_nodes["interface"]}):
            yield slurm_nodes


# -- a node seen from the host ------------------------------------------------------------


def init_pid(node: str) -> int:
    """The host's pid of the node's pid 1 (``dsnode-init NODE``, ci/slurm/up)."""
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] != "dsnode-init" or cmdline[2:3] != [node]:
            continue
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{proc.pid}/status").read_text()
            nspid = [line.split()[-1] for line in status.splitlines()
                     if line.startswith("NSpid:")]
            if nspid == ["1"]:
                return proc.pid
    raise AssertionError(f"node {node} is not running (no dsnode-init {node})")


def node_tmp(node: str) -> Path:
    """The node's own /tmp, read from the host."""
    return Path(f"/proc/{init_pid(node)}/root/tmp")


def in_node(node: str, *argv: str) -> list[str]:
    """A command line that runs ``argv`` on ``node`` (its network, name, mounts and pids)."""
    return ["nsenter", "-t", str(init_pid(node)), "-n", "-u", "-m", "-p", "--", *argv]


def attempts(results: ds.Results, node: ds.Node) -> list[dict[str, Any]]:
    record = results.record(node)
    assert record is not None, node.name
    return list(record["attempts"])


def _build_starts(dask_scheduler: Any) -> dict[str, int]:
    """Run on the scheduler: how many times each env build task was sent to a worker."""
    starts: dict[str, int] = {}
    for key, _start, finish, *_ in dask_scheduler.transition_log:
        if str(key).startswith("build_env-") and finish == "processing":
            starts[str(key)] = starts.get(str(key), 0) + 1
    return starts


# -- two envs over three nodes -----------------------------------------------------------


def on_node(i: int, log: str) -> dict[str, Any]:
    """Runs in its env, mounted on the node: where it ran, and from what."""
    import os
    import sys

    try:
        import dstest_app as module
    except ImportError:
        import dstest_base as module
    time.sleep(1.5)
    host = socket.gethostname()
    with open(log, "a") as f:
        f.write(f"start {host} {i} {module.__name__}\n")
    return {"i": i, "host": host, "module": module.__name__, "prefix": sys.prefix,
            "mounted": os.path.ismount(sys.prefix)}


@pytest.mark.squashfs
@pytest.mark.timeout(900)
def test_two_envs_built_once_and_mounted_on_each_node_that_runs_them(
        nodes: dict[str, Any], wheelhouse: Path, tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "data")
    log = str(tmp_path / "log")
    envs = {name: ds.Env(requirements=[req], find_links=[wheelhouse], offline=True,
                         image="squashfs")
            for name, req in (("app", "dstest-app"), ("base", "dstest-base==1.1"))}
    tasks = {name: ds.task(version="1", env=env, name=f"on_node_{name}")(on_node)
             for name, env in envs.items()}
    graph = [tasks[name](i, log) for i in range(8) for name in envs]
    with ds.slurm_cluster(store, **THREE_NODES) as cluster:
        assert cluster.scheduler_address.split("://")[1].startswith(nodes["host"] + ":")
        cluster.client.wait_for_workers(3, timeout=300)
        workers = list(cluster.client.scheduler_info()["workers"])
        # workers reach each other: data made on one node is fetched by another (both
        # tasks are bound to their worker)
        made = cluster.client.submit(os.urandom, 2**20, workers=workers[:1], pure=False)
        fetched = cluster.client.submit(len, made, workers=workers[1:2], pure=False)
        assert fetched.result(timeout=120) == 2**20
        del made, fetched
        results = run(graph, store, cluster, timeout=400)
        started = cluster.client.run_on_scheduler(_build_starts)
        jobs = set(cluster.history)
    wait_until_gone(jobs, 120)
    assert results.counts() == {"succeeded": 16}, results.errors
    assert sorted(results.envs.values()) == ["built", "built"]
    address_node = {address: name for name, address in nodes["nodes"].items()}

    def node_of(worker: str) -> str:
        return address_node[worker.split("://")[1].rsplit(":", 1)[0]]

    # Workers on three nodes (one 2-core job per 2-CPU node), tasks on at least two.
    assert sorted(node_of(w) for w in workers) == sorted(nodes["nodes"]), workers
    values = [results.value(n) for n in graph]
    ran_on = {v["host"] for v in values}
    assert ran_on <= set(nodes["nodes"]) and len(ran_on) >= 2, values
    assert sorted(line.split()[1] for line in Path(log).read_text().splitlines()) == \
        sorted(v["host"] for v in values)  # each task ran once
    # Records name the real node of each attempt: SLURM's node name and the hostname.
    for node, value in zip(graph, values, strict=True):
        [attempt] = attempts(results, node)
        assert attempt["slurm_node"] == attempt["host"] == value["host"], (attempt, value)
    # Each env was built once across all nodes: its build task sent once, one builder's
    # header in its build log (naming the builder's node), one install.
    assert started == {f"build_env-{env.env_id}": 1 for env in envs.values()}, started
    for name, env in envs.items():
        build_log = store.env(env.env_id).log.read_text()
        assert build_log.count("== install") == 1, build_log
        [builder] = re.findall(rf"env {env.env_id} \(\S+\) on (\S+), pid", build_log)
        assert builder in nodes["nodes"], build_log
        # node-local caches are the builder's own: its uv cache in its /tmp
        uv_cache = node_tmp(builder) / f"dscheduler-uv-cache-{UID}"
        assert uv_cache.is_dir() and any(uv_cache.iterdir()), (name, builder)
    # Each env's image was mounted on every node that ran one of its tasks, under that
    # node's own /tmp (another filesystem than the host's), and only there.
    host_tmp = os.stat("/tmp").st_dev
    for name in envs:
        mine = [v for v in values if v["module"] == f"dstest_{name}"]
        assert len(mine) == 8 and all(v["mounted"] for v in mine), mine
        assert all(v["prefix"].startswith(f"/tmp/dscheduler-mounts-{UID}/") for v in mine)
        for host in {v["host"] for v in mine}:
            root = node_tmp(host) / f"dscheduler-mounts-{UID}"
            assert os.stat(root).st_dev != host_tmp
            lock = Path(mine[0]["prefix"]).parent.name + ".lock"  # {backend}-{id}/mnt
            assert (root / lock).is_file(), (host, sorted(p.name for p in root.iterdir()))
            assert (node_tmp(host) / f"dscheduler-workers-{UID}").is_dir()
    host_mounts = Path("/proc/mounts").read_text()
    for prefix in {v["prefix"] for v in values}:
        assert prefix not in host_mounts  # a node's mount is not the host's
    assert not set(our_jobs()) & jobs


# -- a lease held on one node, judged on another -----------------------------------------

HOLDER = """
import json, sys
from dscheduler.store.lease import Lease, read_lease
lease = Lease(sys.argv[1], ttl=float(sys.argv[2])).acquire(timeout=30)
print(json.dumps(read_lease(lease.path)), flush=True)
sys.stdin.read()  # hold until the test closes our stdin
lease.release()
"""

JUDGE = """
import json, sys
from dscheduler.errors import LeaseTimeout
from dscheduler.store.lease import Lease, holder_gone, lease_held, process_alive, read_lease
info = read_lease(sys.argv[1])
verdict = {"alive_here": process_alive(int(info["pid"])), "gone": holder_gone(info),
           "held": lease_held(sys.argv[1])}
lease = Lease(sys.argv[1], ttl=float(sys.argv[2]), poll=0.2, break_dead_local=True)
try:
    lease.acquire(timeout=float(sys.argv[3]))
    verdict["taken"] = True
    lease.release()
except LeaseTimeout:
    verdict["taken"] = False
print(json.dumps(verdict), flush=True)
"""


def _judge(node: str, path: Path, ttl: float, wait: float) -> dict[str, Any]:
    done = subprocess.run(in_node(node, sys.executable, "-c", JUDGE, str(path), str(ttl),
                                  str(wait)), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def _holder(node: str, path: Path, ttl: float) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(in_node(node, sys.executable, "-c", HOLDER, str(path), str(ttl)),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def test_a_lease_held_on_one_node_is_not_judged_by_pid_on_another(
        nodes: dict[str, Any], tmp_path: Path) -> None:
    one, other = sorted(nodes["nodes"])[:2]
    path = tmp_path / "node.lease"
    ttl = 20.0
    holder, info = _holder(one, path, ttl)
    try:
        # Its pid is the holder's in its node's pid namespace: a pid no process of the
        # other node has (pids there are few), so a judge by pid would call it dead.
        tries = 0
        while True:
            verdict = _judge(other, path, ttl, wait=3 * 0.2 + 2)
            if not verdict["alive_here"] or tries == 5:
                break
            tries += 1  # the same pid lives there by chance: another holder, another pid
            holder.stdin.close()  # type: ignore[union-attr]
            holder.wait(timeout=30)
            holder, info = _holder(one, path, ttl)
        assert info["host"] == one and not verdict["alive_here"], (info, verdict)
        # On the other node the lease is held (fresh heartbeat, another host): not gone,
        # and a waiter that breaks dead local holders waits instead of breaking it.
        assert verdict == {"alive_here": False, "gone": False, "held": True, "taken": False}
        assert json.loads(path.read_text())["token"] == info["token"]  # untouched
        # On its own node, the same lease whose holder is killed is gone at once.
        [python] = psutil.Process(holder.pid).children()  # nsenter's child: the holder
        python.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        wait_for(lambda: _judge(one, path, ttl, wait=0)["taken"], 60,
                 "the dead holder's lease to be broken on its own node")
    finally:
        with contextlib.suppress(OSError):
            holder.stdin.close()  # type: ignore[union-attr]
        with contextlib.suppress(subprocess.TimeoutExpired):
            holder.wait(timeout=30)


# -- a detached cluster with workers on several nodes -----------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300)


DETACHED_DRIVER = """
import sys
sys.path.insert(0, sys.argv[1])
import dscheduler as ds
from graphfixtures import Cfg, work
nodes = [work(Cfg(flavor="ab"[i % 2], x=i, log=sys.argv[3], sleep=2.0), "c0") for i in range(9)]
handle = ds.submit(nodes, store=sys.argv[2], cluster="store", detach=True)
print("submitted", flush=True)
"""


def _graph(log: str) -> list[ds.Node]:
    """The detached driver's graph: the same keys here."""
    return [work(Cfg(flavor="ab"[i % 2], x=i, log=log, sleep=2.0), "c0") for i in range(9)]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.timeout(900)
def test_cluster_up_detach_and_down_with_workers_on_several_nodes(
        nodes: dict[str, Any], tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "data")
    log = str(tmp_path / "log")
    options = [arg for key, value in THREE_NODES.items() if key != "gpu"
               for arg in ("-o", f"{key}={value}")]
    up = _cli("cluster", "up", "--store", str(store.root), *options, "-o", "gpu.max_jobs=0",
              "-o", f"interface={nodes['interface']}")
    assert up.returncode == 0, up.stderr
    record = json.loads(store.slurm_cluster_record.read_text())
    jobs: set[str] = set()
    try:
        assert record["address"].split("://")[1].startswith(nodes["host"] + ":"), record
        driver = subprocess.run([sys.executable, "-c", DETACHED_DRIVER, str(TESTS),
                                 str(store.root), log], capture_output=True, text=True,
                                timeout=180)
        assert driver.returncode == 0 and "submitted" in driver.stdout, driver.stderr
        # the driver is gone; a new one collects the graph as it finishes
        results = run(_graph(log), store, "store", timeout=500)
        assert results.ok and len(results.states) == 9, results.errors
        assert count(log, "start") == 9 and count(log, "end") == 9  # nothing ran twice
        ran = [attempts(results, n)[-1] for n in _graph(log)]
        jobs = {str(a["slurm_job_id"]) for a in ran}
        on = {a["slurm_node"] for a in ran}
        assert on <= set(nodes["nodes"]) and len(on) >= 2, ran
        assert all(a["host"] == a["slurm_node"] for a in ran), ran
        ledger = json.loads(store.slurm_jobs_record(record["cluster"]).read_text())
        jobs |= set(ledger["jobs"])
    finally:
        with contextlib.suppress(Exception):
            ds.connect(store).close()
        down = _cli("cluster", "down", "--store", str(store.root))
        if _alive(record["pid"]):
            wait_for(lambda: not _alive(record["pid"]), 60, "the cluster process to exit")
    assert down.returncode == 0, down.stderr
    assert f"stopped SLURM cluster {record['cluster']}" in down.stdout
    assert not store.slurm_cluster_record.exists() and store.slurm_jobs_records() == []
    wait_until_gone(jobs, 120)
    assert not any(record["cluster"] in name for _, name in our_jobs().values())


# -- a node killed mid-graph -------------------------------------------------------------


@ds.task(version="1", env=None)
def slow_on_node(i: int, log: str, sleep: float) -> dict[str, Any]:
    """Runs in the worker: 'start HOST i' and 'end HOST i' around a sleep."""
    host = socket.gethostname()
    with open(log, "a") as f:
        f.write(f"start {host} {i}\n")
    time.sleep(sleep)
    with open(log, "a") as f:
        f.write(f"end {host} {i}\n")
    return {"i": i, "host": host}


def _lines(log: str, what: str) -> list[tuple[str, int]]:
    """(host, i) of the 'start' or 'end' lines of ``log``."""
    with contextlib.suppress(FileNotFoundError):
        return [(w[1], int(w[2])) for w in (line.split() for line in Path(log).read_text()
                                             .splitlines()) if w and w[0] == what]
    return []


def _running(log: str) -> dict[str, set[int]]:
    """host -> tasks started there and not ended there."""
    ended = set(_lines(log, "end"))
    running: dict[str, set[int]] = {}
    for host, i in _lines(log, "start"):
        if (host, i) not in ended:
            running.setdefault(host, set()).add(i)
    return running


def _namespace_members(kind: str, inode: str) -> list[int]:
    """Pids of the processes in the ``kind`` namespace ``inode`` (as ``os.readlink`` shows)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / kind) == inode:
                    found.append(int(entry.name))
    return found


def _restart_nodes() -> None:
    """ci/slurm/up again: a killed node comes back (its pid 1, mounts and slurmd)."""
    up = TESTS.parent / "ci" / "slurm" / "up"
    env = {k: v for k, v in os.environ.items() if k != "DSCHEDULER_TEST_SPAWNED_BY"}
    done = subprocess.run([str(up)], env={**env, "DSCHEDULER_SLURM_NODES": "3"},
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.timeout(900)
def test_a_node_killed_mid_graph_its_tasks_run_again_on_the_others(
        nodes: dict[str, Any], tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "data")
    log = str(tmp_path / "log")
    graph = [slow_on_node(i, log, 20.0) for i in range(12)]
    # A lost worker is noticed at once (its sockets close with it); its nodes' leases,
    # whose holder is on another host, are broken once stale: after 15 s.
    with dask.config.set({"dscheduler.task.lease_ttl": 15}), \
            ds.slurm_cluster(store, **THREE_NODES) as cluster:
        cluster.client.wait_for_workers(3, timeout=300)
        handle = ds.submit(graph, store=store, cluster=cluster)
        # the victim: a node where a task ended and another runs, with its "running"
        # record written (a task killed before that, running_record_after, holds its node
        # by its directory alone and is listed without its node: docs/design.md §7)
        def recorded(i: int) -> bool:
            return graph[i].paths(store).record.exists()

        def victim_node() -> str | None:
            ended = {host for host, _ in _lines(log, "end")}
            return next((h for h, running in _running(log).items()
                         if h in ended and any(recorded(i) for i in running)), None)

        victim = wait_for(victim_node, 300, "a node with a task ended and one running")
        finished = set(_lines(log, "end"))
        pid = init_pid(victim)
        namespaces = {kind: os.readlink(f"/proc/{pid}/ns/{kind}") for kind in ("pid", "mnt")}
        with_record = {i for i in _running(log).get(victim, set()) if recorded(i)}
        os.kill(pid, signal.SIGKILL)  # pid 1 of its namespace: every process of the node
        cut = _running(log).get(victim, set())
        for kind, inode in namespaces.items():  # all its processes, and its mounts, gone
            wait_for(lambda k=kind, i=inode: not _namespace_members(k, i), 60,
                     f"the {kind} namespace of {victim} to empty")
        results = handle.wait(timeout=500, progress=False)
        assert cut and with_record  # the victim had tasks running, past their first moment
        victim_jobs = {str(attempts(results, graph[i])[0]["slurm_job_id"]) for i in with_record}
        # SLURM finds the node dead (SlurmdTimeout) and its job leaves the queue, while
        # the cluster still runs (closing it would cancel every job anyway)
        wait_until_gone(victim_jobs, 240)
        history = set(cluster.history)
    try:
        assert results.counts() == {"succeeded": 12}, results.errors
        ends = _lines(log, "end")
        assert sorted(i for _, i in ends) == list(range(12))  # each task finished once
        assert finished <= set(ends)  # nothing finished before the kill ran again
        assert all(sum(1 for _, j in _lines(log, "start") if j == i) == 1
                   for _, i in finished), _lines(log, "start")
        for i in cut:  # each task cut short ran again on another node
            first, *_, last = attempts(results, graph[i])
            assert first["state"] == "failed", first
            if i in with_record:
                assert first["slurm_node"] == victim, first
            else:  # killed within its first moment: only its directory told of it
                assert "left neither lease nor record" in first["error"], first
            assert last["state"] == "succeeded" and last["slurm_node"] != victim, last
            assert results.value(graph[i])["host"] != victim
        wait_until_gone(history, 120)
    finally:
        _restart_nodes()


# -- a node cut off for longer than a lease ttl ------------------------------------------


@ds.task(version="1", env=None)
def stall_once(log: str, flag: str) -> dict[str, Any]:
    """The first attempt stalls until ``flag`` exists, every later one returns at once."""
    host = socket.gethostname()
    first = not Path(log).exists()
    with open(log, "a") as f:
        f.write(f"start {host} 0\n")
    while first and not Path(flag).exists():
        time.sleep(0.2)
    with open(log, "a") as f:
        f.write(f"end {host} 0\n")
    return {"host": host, "first": first}


def _signal_node(node: str, sig: int) -> list[int]:
    """``sig`` to the Python processes of ``node`` (its workers and their nannies);
    their pids."""
    inode = os.readlink(f"/proc/{init_pid(node)}/ns/pid")
    pids = []
    for pid in _namespace_members("pid", inode):
        with contextlib.suppress(OSError):
            if b"python" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, sig)
                pids.append(pid)
    return pids


@pytest.mark.timeout(900)
def test_a_node_cut_off_longer_than_a_lease_never_replaces_the_new_result(
        nodes: dict[str, Any], tmp_path: Path) -> None:
    """The store is a local path here, so a cut link alone would not stop the holder's
    heartbeats: the cut node's workers are also stopped (SIGSTOP), as a node cut off
    from a network store would be, and resumed when the link comes back."""
    store = ds.Store(tmp_path / "data")
    log, flag = str(tmp_path / "log"), str(tmp_path / "flag")
    node = stall_once(log, flag)
    config = {"dscheduler.task.lease_ttl": 10, "distributed.scheduler.worker-ttl": "15s"}
    with dask.config.set(config), ds.slurm_cluster(store, **THREE_NODES) as cluster:
        cluster.client.wait_for_workers(3, timeout=300)
        handle = ds.submit(node, store=store, cluster=cluster)
        [(victim, _)] = wait_for(lambda: _lines(log, "start"), 120, "the task to start")
        # past its first moment: its lease and "running" record name it (§7, claims)
        wait_for(lambda: node.paths(store).record.exists(), 60, "its running record")
        link = f"{victim}-h"  # the host's end of its veth pair (ci/slurm/up)
        stopped = _signal_node(victim, signal.SIGSTOP)
        subprocess.run(["ip", "link", "set", link, "down"], check=True, timeout=30)
        try:
            # the scheduler gives the worker up (worker-ttl), another node breaks the
            # stale lease (ttl) and commits
            results = handle.wait(timeout=300, progress=False)
        finally:
            Path(flag).touch()
            subprocess.run(["ip", "link", "set", link, "up"], check=True, timeout=30)
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        assert results.state(node) == "succeeded", results.errors
        value = results.value(node)
        record = results.record(node)
        assert value["host"] != victim and not value["first"], value
        broken, *_, last = attempts(results, node)
        assert broken["slurm_node"] == victim and broken["state"] == "failed", broken
        assert last["slurm_node"] == value["host"] and last["state"] == "succeeded", last
        # The cut-off worker wakes, finishes its work late, and is refused at its lease
        # check: its worker log says so (or the worker left first, its work unfinished).
        worker_log = Path(broken["worker_log"])

        def late_work_done() -> str | None:
            if "was lost" in worker_log.read_text():
                return "refused"
            alive = _signal_node(victim, 0)  # signal 0: only look
            return None if alive else "worker gone"

        outcome = wait_for(late_work_done, 120, "the cut-off worker's late work")
        print(f"late work of the cut-off node {victim}: {outcome}; log {_lines(log, 'end')}")
        assert results.value(node) == value and results.record(node) == record  # untouched
        history = set(cluster.history)
    wait_until_gone(history, 120)
