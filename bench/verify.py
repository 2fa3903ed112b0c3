"""``dscheduler verify`` over a store of N finished nodes: how long the check takes.

Run:  .venv/bin/python bench/verify.py [--nodes 100000] [--cases 10] [--zarr-every K] [--deep]

The store is written directly (records, JSON values and ``.done`` links in
the layout run_node writes), N / cases runs with ``cases`` cases each; then
:func:`dscheduler.store.catalogue.verify.verify` checks it, and a plain loop that only
lists the directories and reads each record once runs as the baseline: the
ratio says what the value checks and the thread pool cost on top of one
pass over the records.  ``--zarr-every K``: every K-th node's value is a
Zarr array of 8 chunks written by :func:`~dscheduler.store.values.save_value`
(whose chunk files verify lists); ``--deep`` also times ``verify --deep``,
which reads every chunk.  Target: seconds for 100,000 nodes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from dscheduler import identity
from dscheduler.store import Store
from dscheduler.store.catalogue.verify import verify
from dscheduler.store.layout import record_task
from dscheduler.store.values import save_value


def write_store(root: Path, nodes: int, cases: int, zarr_every: int = 0) -> Store:
    import dask.config
    import numpy as np

    store = Store(root).ensure()
    n = 0
    with dask.config.set({"dscheduler.results.chunk_mb": 1 / 1024}):  # 8 KiB: 8 chunks
        for i in range(nodes // cases):
            run = store.run(f"{'e' * 15}{i % 10}/{identity.short_id(identity.digest('r', i))}")
            for c in range(cases):
                paths = run.node(f"2020010{c % 10}0000" if cases <= 10 else f"c{c}", "forecast")
                paths.dir.mkdir(parents=True, exist_ok=True)
                key = identity.digest("node", [i, c])
                n += 1
                if zarr_every and n % zarr_every == 0:
                    output = save_value(paths, np.arange(1024.0), fresh=True)
                else:
                    paths.value.write_text(json.dumps({"rmse": i * 0.1 + c}))
                    output = {"kind": "json", "path": paths.value.name}
                paths.record.write_text(json.dumps({
                    "key": key, "state": "succeeded", "task": "forecast", "attempts": [{}],
                    "output": output}))
                os.symlink(key, paths.done)
    return store


def baseline(store: Store) -> float:
    """One pass: list every directory, parse every record."""
    start = time.perf_counter()
    for dirpath, _dirs, files in os.walk(store.runs_dir):
        for name in files:
            if record_task(name):
                json.loads(Path(dirpath, name).read_bytes())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--zarr-every", type=int, default=0,
                        help="every K-th node stores a Zarr array of 8 chunks (0: none)")
    parser.add_argument("--deep", action="store_true", help="also time verify --deep")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dscheduler-bench-verify-") as tmp:
        t = time.perf_counter()
        store = write_store(Path(tmp) / "data", args.nodes, args.cases, args.zarr_every)
        print(f"wrote {args.nodes} finished nodes in {time.perf_counter() - t:.1f} s")
        base = baseline(store)
        report = verify(store)
        assert report.checked == args.nodes and not report.problems, report.summary()
        print(f"baseline (list dirs + parse each record once): {base:.2f} s")
        print(f"dscheduler verify: {report.seconds:.2f} s "
              f"({args.nodes / report.seconds:,.0f} nodes/s), ratio {report.seconds / base:.2f}")
        if args.deep:
            deep = verify(store, deep=True)
            assert deep.checked == args.nodes and not deep.problems, deep.summary()
            print(f"dscheduler verify --deep: {deep.seconds:.2f} s "
                  f"({args.nodes / deep.seconds:,.0f} nodes/s), ratio {deep.seconds / base:.2f}")


if __name__ == "__main__":
    main()
