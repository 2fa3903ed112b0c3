"""Task throughput: dscheduler against raw ``dask.delayed`` on the same local cluster.

Run:  .venv/bin/python bench/throughput.py [--tasks 2000] [--rounds 3] [--repeats 6]

One embedded local cluster (``cluster="local"``, 2 workers x 1 thread, the
workers ``dask spec`` processes) serves every measurement, through one Client:

1. Tiny tasks in the driver's environment (``inc(i)``): raw ``dask.delayed``
   + ``client.compute`` + ``wait`` against ``ds.compute`` of N ds.task nodes
   into a fresh store (plan, submit, lease, record, JSON value, .done link
   and index entry per task).  ``--rounds`` rounds, raw and dscheduler
   alternating; the ratio of the medians.  Target >= 0.9.
2. Repeated computes in one session: ``--repeats`` rounds of raw then
   dscheduler, each dscheduler compute into a fresh store.  Target: the last
   dscheduler compute no slower than the first, as with raw dask.  With
   ``--delete-stores`` each store is deleted right after its compute, as a
   temporary directory would be: on ext4 here, creating directories right
   after deleting a large tree gets slower round after round, dscheduler or
   not (docs/benchmarks.md), so this shows the filesystem, not dscheduler.
3. File operations per task, each a network round trip on a parallel
   filesystem: metadata syscalls (open, stat, rename, link, mkdir, ...)
   counted with ``strace -f -c`` in a child process that runs tasks through
   the worker's own code path (``node_task``), less the same child running
   none; the driver's per node likewise (plan, specs, submission's store
   writes).
4. Tasks in a built env (a requirement-less ``image="dir"`` env built once
   beforehand): per task, the attempt's wall time on the worker minus the
   function's own time, as the record states both.  Target: median <= 0.2 s.
"""

from __future__ import annotations

import argparse
import os
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

#: Syscalls that are a round trip to the server on NFS, Lustre or GPFS.  fstat
#: is counted too: glibc makes it a newfstatat, which strace cannot tell apart.
METADATA = {"open", "openat", "stat", "lstat", "newfstatat", "statx", "access",
            "faccessat", "faccessat2", "readlink", "readlinkat", "getdents64", "mkdir",
            "mkdirat", "rename", "renameat", "renameat2", "unlink", "unlinkat", "link",
            "linkat", "symlink", "symlinkat", "chmod", "fchmod", "fchmodat", "rmdir",
            "fsync", "fdatasync", "utimensat"}


def inc(x: int) -> int:
    return x + 1


ds_inc = ds.task(version="1", name="inc")(inc)
ENV = ds.Env(image="dir", smoke_imports=[])


@ds.task(version="1", env=ENV)
def env_inc(x: int) -> int:
    return x + 1


def raw(client: Any, n: int, unqueued: bool = False) -> float:
    """``n`` raw ``dask.delayed`` tasks; with ``unqueued``, each asks ``CPU: 1`` as
    dscheduler's tasks do, so that Dask's scheduler does not queue them either."""
    from distributed import wait

    with dask.annotate(**({"resources": {"CPU": 1}} if unqueued else {})):
        tasks = [dask.delayed(inc, pure=False)(i) for i in range(n)]
        t = time.perf_counter()
        wait(client.compute(tasks))
    return time.perf_counter() - t


def dscheduler_driver_env(client: Any, n: int, root: Path) -> float:
    nodes = [ds_inc(i) for i in range(n)]  # made before the clock, as raw's tasks are
    t = time.perf_counter()
    results = ds.compute(nodes, store=ds.Store(root), cluster=client, progress=False)
    took = time.perf_counter() - t
    if results.counts() != {"succeeded": n}:
        raise SystemExit(f"unexpected: {results}")
    return took


def env_overheads(client: Any, n: int, root: Path) -> tuple[list[float], float]:
    store = ds.Store(root)
    store.build_env(ENV)  # built beforehand: this measures running, not building
    nodes = [env_inc(i) for i in range(n)]
    t = time.perf_counter()
    results = ds.compute(nodes, store=store, cluster=client, progress=False)
    wall = time.perf_counter() - t
    results.raise_for_status()
    overheads = []
    for node in nodes:
        record = results.record(node) or {}
        attempt = record["attempts"][-1]
        overheads.append(float(attempt["seconds"]) - float(attempt["function_seconds"]))
    return overheads, wall


# -- file operations per task ----------------------------------------------------------


def ops_child(n: int, root: str, run: bool) -> None:
    """Plan and specify ``n`` tiny nodes (the driver's part); with ``run``, run them the
    way a worker does.  A few warm-up tasks first: imports are not per task."""
    import pickle

    import cloudpickle

    from dscheduler.run.execute import node_task
    from dscheduler.run.nodespec import make_specs

    warm = [ds_inc(-i - 1) for i in range(5)]
    store = ds.Store(root)
    p = ds.plan(warm, store=store)
    specs = make_specs(p, "warm")
    store.ensure()
    for node in p.to_run:
        node_task(pickle.loads(cloudpickle.dumps(specs[node.key])), None)
    make_specs(ds.plan(ds_inc(-99), store=store), "settle")  # modules the tasks imported
    p = ds.plan([ds_inc(i) for i in range(n)], store=store)
    specs = make_specs(p, "ops")
    blobs = [cloudpickle.dumps(specs[node.key]) for node in p.to_run]
    if run:
        for blob in blobs:
            node_task(pickle.loads(blob), None)


def syscalls(args: list[str]) -> dict[str, int]:
    """Syscall counts of ``python bench/throughput.py ARGS`` under ``strace -f -c``."""
    with tempfile.TemporaryDirectory(prefix="ds-bench-ops-") as tmp:
        out = Path(tmp) / "strace"
        proc = subprocess.run(["strace", "-f", "-c", "-o", str(out), sys.executable, __file__,
                               *args], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"ops child failed: {proc.stderr[-2000:]}")
        counts = {}
        for line in out.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[-1].isidentifier() and parts[3].isdigit():
                counts[parts[-1]] = int(parts[3])
        return counts


def per_task(more: dict[str, int], less: dict[str, int], n: int) -> dict[str, float]:
    return {k: (more.get(k, 0) - less.get(k, 0)) / n for k in METADATA
            if (more.get(k, 0) - less.get(k, 0)) / n >= 0.05}


def file_operations(n: int) -> tuple[dict[str, float], dict[str, float]]:
    """Metadata syscalls per task: (worker side, driver side)."""
    with tempfile.TemporaryDirectory(prefix="ds-bench-ops-") as tmp:
        none = syscalls(["--ops-child", "0", f"{tmp}/a", "0"])
        planned = syscalls(["--ops-child", str(n), f"{tmp}/b", "0"])
        ran = syscalls(["--ops-child", str(n), f"{tmp}/c", "1"])
    return per_task(ran, planned, n), per_task(planned, none, n)


def show_ops(what: str, ops: dict[str, float]) -> str:
    detail = ", ".join(f"{k} {v:.2f}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1]))
    return f"{what}: {sum(ops.values()):.1f} ({detail})"


# -- main --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="median of this many rounds")
    parser.add_argument("--repeats", type=int, default=6, help="repeated computes")
    parser.add_argument("--env-tasks", type=int, default=40)
    parser.add_argument("--ops-tasks", type=int, default=300, help="0 skips the count")
    parser.add_argument("--delete-stores", action="store_true",
                        help="delete each repeated compute's store right after it")
    parser.add_argument("--ops-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ops_child:
        n, root, run = args.ops_child
        ops_child(int(n), root, run == "1")
        return

    from dscheduler.run.clusters import close_local, local_cluster

    print(f"command: .venv/bin/python bench/throughput.py {shlex.join(sys.argv[1:])}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.ops_tasks and shutil.which("strace"):
        worker_ops, driver_ops = file_operations(args.ops_tasks)
        print("file operations per tiny task (metadata syscalls, strace -f -c, "
              f"{args.ops_tasks} tasks)")
        print("  " + show_ops("worker (node_task)", worker_ops))
        print("  " + show_ops("driver (plan, specs)", driver_ops))

    tmp = Path(tempfile.mkdtemp(prefix="ds-bench-tp-"))
    try:
        with dask.config.set({"dscheduler.local.n_workers": 2,
                              "dscheduler.local.threads_per_worker": 1}):
            client = local_cluster()
        raw(client, 200)  # warm both paths up: imports on the workers, connections
        dscheduler_driver_env(client, 200, tmp / "warm")
        raw(client, 200, unqueued=True)
        raws, unqueued, ours = [], [], []
        for i in range(args.rounds):
            raws.append(raw(client, args.tasks))
            unqueued.append(raw(client, args.tasks, unqueued=True))
            ours.append(dscheduler_driver_env(client, args.tasks, tmp / f"r{i}"))
        raw_s, unq_s, ds_s = (statistics.median(x) for x in (raws, unqueued, ours))
        print(f"\n{args.tasks} tiny tasks, 2 workers x 1 thread, median of {args.rounds}: "
              f"raw dask {raw_s:.2f} s ({args.tasks / raw_s:.0f}/s), dscheduler {ds_s:.2f} s "
              f"({args.tasks / ds_s:.0f}/s); ratio {raw_s / ds_s:.2f} (target >= 0.9)")
        print(f"  raw dask with dscheduler's CPU restriction (not queued by Dask, like-for-like) "
              f"{unq_s:.2f} s ({args.tasks / unq_s:.0f}/s); ratio {unq_s / ds_s:.2f}")
        print("  rounds: raw " + ", ".join(f"{t:.2f}" for t in raws) + "; raw not queued "
              + ", ".join(f"{t:.2f}" for t in unqueued) + "; dscheduler "
              + ", ".join(f"{t:.2f}" for t in ours))

        raws, ours = [], []
        for i in range(args.repeats):
            raws.append(raw(client, args.tasks))
            ours.append(dscheduler_driver_env(client, args.tasks, tmp / f"s{i}"))
            if args.delete_stores:
                shutil.rmtree(tmp / f"s{i}", ignore_errors=True)
        kept = "deleted after each compute" if args.delete_stores else "kept until the end"
        print(f"\n{args.repeats} repeated computes of {args.tasks} tiny tasks on one Client, "
              f"each into a fresh store, {kept} (s):")
        print("  raw dask    " + ", ".join(f"{t:.2f}" for t in raws)
              + f"; last / first {raws[-1] / raws[0]:.2f}")
        print("  dscheduler  " + ", ".join(f"{t:.2f}" for t in ours)
              + f"; last / first {ours[-1] / ours[0]:.2f} (target <= 1, as raw)")

        if args.env_tasks:
            overheads, wall = env_overheads(client, args.env_tasks, tmp / "env")
            print(f"\n{args.env_tasks} tasks in a built env: overhead per task median "
                  f"{statistics.median(overheads):.3f} s, max {max(overheads):.3f} s "
                  f"(target median <= 0.2 s); end to end {wall / args.env_tasks:.3f} s per "
                  "task over 2 workers")
    finally:
        close_local()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
