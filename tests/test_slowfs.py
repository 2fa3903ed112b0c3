"""A store on slowfs (tests/slowfs.py): 1 ms per metadata operation, NFS-like caches.

Two mounts of one backing directory play two hosts: each kernel caches attributes,
names and missing names for 3 s, so one "host" sees the other's changes late, as NFS
clients do.  On it: leases exclude across hosts and are broken only when stale, once;
the other host's plan, listing and status catch up and never read a torn file; a task
killed between its value and its record is repaired by the next run; verify passes;
a graph runs end to end on the local cluster.  Processes that contend are real ones.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from helpers import BoundCfg, bound_v1, popen, run, run_inline, slow_mount, wait_for
from typer.testing import CliRunner

import dscheduler as ds
from dscheduler.cli import app
from dscheduler.store.catalogue.verify import verify
from dscheduler.store.state import Reason

pytestmark = pytest.mark.slow

TESTS = str(Path(__file__).parent)
CACHE = 3.0  # attr_timeout, entry_timeout and negative_timeout of both mounts


@pytest.fixture
def hosts(tmp_path: Path, fuse_available: None) -> Iterator[tuple[Path, Path]]:
    """Two slowfs mounts of one backing directory: two hosts' views of one store."""
    with ExitStack() as stack:
        yield tuple(  # type: ignore[misc]
            stack.enter_context(slow_mount(tmp_path / "backing", tmp_path / name,
                                           "--delay-ms", "1", "--attr-timeout", str(CACHE)))
            for name in ("host-a", "host-b"))




def start(code: str, *args: object) -> subprocess.Popen[str]:
    return popen([sys.executable, "-c", code, TESTS, *map(str, args)])


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}: {out}\n{err}"
    return out


# -- the filesystem itself ---------------------------------------------------------------


def test_slowfs_is_slow_caches_like_nfs_and_keeps_the_stores_semantics(
        hosts: tuple[Path, Path]) -> None:
    a, b = hosts
    start_ = time.perf_counter()
    for i in range(20):
        (a / f"f{i}").write_bytes(b"x")
    assert (time.perf_counter() - start_) / 20 > 0.002  # lookup, create, getattr: >= 2 ms
    assert not (b / "late").exists()  # now cached as missing on host b
    (a / "late").write_text("here")
    assert not (b / "late").exists()  # a negative entry: b does not ask again yet
    # An exclusive create always asks the server, so it cannot succeed twice.
    with pytest.raises(FileExistsError):
        os.open(b / "late", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    assert (b / "late").read_text() == "here"
    # A file replaced by rename: the reader gets the whole new file, never a cut one.
    (a / "tmp").write_text("a much longer text than before")
    os.replace(a / "tmp", a / "late")
    assert (b / "late").read_text() == "a much longer text than before"
    os.link(a / "late", a / "hard")
    assert os.stat(b / "hard").st_ino == os.stat(b / "late").st_ino
    os.symlink("late", a / "sym")
    assert os.readlink(b / "sym") == "late"


def test_modes_and_owners_pass_through_for_another_uid(fuse_available: None) -> None:
    base = Path(tempfile.mkdtemp(prefix="ds-slowfs-", dir="/tmp"))  # 65534 can reach it
    try:
        base.chmod(0o755)
        with slow_mount(base / "backing", base / "slow", "--delay-ms", "1") as root:
            (root / "secret").write_text("s")
            os.chmod(root / "secret", 0o600)
            (root / "public").write_text("p")
            os.chmod(root / "public", 0o644)
            (root / "open").mkdir()
            os.chmod(root / "open", 0o777)
            nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
            read = subprocess.run([*nobody, "cat", str(root / "public")], capture_output=True)
            assert read.returncode == 0 and read.stdout == b"p"
            denied = subprocess.run([*nobody, "cat", str(root / "secret")],
                                    capture_output=True, text=True)
            assert denied.returncode != 0 and "Permission denied" in denied.stderr
            made = subprocess.run([*nobody, "touch", str(root / "open" / "mine")],
                                  capture_output=True)
            assert made.returncode == 0
            owner = os.stat(base / "backing" / "open" / "mine")
            assert (owner.st_uid, owner.st_gid) == (65534, 65534)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- leases --------------------------------------------------------------------------------

CONTENDER = """
import os, sys, time
from pathlib import Path
from dscheduler import Lease
inside = Path(sys.argv[3])
for _ in range(int(sys.argv[4])):
    with Lease(sys.argv[2], ttl=5, poll=0.01, owner=str(os.getpid())):
        try:
            fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            print("OVERLAP"); sys.exit(3)
        os.close(fd)
        time.sleep(0.02)
        inside.unlink()
print("ok")
"""


def test_contending_hosts_hold_the_lease_one_at_a_time(
        hosts: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = hosts
    inside = tmp_path / "inside"  # on local disk: the truth about who is inside
    procs = [start(CONTENDER, host / "x.lease", inside, 10) for host in (a, b, a, b)]
    assert [finish(p).strip() for p in procs] == ["ok"] * 4
    assert not (a / "x.lease").exists() and not (tmp_path / "backing" / "x.lease").exists()


HOLDER = """
import os, sys, time
from dscheduler import Lease
lease = Lease(sys.argv[2], ttl=float(sys.argv[3]), poll=0.02, owner="holder")
lease.acquire(timeout=60)
open(sys.argv[4], "w").write(str(os.getpid()))
end = time.monotonic() + 120
while not os.path.exists(sys.argv[5]) and time.monotonic() < end:
    time.sleep(0.02)
lost = lease.lost
lease.release()
print("lost" if lost else "kept")
"""

WAITER = """
import json, os, sys, time
from pathlib import Path
from dscheduler import Lease
lease = Lease(sys.argv[2], ttl=float(sys.argv[3]), poll=0.02, owner=str(os.getpid()))
inside = Path(sys.argv[4])
lease.acquire(timeout=120)
try:
    os.close(os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    overlap = False
except FileExistsError:
    overlap = True
time.sleep(0.3)
if not overlap:
    inside.unlink()
lease.release()
print(json.dumps({"broke": lease.broken_holder is not None, "overlap": overlap}))
"""


def dead_holder_then_waiters(hosts: tuple[Path, Path], tmp_path: Path, round_: int,
                             waiters_on: tuple[Path, ...]) -> list[dict[str, bool]]:
    """A holder on host a killed, then waiters on ``waiters_on`` at once: what each saw."""
    a, _ = hosts
    ttl = 3.0
    started, inside = tmp_path / f"started{round_}", tmp_path / f"inside{round_}"
    holder = start(HOLDER, a / "x.lease", ttl, started, tmp_path / "never")
    wait_for(started.exists, 60, "the holder to take the lease")
    holder.kill()
    holder.communicate(timeout=60)
    waiters = [start(WAITER, host / "x.lease", ttl, inside) for host in waiters_on]
    return [json.loads(finish(w)) for w in waiters]


def test_a_dead_holders_lease_is_broken_once_by_a_waiter_on_each_host(
        hosts: tuple[Path, Path], tmp_path: Path) -> None:
    for round_ in range(3):
        outs = dead_holder_then_waiters(hosts, tmp_path, round_, hosts)
        assert not any(o["overlap"] for o in outs), f"round {round_}: {outs}"
        assert sum(o["broke"] for o in outs) == 1, f"round {round_}: {outs}"


# Several waiters on two hosts judge one dead holder's lease stale at once: before
# breakers took a guard (Lease._break_and_take), one could move another's new lease
# aside, and a third waiter create the name before it was put back: two holders
# (6 of 10 rounds here on slowfs, 0 of 10 on local disk).
def test_a_dead_holders_lease_is_broken_once_by_waiters_on_two_hosts(
        hosts: tuple[Path, Path], tmp_path: Path) -> None:
    # Rounds until one shows the race (most do within two): a dead holder, then six
    # waiters at once, three per host; on local disk, tmp_path/inside tells who is inside.
    for round_ in range(12):
        outs = dead_holder_then_waiters(hosts, tmp_path, round_, hosts * 3)
        assert not any(o["overlap"] for o in outs), f"round {round_}: {outs}"
        assert sum(o["broke"] for o in outs) == 1, f"round {round_}: {outs}"


# -- the index ------------------------------------------------------------------------------

WRITER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from helpers import BoundCfg, bound_v1, run_inline
import dscheduler as ds
store, log, n = ds.Store(sys.argv[2]), sys.argv[3], int(sys.argv[4])
for i in range(0, n, 5):
    run_inline([bound_v1(BoundCfg(x=j), "c", log) for j in range(i, i + 5)], store)
    time.sleep(0.2)
print("ok")
"""


def nodes_of(n: int, log: str) -> list[ds.Node]:
    return [bound_v1(BoundCfg(x=i), "c", log) for i in range(n)]


def test_the_index_seen_from_another_host_catches_up_and_never_reads_torn(
        hosts: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = hosts
    log, n = str(tmp_path / "log"), 30
    here = ds.Store(b / "data")
    ds.Store(a / "data").ensure()
    assert len(ds.plan(nodes_of(n, log), store=here).to_run) == n  # b caches what is missing
    writer = start(WRITER, a / "data", log, n)
    seen: list[int] = []

    def caught_up() -> bool:
        # Every plan reads whole files: a torn record or index line would raise
        # (StoreError) or call an unfinished node finished.
        p = ds.plan(nodes_of(n, log), store=here)
        finished = n - len(p.to_run)
        assert not seen or finished >= seen[-1], f"went back from {seen[-1]} to {finished}"
        seen.append(finished)
        return finished == n and writer.poll() is not None

    wait_for(caught_up, 120, "host b's plan to see every node host a ran", interval=0.2)
    assert finish(writer).strip() == "ok"
    assert Path(log).read_text().count("v1") == n  # each ran once
    listed = here.runs(by="node")
    assert len(listed) == n and set(listed["state"]) == {"succeeded"}
    # verify looks up every record by name: one that host b's first plan looked up before
    # host a wrote it stays cached as missing until negative_timeout (as on NFS), so a
    # .done link may show "no record" for up to the cache timeout, never longer
    wait_for(lambda: verify(here).problems == [], 3 * CACHE + 30,
             "verify on host b to find nothing wrong once its cached misses expire")
    # status reads the index, as the plan does: it catches up once host b's cached
    # attributes of the index files expire (up to the cache timeout, as on NFS)
    wait_for(lambda: status_counts(here) == ["bound", str(n), "0", str(n)], 60,
             f"host b's status to count {n} succeeded nodes of task bound")


def status_counts(store: ds.Store) -> list[str]:
    """The row of task "bound" in ``dscheduler status``: succeeded, failed, total."""
    out = CliRunner().invoke(app, ["status", "--store", str(store.root)])
    assert out.exit_code == 0, out.output
    rows = [line.split() for line in out.output.splitlines()]
    return next((row for row in rows if row[:1] == ["bound"]), [])


# -- the commit order -------------------------------------------------------------------------

KILLED = """
import os, sys
sys.path.insert(0, sys.argv[1])
from helpers import BoundCfg, bound_v1, run_inline
from dscheduler.run import execute
import dscheduler as ds
# die like kill -9 after the value is stored and before the record is written
execute._succeed = lambda *args: os._exit(9)
run_inline([bound_v1(BoundCfg(x=1), "c", sys.argv[3])], ds.Store(sys.argv[2]))
"""


def test_a_task_killed_between_its_value_and_its_record_is_repaired_next_run(
        hosts: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = hosts
    log = str(tmp_path / "log")
    killed = start(KILLED, a / "data", log)
    killed.communicate(timeout=180)
    assert killed.returncode == 9
    node = bound_v1(BoundCfg(x=1), "c", log)
    store = ds.Store(b / "data")  # the next run, on the other host
    paths = node.paths(store)
    assert ds.plan([node], store=store).reason(node) in (Reason.NO_RECORD, Reason.INTERRUPTED)
    assert not os.path.lexists(paths.done)
    assert run_inline([node], store) == {node.name: "succeeded"}
    assert ds.plan([node], store=store).nothing_to_do
    assert ds.compute(node, store=store, progress=False).value(node) == 1  # nothing to run
    first, second = store.read_record(paths.record)["attempts"]
    assert first["state"] == "failed" and "interrupted" in first["error"]
    assert second["state"] == "succeeded"
    assert Path(log).read_text().count("v1") == 2
    assert verify(store).problems == []
    leftovers = sorted(p.name for p in paths.dir.iterdir() if p.name.startswith("."))
    assert leftovers == [paths.done.name], leftovers


# -- verify and a whole graph -------------------------------------------------------------------


@ds.task(version="1", env=None)
def square(x: int) -> dict[str, int]:
    return {"x": x * x}


@ds.task(version="1", env=None)
def series(n: int) -> Any:
    import numpy as np

    return np.arange(n)


@ds.task(version="1", env=None)
def added(values: list[dict[str, int]]) -> int:
    return sum(v["x"] for v in values)


def test_verify_passes_on_a_store_written_through_slowfs(slow_store: ds.Store) -> None:
    nodes: list[ds.Node] = [square(i) for i in range(5)]
    nodes += [series(7), added(nodes[:5])]
    run_inline(nodes, slow_store)
    report = verify(slow_store, deep=True)
    assert report.checked == len(nodes) and report.problems == []
    assert ds.plan(nodes, store=slow_store).nothing_to_do


def test_a_graph_runs_end_to_end_on_the_local_cluster(slow_store: ds.Store,
                                                        cluster: Any) -> None:
    parts = [square(i) for i in range(20)]
    top = added(parts)
    results = run([*parts, top], slow_store, cluster)
    assert results.ok, results.errors
    assert results.value(top) == sum(i * i for i in range(20))
    again = run([*parts, top], slow_store, cluster)
    assert again.plan.nothing_to_do
    assert verify(slow_store).problems == []
