"""Task throughput: dscheduler against raw ``dask.delayed`` on the same LocalCluster.

Run:  .venv/bin/python bench/throughput.py [--tasks 5000] [--env-tasks 40]

1. N tiny tasks in the driver's environment (``inc(i)``): raw
   ``dask.delayed`` + ``client.compute`` versus ``ds.compute`` of N ds.task
   nodes into a fresh store (plan, submit, lease, record, JSON value, .done
   link per task).  Target: dscheduler's throughput >= 0.8x raw.
2. Tasks in a built env (a requirement-less ``image="dir"`` env built once
   beforehand): per task, the attempt's wall time on the worker (lease,
   record, mount, subprocess start, cloudpickle round trip, result, record)
   minus the function's own time, as the record states both.  Target: median
   <= 0.2 s.  The end-to-end wall time per task is shown too.

One LocalCluster (2 workers x 1 thread, processes) serves every measurement.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import dask

import dscheduler as ds


def inc(x: int) -> int:
    return x + 1


ds_inc = ds.task(version="1", name="inc")(inc)
ENV = ds.Env(image="dir", smoke_imports=[])


@ds.task(version="1", env=ENV)
def env_inc(x: int) -> int:
    return x + 1


def raw(client: Any, n: int) -> float:
    from distributed import wait

    tasks = [dask.delayed(inc, pure=False)(i) for i in range(n)]
    t = time.perf_counter()
    wait(client.compute(tasks))
    return time.perf_counter() - t


def dscheduler_driver_env(client: Any, n: int, root: Path) -> float:
    t = time.perf_counter()
    results = ds.compute([ds_inc(i) for i in range(n)], store=ds.Store(root), cluster=client,
                         progress=False)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--env-tasks", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=2, help="best of this many rounds")
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client, \
            tempfile.TemporaryDirectory(prefix="ds-bench-tp-") as tmp:
        raw(client, 200)  # warm both paths up: imports on the workers, connections
        dscheduler_driver_env(client, 200, Path(tmp) / "warm")
        raw_s = min(raw(client, args.tasks) for _ in range(args.repeat))
        ds_s = min(dscheduler_driver_env(client, args.tasks, Path(tmp) / f"d{i}")
                   for i in range(args.repeat))
        print(f"{args.tasks} tiny tasks, 2 workers x 1 thread: raw dask {raw_s:.2f} s "
              f"({args.tasks / raw_s:.0f}/s), dscheduler {ds_s:.2f} s "
              f"({args.tasks / ds_s:.0f}/s); ratio {raw_s / ds_s:.2f} (target >= 0.8)")

        overheads, wall = env_overheads(client, args.env_tasks, Path(tmp) / "env")
        print(f"{args.env_tasks} tasks in a built env: overhead per task median "
              f"{statistics.median(overheads):.3f} s, max {max(overheads):.3f} s "
              f"(target median <= 0.2 s); end to end {wall / args.env_tasks:.3f} s per task "
              "over 2 workers")


if __name__ == "__main__":
    main()
