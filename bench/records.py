"""Listing run records through the store index, and writing Zarr results, each next to
a baseline, in one invocation.

Run:  .venv/bin/python bench/records.py [--runs 100000] [--repeat 3] [--run-json]
                                        [--reruns 1000]
                                        [--arrays 16] [--mb 100] [--no-compute]

1. Listing (issue 9's target: 100,000 run records listed and filtered in under
   2 s).  A store of N runs, one node record each, in the shape run_node
   writes (ids, label, config, call, two attempts, params, metrics, tags).
   The records are written as plain files, without index entries: a store
   whose index is missing (deleted, or made before there was one).  Timed
   apart, in this order:

   * the floor: list every folder and parse every record, nothing else
     (what any listing straight from the records costs);
   * the index rebuild from those records (``store.index.rebuild()``: the
     same walk, a summary per node, the snapshot and summaries files
     written).  A store pays it once, when its index is missing or
     unreadable; its first ``store.runs()`` would do it (the old version of
     this script timed that call and called it "walking the records");
   * on the built index: ``store.runs(filter=FILTER)`` ``--repeat`` times in
     this process, and once in a fresh process (imports not timed, nothing
     in memory: what ``dscheduler runs --filter`` pays); then without a
     filter, and by node ordered by a metric.  This is what the target is
     about;
   * the index compaction that folds in ``--reruns`` scattered reruns (an
     entry each, with a new summary, as workers append them), next to a
     plain copy of the index files (read, write, fsync) as its baseline.

   With ``--run-json`` each run also has its ``run.json`` (as
   ``Store.write_run`` writes it), so the index holds an entry per run as
   well as per node, as in a store made by ``ds.compute``.

2. Zarr writes (target: raw / dscheduler >= 0.8).  ``--arrays`` arrays of
   ``--mb`` MB (float32, smooth values, so zstd has work to do), each
   written by raw zarr (``create_array`` + one assignment, same chunks and
   codec) and by dscheduler's value writer (``save_value``: xarray, zstd,
   chunks, consolidated metadata, temporary sibling then rename),
   alternating which goes first; each store is deleted right after it is
   timed.  Unless ``--no-compute``, also through ``ds.compute``: a task (in
   the worker, ``env=None``) that loads the array from a ``.npy`` file and
   returns it, so that the worker stores it and writes its record, on a
   local cluster of one worker with one thread started (and one small
   compute run) beforehand; next to it raw zarr of the same ``np.load`` +
   write in this process, and the same raw write in a plain Dask task
   (``client.submit``) on the same worker, so that what a Dask worker costs
   any write shows apart from what dscheduler adds.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dscheduler.store import Store
from dscheduler.store.layout import NodePaths, record_task
from dscheduler.store.values import chunks_for, save_value

FILTER = "metrics.rmse < 0.5 and (params.model = 'linear' or tags.stage like 'ev%')"

#: A fresh process: ``store.runs(filter)`` timed after the imports.
CHILD = """
import json, sys, time
from dscheduler.store import Store
store = Store(sys.argv[1])
t = time.perf_counter()
frame = store.runs(filter=sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - t, "rows": len(frame)}))
"""


def record(i: int) -> dict[str, object]:
    env_id, config_hash = f"{i % 50:016x}", f"{i:016x}"
    attempt = {"attempt": 1, "state": "succeeded", "host": "node17", "pid": 4242,
               "worker": "tcp://10.0.0.17:40000", "slurm_job_id": "123456",
               "start": "2026-11-25T10:00:00.000+00:00",
               "end": "2026-11-25T10:00:03.000+00:00", "seconds": 3.0, "exit_code": 0}
    return {
        "task": "forecast", "version": "1", "key": f"{i:064x}", "name": f"forecast-{i:016x}",
        "env_id": env_id, "run_id": f"{env_id}/{config_hash}", "case": "c0", "upstream": [],
        "state": "succeeded", "attempts": [dict(attempt, attempt=1, state="failed"), attempt],
        "format": 2, "label": f"run-{i}", "model": "recipe.Forecast",
        "config": {"checkpoint": f"ckpt/{i % 50}.ckpt", "members": i % 8, "label": f"run-{i}"},
        "env": {"python": "3.11", "requirements": ["numpy==2.4.6", "xarray"]},
        "call": {"fn": "recipe:forecast", "module": "recipe", "qualname": "forecast",
                 "file": "/home/u/recipe.py",
                 "code": {"digest": "ab" * 32, "scheme": "tokens-py3.11"},
                 "args": {"cfg": {"\u0000config": {"module": "recipe", "qualname": "Forecast",
                                                   "run_id": f"{env_id}/{config_hash}"}},
                          "init_time": "c0"}},
        "output": {"kind": "json", "path": "forecast.value.json"},
        "params": {"model": ["linear", "ridge", "mlp"][i % 3], "lr": 0.001 * (i % 10)},
        "metrics": {"rmse": (i % 1000) / 1000, "mae": (i % 777) / 1000},
        "tags": {"stage": ["eval", "train"][i % 2]},
    }


def run_json(i: int) -> dict[str, object]:
    """What ``Store.write_run`` writes for the run of ``record(i)``."""
    rec = record(i)
    return {"run_id": rec["run_id"], "env_id": rec["env_id"], "config_hash": f"{i:016x}",
            "env_digest": "e" * 64, "config_digest": f"{i:064x}", "model": rec["model"],
            "label": rec["label"], "config": rec["config"]}


def write_records(store: Store, n: int, runs: bool) -> None:
    """Plain files, no index entries (see the module docstring)."""
    for i in range(n):
        rec = record(i)
        folder = store.run(str(rec["run_id"])).dir / "c0"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "forecast.json").write_text(json.dumps(rec, separators=(",", ":")))
        if runs:
            store.run(str(rec["run_id"])).record.write_text(json.dumps(run_json(i)))


def rerun(store: Store, n: int, reruns: int) -> None:
    """Index entries of ``reruns`` nodes spread over the store, each with a new rmse of 9."""
    entries = []
    for i in range(0, n, max(1, n // reruns))[:reruns]:
        rec = dict(record(i), seq=time.time_ns() // 1000, metrics={"rmse": 9.0, "mae": 0.0})
        entries.append(store.index.entry(store.run(str(rec["run_id"])).node("c0", "forecast"),
                                         rec))
    store.index.append(entries)


def copy_index(store: Store, into: Path) -> None:
    """The baseline of a compaction: the index files read, written and fsynced."""
    for f in store.index_dir.glob("*.json"):
        with open(into / f.name, "wb") as out:
            out.write(f.read_bytes())
            out.flush()
            os.fsync(out.fileno())


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def floor(store: Store) -> int:
    n = 0
    for dirpath, _dirs, files in os.walk(store.runs_dir):
        for name in files:
            if record_task(name):
                json.loads(Path(dirpath, name).read_bytes())
                n += 1
    return n


def expected_rows(n: int) -> int:
    """How many of ``record(i)`` pass FILTER, computed without dscheduler."""
    return sum(1 for i in range(n) if (i % 1000) / 1000 < 0.5 and (i % 3 == 0 or i % 2 == 0))


def listing(n: int, repeat: int, runs: bool, reruns: int) -> None:
    with tempfile.TemporaryDirectory(prefix="dscheduler-bench-records-") as tmp:
        store = Store(Path(tmp) / "data")
        t, _ = timed(lambda: write_records(store, n, runs))
        print(f"wrote {n:,} records{' and run.json files' if runs else ''} "
              f"(plain files, no index) in {t:.1f} s")
        if store.index.size() is not None:
            raise SystemExit("the store has an index already: the rebuild would not be timed")
        t_floor, count = timed(lambda: floor(store))
        t_rebuild, _ = timed(store.index.rebuild)
        index_mb = sum(f.stat().st_size for f in store.index_dir.rglob("*") if f.is_file()) / 1e6
        warm = []
        for _ in range(repeat):
            t, frame = timed(lambda: store.runs(filter=FILTER))
            warm.append(t)
        child = json.loads(subprocess.run(
            [sys.executable, "-c", CHILD, str(store.root), FILTER],
            capture_output=True, text=True, check=True).stdout)
        t_all, everything = timed(lambda: store.runs())
        t_nodes, by_node = timed(lambda: store.runs(by="node", filter=FILTER,
                                                    order_by=["metrics.rmse desc"]))
        want = expected_rows(n)
        if not (count == len(everything) == n
                and len(frame) == child["rows"] == len(by_node) == want):
            raise SystemExit(f"wrong listing: {count}, {len(everything)} of {n} runs; "
                             f"{len(frame)}, {child['rows']}, {len(by_node)} of {want} rows")
        best = min([*warm, child["seconds"]])
        worst = max([*warm, child["seconds"]])
        print(f"\nlisting {n:,} runs ({want:,} pass the filter {FILTER!r})")
        row("floor: list folders + parse every record", t_floor)
        row("index rebuild from the records (once)", t_rebuild, f"{index_mb:.0f} MB of index")
        row("store.runs(filter) on the built index", statistics.median(warm),
            f"median of {repeat} in this process: {', '.join(f'{t:.2f}' for t in warm)}")
        row("the same, in a fresh process", child["seconds"], "imports not timed")
        row("store.runs() without a filter", t_all)
        row("by node, filtered, ordered by metrics.rmse desc", t_nodes)
        print(f"  target < 2 s for list + filter on the index: "
              f"{'met' if worst < 2 else 'NOT met'} (best {best:.2f} s, worst {worst:.2f} s)")
        if reruns:
            (Path(tmp) / "copy").mkdir()
            t_copy, _ = timed(lambda: copy_index(store, Path(tmp) / "copy"))
            rerun(store, n, reruns)
            t_compact, done = timed(store.index.compact)
            rerun_rows = len(store.runs(filter="metrics.rmse = 9"))
            if not done or rerun_rows != min(reruns, n):
                raise SystemExit(f"compaction lost reruns: {rerun_rows} of {reruns} listed")
            row("copy of the index files (compaction's baseline)", t_copy)
            row(f"compaction folding in {reruns:,} scattered reruns", t_compact,
                f"ratio to the copy {t_compact / t_copy:.1f}")


def row(label: str, seconds: float, note: str = "", mb: float | None = None) -> None:
    rate = f"  {mb / seconds:5.0f} MB/s" if mb else ""
    print(f"  {label:<50} {seconds:6.2f} s{rate}" + (f"  ({note})" if note else ""))


def smooth(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 50, n, dtype="float32")
    return (np.sin(x) * 10 + rng.standard_normal(n, dtype="float32") * 0.01).reshape(-1, 1000)


def raw_write(path: Path, data: np.ndarray, chunks: tuple[int, ...]) -> None:
    import zarr
    from zarr.codecs import ZstdCodec

    array = zarr.create_array(store=str(path), shape=data.shape, dtype=data.dtype,
                              chunks=chunks, compressors=(ZstdCodec(level=3),), zarr_format=3)
    array[...] = data


def _load(path: str) -> np.ndarray:
    return np.load(path)


def _load_and_write(source: Path, path: Path, chunks: tuple[int, ...]) -> None:
    raw_write(path, _load(str(source)), chunks)


def _in_worker(client: Any, source: Path, path: Path, chunks: tuple[int, ...]) -> None:
    client.submit(_load_and_write, source, path, chunks, pure=False).result()


def _compute(node: Any, store: Any, client: Any) -> None:
    import dscheduler as ds

    results = ds.compute(node, store=store, cluster=client, progress=False)
    if results.counts() != {"succeeded": 1}:
        raise SystemExit(f"the task did not run: {results!r}")


def writes(arrays: int, mb: int) -> None:
    with tempfile.TemporaryDirectory(prefix="dscheduler-bench-zarr-") as tmp:
        root = Path(tmp)
        t_raw = t_ds = 0.0
        for i in range(arrays):
            data = smooth(mb * 10**6 // 4, i)
            chunks = chunks_for(data.shape, data.dtype.itemsize)
            paths = NodePaths(root, f"a{i}")
            jobs = [("raw", functools.partial(raw_write, root / f"raw{i}.zarr", data, chunks)),
                    ("ds", functools.partial(save_value, paths, data))]
            for name, job in (jobs if i % 2 == 0 else jobs[::-1]):
                t, _ = timed(job)
                if name == "raw":
                    t_raw += t
                    shutil.rmtree(root / f"raw{i}.zarr")
                else:
                    t_ds += t
                    shutil.rmtree(paths.zarr)
        total = arrays * mb
        print(f"\nZarr writes: {arrays} arrays x {mb} MB (float32, chunks {chunks})")
        row("raw zarr: create_array + assign", t_raw, mb=total)
        row("dscheduler save_value", t_ds, mb=total)
        print(f"  ratio raw / dscheduler: {t_raw / t_ds:.2f} (target >= 0.8)")


def writes_through_compute(arrays: int, mb: int) -> None:
    import dask.config

    import dscheduler as ds
    from dscheduler.run import clusters

    load = ds.task(version="1", env=None, name="load")(_load)
    with tempfile.TemporaryDirectory(prefix="dscheduler-bench-compute-") as tmp, \
            dask.config.set({"dscheduler.local.n_workers": 1,
                             "dscheduler.local.threads_per_worker": 1}):
        root = Path(tmp)
        store = ds.Store(root / "data")  # one store: its index and folders made once
        client = clusters.local_cluster()
        client.wait_for_workers(1, timeout=120)
        np.save(root / "warm.npy", smooth(1000, 0))  # first-call costs (imports), not timed
        _compute(load(str(root / "warm.npy")), store, client)
        t_raw = t_ds = t_worker = 0.0
        for i in range(arrays):
            data = smooth(mb * 10**6 // 4, i)
            source = root / f"a{i}.npy"
            np.save(source, data)
            del data
            chunks = chunks_for((mb * 10**6 // 4000, 1000), 4)
            node = load(str(source))  # a str: a Path would hash the file into the key
            jobs = [("raw", functools.partial(_load_and_write, source, root / "raw.zarr",
                                              chunks)),
                    ("ds", functools.partial(_compute, node, store, client)),
                    ("worker", functools.partial(_in_worker, client, source,
                                                 root / "worker.zarr", chunks))]
            for name, job in jobs[i % 3:] + jobs[:i % 3]:
                t, _ = timed(job)
                if name == "raw":
                    t_raw += t
                    shutil.rmtree(root / "raw.zarr")
                elif name == "worker":
                    t_worker += t
                    shutil.rmtree(root / "worker.zarr")
                else:
                    t_ds += t
                    shutil.rmtree(node.paths(store).zarr)
            source.unlink()
        clusters.close_local()
        total = arrays * mb
        print("\nthrough ds.compute: a task loads each array from .npy and returns it "
              "(1 worker x 1 thread, started and warmed beforehand)")
        row("raw zarr: np.load + create_array + assign", t_raw, mb=total)
        row("ds.compute of the task: plan, run, store, record", t_ds, mb=total)
        print(f"  ratio raw / dscheduler: {t_raw / t_ds:.2f} (target >= 0.8)")
        row("the raw write in a plain Dask task on the same worker (client.submit)", t_worker,
            mb=total)
        print(f"  ratio worker raw / dscheduler: {t_worker / t_ds:.2f} (Dask's worker's own "
              "costs on both sides)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--run-json", action="store_true",
                        help="give each run its run.json too (an index entry per run)")
    parser.add_argument("--reruns", type=int, default=1000,
                        help="scattered reruns folded in by the timed compaction (0: none)")
    parser.add_argument("--arrays", type=int, default=16)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--no-compute", action="store_true",
                        help="skip the Zarr writes through ds.compute")
    args = parser.parse_args()
    print(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} CPUs)")
    if args.runs:
        listing(args.runs, args.repeat, args.run_json, args.reruns)
    if args.arrays:
        writes(args.arrays, args.mb)
        if not args.no_compute:
            writes_through_compute(args.arrays, args.mb)
    print(f"\nload average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
