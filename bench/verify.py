"""``dscheduler verify`` over a store of N finished nodes: how long the check takes.

Run:  .venv/bin/python bench/verify.py [--nodes 100000] [--cases 10]

The store is written directly (records, JSON values and ``.done`` links in
the layout run_node writes), N / cases runs with ``cases`` cases each; then
:func:`dscheduler.store.verify.verify` checks it, and a plain loop that only
lists the directories and reads each record once runs as the baseline: the
ratio says what the value checks and the thread pool cost on top of one
pass over the records.  Target: seconds for 100,000 nodes.
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
from dscheduler.store.layout import record_task
from dscheduler.store.verify import verify


def write_store(root: Path, nodes: int, cases: int) -> Store:
    store = Store(root).ensure()
    for i in range(nodes // cases):
        run = store.run(f"{'e' * 15}{i % 10}/{identity.short_id(identity.digest('r', i))}")
        for c in range(cases):
            paths = run.node(f"2020010{c % 10}0000" if cases <= 10 else f"c{c}", "forecast")
            paths.dir.mkdir(parents=True, exist_ok=True)
            key = identity.digest("node", [i, c])
            paths.value.write_text(json.dumps({"rmse": i * 0.1 + c}))
            paths.record.write_text(json.dumps({
                "key": key, "state": "succeeded", "task": "forecast", "attempts": [{}],
                "output": {"kind": "json", "path": paths.value.name}}))
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dscheduler-bench-verify-") as tmp:
        t = time.perf_counter()
        store = write_store(Path(tmp) / "data", args.nodes, args.cases)
        print(f"wrote {args.nodes} finished nodes in {time.perf_counter() - t:.1f} s")
        base = baseline(store)
        report = verify(store)
        assert report.checked == args.nodes and not report.problems, report.summary()
        print(f"baseline (list dirs + parse each record once): {base:.2f} s")
        print(f"dscheduler verify: {report.seconds:.2f} s "
              f"({args.nodes / report.seconds:,.0f} nodes/s), ratio {report.seconds / base:.2f}")


if __name__ == "__main__":
    main()
