"""Listing run records and writing Zarr results, each against a baseline in one run.

Run:  .venv/bin/python bench/records.py [--runs 100000] [--arrays 16] [--mb 100]

1. Listing: a store of N runs, one node record each (the shape run_node
   writes: ids, label, config, call, two attempts, params, metrics, tags).
   Timed: ``store.runs(filter=...)`` walking the records (records are the
   truth); the same listing from node summaries already in memory, and from
   one JSON-lines file of summaries (what a store index would supply: the
   walk is what it saves); and, as the floor, a plain loop that only lists
   the directories and parses each record.  Target: 100,000 runs listed
   and filtered in under 2 s.
2. Zarr writes: ``--arrays`` arrays of ``--mb`` MB (float32, smooth values,
   so zstd has work to do), each written by dscheduler's value writer
   (``save_value``: xarray, zstd, chunks, consolidated metadata, temporary
   sibling then rename) and by raw zarr (``create_array`` + one assignment,
   same chunks and codec), alternating which goes first; each store is deleted
   right after it is timed.  Target: raw / dscheduler >= 0.8.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from dscheduler.store import Store
from dscheduler.store.layout import NodePaths, record_task
from dscheduler.store.runs import node_summaries, node_summary, runs_frame
from dscheduler.store.values import chunks_for, save_value

FILTER = "metrics.rmse < 0.5 and (params.model = 'linear' or tags.stage like 'ev%')"


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


def write_records(store: Store, n: int) -> None:
    for i in range(n):
        rec = record(i)
        folder = store.run(str(rec["run_id"])).dir / "c0"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "forecast.json").write_text(json.dumps(rec, separators=(",", ":")))


def timed(fn: object) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()  # type: ignore[operator]
    return time.perf_counter() - start, out


def floor(store: Store) -> int:
    n = 0
    for dirpath, _dirs, files in os.walk(store.runs_dir):
        for name in files:
            if record_task(name):
                json.loads(Path(dirpath, name).read_bytes())
                n += 1
    return n


def listing(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="dscheduler-bench-records-") as tmp:
        store = Store(Path(tmp) / "data")
        t, _ = timed(lambda: write_records(store, n))
        print(f"wrote {n:,} records in {t:.1f} s")
        t_floor, count = timed(lambda: floor(store))
        t_walk, frame = timed(lambda: store.runs(filter=FILTER))
        t_all, everything = timed(lambda: store.runs())
        summaries = list(node_summaries(store))
        lines = Path(tmp) / "summaries.jsonl"
        lines.write_text("".join(json.dumps(s) + "\n" for s in summaries))
        t_mem, frame2 = timed(lambda: runs_frame(summaries, filter=FILTER))
        t_file, frame3 = timed(lambda: runs_frame(
            (json.loads(line) for line in lines.open()), filter=FILTER))
        t_nodes, _ = timed(lambda: runs_frame(summaries, by="node", filter=FILTER,
                                              order_by=["metrics.rmse desc"]))
        t_summary, _ = timed(lambda: [node_summary(record(i)) for i in range(n)])
        assert len(frame) == len(frame2) == len(frame3) and len(everything) == count == n
        print(f"\nlisting {n:,} runs ({len(frame):,} pass the filter {FILTER!r})")
        print(f"  plain loop: list dirs + parse each record        {t_floor:6.2f} s")
        print(f"  store.runs(filter) walking the records           {t_walk:6.2f} s"
              f"   (no filter: {t_all:.2f} s)")
        print(f"  from summaries in memory (an index's content)    {t_mem:6.2f} s"
              f"   (by node, ordered: {t_nodes:.2f} s)")
        print(f"  from one JSON-lines file of summaries            {t_file:6.2f} s")
        print(f"  making {n:,} summaries from parsed records        {t_summary:6.2f} s")
        print(f"  target < 2 s: walking {'met' if t_walk < 2 else 'NOT met'}; "
              f"from an index file {'met' if t_file < 2 else 'NOT met'}")


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


def writes(arrays: int, mb: int) -> None:
    with tempfile.TemporaryDirectory(prefix="dscheduler-bench-zarr-", dir=".") as tmp:
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
        print(f"  raw zarr (create_array + assign)   {t_raw:6.2f} s  {total / t_raw:7.0f} MB/s")
        print(f"  dscheduler save_value              {t_ds:6.2f} s  {total / t_ds:7.0f} MB/s")
        print(f"  ratio raw / dscheduler: {t_raw / t_ds:.2f} (target >= 0.8)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--arrays", type=int, default=16)
    parser.add_argument("--mb", type=int, default=100)
    args = parser.parse_args()
    if args.runs:
        listing(args.runs)
    if args.arrays:
        writes(args.arrays, args.mb)


if __name__ == "__main__":
    main()
