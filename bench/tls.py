"""The cost of TLS: tiny-task throughput with TLS against plain TCP, same local cluster setup.

Run:  .venv/bin/python bench/tls.py [--tasks 2000] [--rounds 3] [--workers 2]

Each round starts the embedded local cluster (``cluster="local"``, ``--workers``
workers x 1 thread) twice, once with ``dscheduler.security.mode: tls`` (the
default: per-cluster certificates, mutual TLS between driver, scheduler and
workers) and once with ``tcp`` (plain TCP), in alternating order, and on each
measures what bench/throughput.py measures (its functions, imported): raw
``dask.delayed`` tiny tasks and ``ds.compute`` of N tiny ``env=None`` nodes
into a fresh store, after a small warm-up.  Prints tasks per second, the
medians per mode, the TLS/TCP throughput ratio, and the cluster start time.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dask.config
from throughput import dscheduler_driver_env, raw  # bench/throughput.py, beside this file

# its tasks are pickled by reference: the workers (children with this environment) import it
BENCH = str(Path(__file__).resolve().parent)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [BENCH, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])

MODES = ("tls", "tcp")


def one_round(mode: str, n: int, workers: int, tmp: Path) -> dict[str, float]:
    """Start the local cluster with ``security.mode`` = ``mode``; seconds of each part."""
    from dscheduler.run.clusters import close_local, local_cluster

    close_local()
    with dask.config.set({"dscheduler.security.mode": mode,
                          "dscheduler.local.n_workers": workers}):
        t = time.perf_counter()
        client = local_cluster()
        start = time.perf_counter() - t
        expected = "tls://" if mode == "tls" else "tcp://"
        if not client.scheduler.address.startswith(expected):
            raise SystemExit(f"mode {mode}: the scheduler is at {client.scheduler.address}")
        raw(client, 50)  # warm-up: connections between workers, imports
        dscheduler_driver_env(client, 50, tmp / f"warm-{mode}-{time.monotonic_ns()}")
        took = {"start": start, "raw": raw(client, n),
                "ds": dscheduler_driver_env(client, n, tmp / f"{mode}-{time.monotonic_ns()}")}
    close_local()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="median of this many rounds")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(f"command: .venv/bin/python bench/tls.py {shlex.join(sys.argv[1:])}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"{args.tasks} tiny tasks, {args.workers} workers x 1 thread")
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="ds-bench-tls-") as tmp:
        for r in range(args.rounds):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                took = one_round(mode, args.tasks, args.workers, Path(tmp))
                runs[mode].append(took)
                print(f"  round {r + 1} {mode:4}: start {took['start']:.2f} s, raw "
                      f"{args.tasks / took['raw']:.0f} tasks/s, ds.compute "
                      f"{args.tasks / took['ds']:.0f} tasks/s", flush=True)
    med: dict[str, dict[str, float]] = {
        mode: {part: statistics.median(t[part] for t in runs[mode])
               for part in ("start", "raw", "ds")} for mode in MODES}
    for part, what in (("raw", "raw dask.delayed"), ("ds", "ds.compute")):
        tls, tcp = args.tasks / med["tls"][part], args.tasks / med["tcp"][part]
        print(f"{what:17} TLS {tls:6.0f} tasks/s, TCP {tcp:6.0f} tasks/s, "
              f"ratio TLS/TCP {tls / tcp:.2f} (medians of {args.rounds})")
    print(f"cluster start     TLS {med['tls']['start']:.2f} s, TCP {med['tcp']['start']:.2f} s")


if __name__ == "__main__":
    main()
