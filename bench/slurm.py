"""SLURM: time to the first finished task, and tiny-task throughput against a LocalCluster.

Run:  .venv/bin/python bench/slurm.py [--tasks 2000] [--jobs 2] [--repeat 2]

Needs the one-node SLURM that ``ci/slurm/up`` starts.

1. **First result**: from ``ds.compute`` (no cluster yet) to the first
   finished task: the scheduler starts, the scaler submits a job, SLURM
   starts it, its worker connects and runs a tiny task.  The moments of
   each step are printed.
2. **Throughput once workers are up**: N tiny driver-env tasks
   (``ds.compute`` into a fresh store: plan, submit, lease, record, JSON
   value, ``.done`` link per task) through ``--jobs`` one-core SLURM jobs
   (one worker process each, kept up by ``min_jobs``) against the embedded
   LocalCluster with as many worker processes.  Target: SLURM >= 0.9x.
   Both clusters are up together and rounds alternate between them (the
   machine's load drifts); best of ``--repeat`` rounds each, after a warm-up.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path
from typing import Any

import dask.config
from throughput import ds_inc, dscheduler_driver_env  # the same tiny task and timing

import dscheduler as ds
from dscheduler.run import clusters


def first_result(root: Path, where: dict[str, str]) -> dict[str, float]:
    """Seconds from the call to each step of a cold SLURM start, and to the first result."""
    from distributed import wait

    wall0, t0 = time.time(), time.perf_counter()
    cluster = ds.slurm_cluster(ds.Store(root), **where, cores=1, memory="1GB",
                               max_jobs=1, idle_timeout=60)
    t_scheduler = time.perf_counter() - t0
    try:
        handle = ds.submit([ds_inc(i) for i in range(4)], store=ds.Store(root),
                           cluster=cluster)
        t_submitted = time.perf_counter() - t0
        wait(list(handle.futures.values()), return_when="FIRST_COMPLETED")
        t_first = time.perf_counter() - t0
        results = handle.wait(progress=False)
        if results.counts() != {"succeeded": 4}:
            raise SystemExit(f"unexpected: {results}")
        record = results.record(results.plan.nodes[0]) or {}
        job = record["attempts"][-1]["slurm_job_id"]
        log = Path(record["attempts"][-1]["worker_log"]).read_text()
    finally:
        cluster.close()
    # the worker's first log line (logging's local time, like datetime's)
    started = datetime.datetime.strptime(log.splitlines()[0][:23], "%Y-%m-%d %H:%M:%S,%f")
    worker_log = started.timestamp() - wall0
    return {"scheduler up": t_scheduler, "graph submitted": t_submitted,
            f"job {job}'s worker starts": worker_log, "first task finished": t_first}


def compare(clients: dict[str, Any], n: int, root: Path, repeat: int) -> dict[str, list[float]]:
    """Rounds alternating between the clusters (the machine's load drifts); seconds per round."""
    for tag, client in clients.items():  # warm up: imports on the workers, connections
        dscheduler_driver_env(client, 200, root / f"{tag}-warm")
    times: dict[str, list[float]] = {tag: [] for tag in clients}
    for i in range(repeat):
        for tag, client in clients.items():
            times[tag].append(dscheduler_driver_env(client, n, root / f"{tag}{i}"))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=2, help="SLURM jobs = local workers")
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--partition", default=None)
    args = parser.parse_args()
    # An explicit partition=None would clear the configured one: pass it only when given.
    where = {"partition": args.partition} if args.partition else {}

    with tempfile.TemporaryDirectory(prefix="ds-bench-slurm-") as tmp:
        root = Path(tmp)
        steps = first_result(root / "first", where)
        print("cold start on SLURM, seconds from the call: " + ", ".join(
            f"{what} {t:.2f}" for what, t in steps.items()))

        with ds.slurm_cluster(ds.Store(root / "slurm"), **where, cores=1,
                              memory="1GB", max_jobs=args.jobs, min_jobs=args.jobs,
                              idle_timeout=600) as cluster, \
                dask.config.set({"dscheduler.local.n_workers": args.jobs}):
            cluster.client.wait_for_workers(args.jobs, timeout=120)
            times = compare({"slurm": cluster.client, "local": clusters.local_cluster()},
                            args.tasks, root, args.repeat)
            clusters.close_local()

    slurm_s, local_s = min(times["slurm"]), min(times["local"])
    print(f"{args.tasks} tiny tasks, {args.jobs} worker processes x 1 thread, best of "
          f"{args.repeat} alternating rounds: LocalCluster {local_s:.2f} s "
          f"({args.tasks / local_s:.0f}/s), SLURM jobs {slurm_s:.2f} s "
          f"({args.tasks / slurm_s:.0f}/s); ratio {local_s / slurm_s:.2f} (target >= 0.9)")
    print("rounds (s): " + "; ".join(f"{tag} " + " ".join(f"{t:.2f}" for t in ts)
                                     for tag, ts in times.items()))


if __name__ == "__main__":
    main()
