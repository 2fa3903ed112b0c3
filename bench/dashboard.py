"""What the dscheduler page costs: task throughput with and without its plugin, the
install round trip of a large graph, and reading ``/dscheduler.json``.

Run:  .venv/bin/python bench/dashboard.py [--tasks 3000] [--rounds 3] [--meta 20000]

1. N tiny tasks in the driver's environment through ``ds.compute`` on one
   LocalCluster (2 workers x 1 thread), alternating rounds with the page (the
   plugin follows every transition) and without it (plugin removed, install
   skipped); medians and their ratio (>= 1 means the page costs nothing).
2. ``graph_meta`` plus the ``install`` round trip for a graph of M nodes to run.
3. ``GET /dscheduler.json`` after the N-node graphs: the first request reads
   the store (a walk of N nodes), the next ones reuse it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import dask

import dscheduler as ds
from dscheduler.graph import plan
from dscheduler.run import dashboard
from dscheduler.run.nodespec import make_specs


def inc(x: int) -> int:
    return x + 1


ds_inc = ds.task(version="1", name="inc")(inc)


def _remove(dask_scheduler: Any) -> None:
    dask_scheduler.remove_plugin(dashboard.NAME)


def one_round(client: Any, n: int, root: Path, with_page: bool) -> float:
    real = dashboard.install, dashboard.graph_meta
    if not with_page:
        client.run_on_scheduler(_remove)
        dashboard.install = lambda *a, **k: True  # type: ignore[assignment]
        dashboard.graph_meta = lambda *a, **k: {}  # type: ignore[assignment]
    try:
        t = time.perf_counter()
        results = ds.compute([ds_inc(i) for i in range(n)], store=ds.Store(root),
                             cluster=client, progress=False)
        took = time.perf_counter() - t
    finally:
        dashboard.install, dashboard.graph_meta = real  # type: ignore[assignment]
    if results.counts() != {"succeeded": n}:
        raise SystemExit(f"unexpected: {results}")
    return took


def install_cost(client: Any, m: int, root: Path) -> tuple[float, float]:
    p = plan([ds_inc(-i) for i in range(1, m + 1)], store=ds.Store(root))
    specs = make_specs(p, "bench")
    t = time.perf_counter()
    meta = dashboard.graph_meta(p, specs, "bench")
    t_meta = time.perf_counter() - t
    t = time.perf_counter()
    dashboard.install(client, meta)
    return t_meta, time.perf_counter() - t


def get_json(url: str) -> tuple[float, dict[str, Any]]:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as response:
        data = json.load(response)
    return time.perf_counter() - t, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--meta", type=int, default=20000)
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client, \
            tempfile.TemporaryDirectory(prefix="ds-bench-dash-") as tmp, \
            dask.config.set({"dscheduler.dashboard.graphs": 2 * args.rounds + 2}):
        one_round(client, 200, Path(tmp) / "warm", True)  # imports on the workers
        times: dict[bool, list[float]] = {True: [], False: []}
        for i in range(args.rounds):
            for with_page in (False, True):
                root = Path(tmp) / f"r{i}-{with_page}"
                times[with_page].append(one_round(client, args.tasks, root, with_page))
        on, off = statistics.median(times[True]), statistics.median(times[False])
        print(f"{args.tasks} tiny tasks, 2 workers x 1 thread, median of {args.rounds}: "
              f"without the page {off:.2f} s ({args.tasks / off:.0f}/s), with it {on:.2f} s "
              f"({args.tasks / on:.0f}/s); ratio with/without {off / on:.2f}")

        t_meta, t_install = install_cost(client, args.meta, Path(tmp) / "meta")
        print(f"graph of {args.meta} nodes to run: graph_meta {t_meta:.3f} s, "
              f"install round trip {t_install:.3f} s")

        url = dashboard.links(client)[1] + ".json"
        first, data = get_json(url)
        again = statistics.median(get_json(url)[0] for _ in range(5))
        nodes = sum(s.get("nodes", 0) for s in data["stores"])
        print(f"/dscheduler.json, {len(data['graphs'])} graphs, {len(data['stores'])} stores "
              f"holding {nodes} nodes: first {first:.3f} s (walks the stores), then "
              f"{again:.3f} s (summaries reused for dashboard.store_interval)")


if __name__ == "__main__":
    main()
