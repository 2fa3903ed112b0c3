"""A store on local disk against the same store on slowfs (1 ms per metadata operation).

Run:  .venv/bin/python bench/slowfs.py [--tasks 200] [--plan 2000] [--delay-ms 1]

tests/slowfs.py is a FUSE passthrough that sleeps before every metadata operation and
lets the kernel cache attributes and names for 3 s, as an NFS client does: real latency,
where bench/scale.py and bench/throughput.py inject it into syscalls with strace.
Timed, side by side (wall seconds; the embedded cluster is started and has run a task
before any timing; compute rows are the best of two alternating runs):

* ``compute``: ``ds.compute`` of N tiny tasks (env=None) into a new store, then again
  (nothing to do), then ``verify`` of that store (a few file operations per node);
* ``plan``: ``ds.plan`` of M finished nodes (bench/plan.py's ``fill``, written on local
  disk underneath), on a fresh mount (cold caches), then at once again (warm).

Needs /dev/fuse and fusermount3 (root, or user_allow_other for allow_other).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import plan as plan_bench

import dscheduler as ds
from dscheduler.run import clusters
from dscheduler.store.catalogue.verify import verify

SLOWFS = Path(__file__).resolve().parent.parent / "tests" / "slowfs.py"


@ds.task(version="1", env=None)
def tiny(i: int) -> int:
    return i


def mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


@contextmanager
def slow(backing: Path, mountpoint: Path, delay_ms: float) -> Iterator[Path]:
    """``backing`` through slowfs at ``mountpoint`` for the block; always unmounted."""
    backing.mkdir(parents=True, exist_ok=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, str(SLOWFS), str(backing), str(mountpoint),
                             "--delay-ms", str(delay_ms), "--attr-timeout", "3"])
    try:
        deadline = time.monotonic() + 60
        while not mounted(mountpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"slowfs did not mount {mountpoint} (exit {proc.poll()})")
            time.sleep(0.05)
        yield mountpoint
    finally:
        if subprocess.run(["fusermount3", "-u", str(mountpoint)]).returncode:
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)])
            proc.terminate()
        proc.wait(timeout=60)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compute_times(root: Path, n: int) -> tuple[float, float, float]:
    nodes = [tiny(i) for i in range(n)]
    first = timed(lambda: ds.compute(nodes, store=root, progress=False))
    again = timed(lambda: ds.compute(nodes, store=root, progress=False))
    checked = timed(lambda: verify(ds.Store(root)))
    return first, again, checked


def plan_times(root: Path, nodes: list[ds.Node]) -> tuple[float, float]:
    cold = timed(lambda: ds.plan(nodes, store=root))
    warm = timed(lambda: ds.plan(nodes, store=root))
    return cold, warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--plan", type=int, default=2000)
    parser.add_argument("--delay-ms", type=float, default=1.0)
    args = parser.parse_args()
    if shutil.which("fusermount3") is None or not Path("/dev/fuse").exists():
        raise SystemExit("bench/slowfs.py needs /dev/fuse and fusermount3 (apt-get install fuse3)")
    base = Path(tempfile.mkdtemp(prefix="ds-bench-slowfs-"))
    rows: list[tuple[str, float, float]] = []
    try:
        # not timed: the cluster's start and its workers' first task
        client = clusters.local_cluster()
        client.wait_for_workers(len(client.scheduler_info()["workers"]) or 1, timeout=120)
        ds.compute([tiny(-i) for i in range(1, 5)], store=base / "warm", progress=False)
        with slow(base / "backing", base / "slow", args.delay_ms) as mnt:
            # best of two, alternating, each into a new store: the machine may be loaded
            tries = [(compute_times(base / f"local{i}" / "data", args.tasks),
                      compute_times(mnt / f"data{i}", args.tasks)) for i in range(2)]
        local, on_slow = (tuple(map(min, zip(*runs, strict=True))) for runs in zip(*tries,
                                                                                     strict=True))
        rows += [(f"compute {args.tasks} tiny tasks", local[0], on_slow[0]),
                 ("  again: nothing to do", local[1], on_slow[1]),
                 (f"  verify its {args.tasks} nodes", local[2], on_slow[2])]

        nodes = [plan_bench.forecast(cfg, plan_bench.CASE)
                 for cfg in plan_bench.configs(args.plan)]
        plan_bench.fill(ds.Store(base / "planned" / "data"), nodes)
        disk = plan_times(base / "planned" / "data", nodes)
        with slow(base / "planned", base / "slow-planned", args.delay_ms) as mnt:
            fs = plan_times(mnt / "data", nodes)
        rows += [(f"plan {args.plan} finished nodes (cold)", disk[0], fs[0]),
                 ("  again at once (warm caches)", disk[1], fs[1])]
    finally:
        clusters.close_local()
        shutil.rmtree(base, ignore_errors=True)
    print(f"{'':38} {'local disk':>12} {f'slowfs {args.delay_ms:g} ms':>14}")
    for what, disk, fs in rows:
        print(f"{what:38} {disk:>11.2f}s {fs:>13.2f}s")


if __name__ == "__main__":
    main()
