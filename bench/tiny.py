"""A tiny task's cost, like for like with raw Dask, in the four figures of issue 18 item 5.

Run:  .venv/bin/python bench/tiny.py [--tasks 2000] [--rounds 3] [--strace-tasks 400]
                                     [--repeats 6] [--trace DIR]

Every figure runs raw Dask and dscheduler on one embedded local cluster (2 workers x
1 thread, the workers offering ``CPU: 1`` per thread); raw Dask's tasks ask ``CPU: 1``
too, so Dask queues neither (docs/design.md §5.2).  Stores go under $TMPDIR.

1. File syscalls per tiny task (``strace -f -y -e trace=%file,getdents64`` over the
   driver and its workers, in a child process): one child runs raw tasks, one runs
   dscheduler's, after the same warm-up; (count - count of a child running none) / N.
   Calls on /proc, /sys and /dev are left out (and shown apart): they never leave
   the machine, and the system monitors make them per second, not per task.
   Target: dscheduler at most 6 beyond raw.
2. Throughput on local disk: ``--tasks`` tasks, median of ``--rounds`` alternating
   rounds.  Target: dscheduler at least 0.8 of raw.
3. The same with every file syscall delayed 1 ms (``strace -f -e
   inject=%file,getdents64:delay_enter=1000``, both in one child), ``--strace-tasks``
   tasks, as a parallel filesystem's round trips; once with strace stopping at every
   syscall, once with ``--seccomp-bpf`` (only file syscalls stop: the slow filesystem
   alone).  Target: at least 0.5 of raw.
4. ``--repeats`` computes of ``--tasks`` tasks on one cluster, each into a fresh store,
   raw between them.  Target: the last dscheduler compute no slower than the first.

``--trace DIR`` instead writes ``strace -ff`` files of a small dscheduler run into DIR
and prints the syscalls per task grouped by path pattern (where they go).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dask

import dscheduler as ds

FILE_CALLS = "%file,getdents64"


def inc(x: int) -> int:
    return x + 1


ds_inc = ds.task(version="1", name="inc")(inc)


def cluster() -> Any:
    from dscheduler.run.clusters import local_cluster

    with dask.config.set({"dscheduler.local.n_workers": 2,
                          "dscheduler.local.threads_per_worker": 1}):
        return local_cluster()


def raw(client: Any, n: int, start: int = 0) -> float:
    """``n`` raw tasks asking ``CPU: 1`` as dscheduler's do (not queued by Dask)."""
    from distributed import wait

    with dask.annotate(resources={"CPU": 1}):
        tasks = [dask.delayed(inc, pure=False)(start + i) for i in range(n)]
        t = time.perf_counter()
        futures = client.compute(tasks)
        wait(futures)
    took = time.perf_counter() - t
    del futures
    return took


def ours(client: Any, n: int, root: Path, start: int = 0) -> float:
    nodes = [ds_inc(start + i) for i in range(n)]  # made before the clock, as raw's tasks are
    t = time.perf_counter()
    results = ds.compute(nodes, store=ds.Store(root), cluster=client, progress=False)
    took = time.perf_counter() - t
    if results.counts() != {"succeeded": n}:
        raise SystemExit(f"unexpected: {results.counts()}")
    return took


def warm(client: Any, root: Path) -> None:
    """Imports on the workers, connections, the plugins: not per task."""
    raw(client, 100, start=-10_000)
    ours(client, 100, root / "warm", start=-10_000)


# -- children (run under strace) ------------------------------------------------------


def child(kind: str, n: int, root: str) -> None:
    """Warm up, then run ``n`` tasks of ``kind`` (raw, ds, none, or both: timed)."""
    from dscheduler.run.clusters import close_local

    client = cluster()
    try:
        warm(client, Path(root))
        times: dict[str, float] = {}
        if kind in ("raw", "both"):
            times["raw"] = raw(client, n)
        if kind in ("ds", "both"):
            times["ds"] = ours(client, n, Path(root) / "run")
        if kind == "both":
            times["raw2"] = raw(client, n, start=n)
            times["ds2"] = ours(client, n, Path(root) / "run2", start=n)
        print("TIMES " + json.dumps(times), flush=True)
    finally:
        close_local()


def run_child(strace: list[str], kind: str, n: int) -> tuple[str, str]:
    with tempfile.TemporaryDirectory(prefix="ds-bench-tiny-") as tmp:
        out = Path(tmp) / "strace"
        cmd = ["strace", "-f", "-o", str(out), *strace, sys.executable, __file__,
               "--child", kind, str(n), f"{tmp}/store"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"child failed: {proc.stderr[-3000:]}")
        return proc.stdout, out.read_text() if out.exists() else ""


#: Paths whose syscalls never leave the machine: the kernel's (distributed's system
#: monitor and psutil read them a few times a second, per process, however many tasks
#: run).  Everything else counts: on a parallel filesystem each is a round trip.
LOCAL = ("/proc/", "/sys/", "/dev/")
_CALL = re.compile(r"^(?:\d+ +)?(\w+)\("  # [pid] name(
                   r"(?:\d+<([^>]*)>|AT_FDCWD(?:<[^>]*>)?, \"([^\"]*)\"|\"([^\"]*)\")")


def counts(trace_text: str) -> tuple[dict[str, int], int]:
    """Calls per syscall in ``strace -f -y`` output, but those on :data:`LOCAL` paths;
    and how many were left out."""
    found: collections.Counter[str] = collections.Counter()
    local = 0
    for line in trace_text.splitlines():
        m = _CALL.match(line)
        if m is None or "resumed>" in line:
            continue
        path = m.group(2) or m.group(3) or m.group(4) or ""
        if path.startswith(LOCAL) and not path.startswith("/dev/shm/"):  # stores may be there
            local += 1
        else:
            found[m.group(1)] += 1
    return dict(found), local


def syscalls_per_task(n: int) -> dict[str, dict[str, float]]:
    """Per task (count less a run of none): {"raw": {...}, "ds": {...}, "local": {...}}."""
    got, local = {}, {}
    for kind in ("none", "raw", "ds"):
        got[kind], local[kind] = counts(
            run_child(["-y", "-e", f"trace={FILE_CALLS}"], kind, n)[1])
    out = {}
    for kind in ("raw", "ds"):
        names = set(got[kind]) | set(got["none"])
        out[kind] = {k: (got[kind].get(k, 0) - got["none"].get(k, 0)) / n for k in names}
    out["local"] = {k: (local[k] - local["none"]) / n for k in ("raw", "ds")}
    return out


def delayed(n: int, seccomp: bool) -> dict[str, float]:
    """Raw and dscheduler under one strace that delays every file syscall 1 ms.  Without
    ``seccomp`` strace stops the processes at every syscall (network ones too), as
    ``strace -e inject`` does by default; with it (``--seccomp-bpf``) only at file
    syscalls, which models a slow filesystem alone."""
    stdout, _ = run_child([*(["--seccomp-bpf"] if seccomp else []), "-e", f"trace={FILE_CALLS}",
                           "-e", f"inject={FILE_CALLS}:delay_enter=1000"], "both", n)
    line = next(x for x in stdout.splitlines() if x.startswith("TIMES "))
    return json.loads(line[6:])


# -- where they go ----------------------------------------------------------------------

_PATTERNS = [
    (re.compile(r"/locks/node-[0-9a-f]+\.lease"), "locks/node-KEY.lease"),
    (re.compile(r"/locks/\.node-[^\"]*"), "locks/.node-KEY.lease.TMP"),
    (re.compile(r"/locks/cancel-[0-9a-f]+"), "locks/cancel-SUB"),
    (re.compile(r"/tasks/inc/[0-9a-f]+/\.inc\.done"), "NODE/.inc.done"),
    (re.compile(r"/tasks/inc/[0-9a-f]+/\.inc[^\"]*"), "NODE/.inc*.TMP"),
    (re.compile(r"/tasks/inc/[0-9a-f]+/inc\.json"), "NODE/inc.json"),
    (re.compile(r"/tasks/inc/[0-9a-f]+/inc\.value\.json"), "NODE/inc.value.json"),
    (re.compile(r"/tasks/inc/[0-9a-f]+/inc\.[a-z]+"), "NODE/inc.OTHER"),
    (re.compile(r"/tasks/inc/[0-9a-f]+\""), "NODE (dir)"),
    (re.compile(r"/index/segments/[^\"]*"), "index/segments/*"),
    (re.compile(r"/index/[^\"]*"), "index/*"),
]


def where(path: str) -> str:
    for pattern, name in _PATTERNS:
        if pattern.search(path):
            return name
    if "/store/" in path:
        return "store: " + re.sub(r"[0-9a-f]{8,}", "X", path.split("/store/", 1)[1])
    return "other"


def trace(n: int, folder: Path) -> None:
    """Per-pid strace files of a run of ``n`` dscheduler tasks; calls per task by path."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = ["strace", "-f", "-ff", "-e", f"trace={FILE_CALLS}", "-o", str(folder / "t"),
           sys.executable, __file__, "--child", "ds", str(n), str(folder / "store")]
    subprocess.run(cmd, check=True, capture_output=True)
    by: collections.Counter[tuple[str, str]] = collections.Counter()
    call = re.compile(r"^(?:\d+ )?(\w+)\((?:AT_FDCWD, |\d+, )?\"([^\"]*)\"")
    for f in folder.glob("t.*"):
        for line in f.read_text(errors="replace").splitlines():
            m = call.match(line)
            if m and "/store/run/" in m.group(2):
                by[where(m.group(2) + '"'), m.group(1)] += 1
            elif line.startswith("getdents64"):
                by["(getdents64, fd)", "getdents64"] += 1
    for (path, name), count in sorted(by.items(), key=lambda kv: -kv[1]):
        if count / n >= 0.05:
            print(f"  {count / n:6.2f}  {name:12} {path}")
    print(f"  total in the run's store: "
          f"{sum(c for (p, _), c in by.items() if p != '(getdents64, fd)') / n:.2f} per task")


# -- main ---------------------------------------------------------------------------------


def show(per: dict[str, float]) -> str:
    items = sorted(((k, v) for k, v in per.items() if abs(v) >= 0.05), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {v:.1f}" for k, v in items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--strace-tasks", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--skip", default="", help="figures to skip, e.g. 1,3")
    parser.add_argument("--trace", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return
    if args.trace:
        trace(args.strace_tasks, args.trace)
        return
    skip = set(args.skip.split(","))
    n = args.strace_tasks
    print(f"command: .venv/bin/python bench/tiny.py {shlex.join(sys.argv[1:])}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; stores under "
          f"{tempfile.gettempdir()}", flush=True)
    if "1" not in skip:
        per = syscalls_per_task(n)
        raw_n, ds_n = sum(per["raw"].values()), sum(per["ds"].values())
        beyond = {k: per["ds"].get(k, 0) - per["raw"].get(k, 0) for k in per["ds"]}
        print(f"\n1. file syscalls per tiny task ({n} tasks, strace -f -y -e trace="
              f"{FILE_CALLS}, driver and workers): raw dask {raw_n:.1f}, dscheduler "
              f"{ds_n:.1f}; beyond raw {ds_n - raw_n:.1f} (target <= 6)")
        print(f"   beyond raw: {show(beyond)}")
        print(f"   left out: calls on {', '.join(LOCAL)} (the system monitor's, per second, "
              f"not per task): raw {per['local']['raw']:.1f}, dscheduler "
              f"{per['local']['ds']:.1f} per task", flush=True)

    from dscheduler.run.clusters import close_local

    tmp = Path(tempfile.mkdtemp(prefix="ds-bench-tiny-"))
    try:
        client = cluster()
        warm(client, tmp)
        if "2" not in skip:
            raws, ourss = [], []
            for i in range(args.rounds):
                raws.append(raw(client, args.tasks))
                ourss.append(ours(client, args.tasks, tmp / f"r{i}"))
            r, o = statistics.median(raws), statistics.median(ourss)
            print(f"\n2. {args.tasks} tiny tasks, local disk, median of {args.rounds}: raw dask "
                  f"{r:.2f} s ({args.tasks / r:.0f}/s), dscheduler {o:.2f} s "
                  f"({args.tasks / o:.0f}/s); ratio {r / o:.2f} (target >= 0.8)")
            print("   rounds: raw " + ", ".join(f"{t:.2f}" for t in raws) + "; dscheduler "
                  + ", ".join(f"{t:.2f}" for t in ourss), flush=True)
        if "4" not in skip:
            raws, ourss = [], []
            for i in range(args.repeats):
                raws.append(raw(client, args.tasks))
                ourss.append(ours(client, args.tasks, tmp / f"s{i}"))
            print(f"\n4. {args.repeats} repeated computes of {args.tasks} tiny tasks on one "
                  "cluster, each into a fresh store (s):")
            print("   raw dask    " + ", ".join(f"{t:.2f}" for t in raws)
                  + f"; last / first {raws[-1] / raws[0]:.2f}")
            print("   dscheduler  " + ", ".join(f"{t:.2f}" for t in ourss)
                  + f"; last / first {ourss[-1] / ourss[0]:.2f} (target <= 1)", flush=True)
    finally:
        close_local()
        shutil.rmtree(tmp, ignore_errors=True)
    if "3" not in skip:
        print(f"\n3. {n} tiny tasks, every file syscall delayed 1 ms (strace inject), best of "
              "2 (target >= 0.5):")
        for seccomp in (False, True):
            t = delayed(n, seccomp)
            r, o = min(t["raw"], t["raw2"]), min(t["ds"], t["ds2"])
            how = "--seccomp-bpf: only file syscalls stop" if seccomp else \
                "every syscall stops under ptrace"
            print(f"   {how}: raw dask {r:.2f} s, dscheduler {o:.2f} s; ratio {r / o:.2f} "
                  f"(rounds: raw {t['raw']:.2f}, {t['raw2']:.2f}; dscheduler {t['ds']:.2f}, "
                  f"{t['ds2']:.2f})", flush=True)
            k = 4  # a fresh node's directory, record create and rename, .done link
            print(f"     floor: a task's {k} file syscalls wait in a row on its worker's one "
                  f"thread: {k * n / 2 / 1000:.2f} s for {n} tasks on 2 workers, so at most "
                  f"{r / (k * n / 2 / 1000):.2f} of raw whatever else is fast", flush=True)


if __name__ == "__main__":
    main()
