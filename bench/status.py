"""``dscheduler status``'s store summary: the record walk it replaced against the index.

Run:  .venv/bin/python bench/status.py [--nodes 10000] [--failed 10] [--repeat 3]

The store is bench/plan.py's (N finished runs over 10 envs: record, value, ``.done``
link, ``run.json`` and index entry per run, one compaction), plus ``--failed`` failed
nodes (record and index entry), whose errors the summary reads.  In a fresh process
each time, :func:`~dscheduler.store.catalogue.status.walk_summary` (what ``summarize`` did before:
one ``scandir`` per directory of ``runs/`` and ``tasks/``, the records of unfinished
nodes) and :func:`~dscheduler.store.catalogue.status.summarize` (the index) are timed on local
disk (best of ``--repeat``, alternating) and with 1 ms injected into every
readlink, newfstatat, openat and getdents64 (``strace -f -e inject=...:delay_enter=1000``,
as on NFS, Lustre or GPFS; once each), and their metadata syscalls counted
(``strace -f -c``, the call alone: the same process without it is subtracted).
Both must give the same summary; the bench stops if they do not.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import plan as plan_bench
from throughput import METADATA

import dscheduler as ds
from dscheduler.store.records import record_text

DELAYED = "readlink,newfstatat,openat,getdents64"
LATENCY = ["strace", "--seccomp-bpf", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={DELAYED}",
           "-e", f"inject={DELAYED}:delay_enter=1000"]


def fill(root: Path, n: int, failed: int) -> None:
    store = ds.Store(root)
    plan_bench.fill(store, [plan_bench.forecast(cfg, plan_bench.CASE)
                            for cfg in plan_bench.configs(n)])
    entries = []
    for i in range(failed):
        key = f"{i + 1:016x}" + "f" * 48
        paths = store.task("broken", key[:16])
        paths.dir.mkdir(parents=True)
        record = {"task": "broken", "key": key, "name": f"broken-{key[:16]}", "state": "failed",
                  "attempts": [{"attempt": 1, "state": "failed", "error": f"ValueError: {i}",
                                "end": f"2026-01-01T00:00:{i % 60:02d}+00:00"}]}
        paths.record.write_bytes(record_text(record))
        entries.append(store.index.entry(paths, record))
    store.index.append(entries)
    store.index.compact()


def child(mode: str, root: Path) -> dict[str, Any]:
    """In a fresh process: the summary by ``mode`` (walk, index, or none: imports only)."""
    from dscheduler.store.catalogue.status import summarize, walk_summary

    store = ds.Store(root)
    start = time.perf_counter()
    if mode == "none":
        return {"seconds": 0.0, "summary": None}
    summary = (walk_summary if mode == "walk" else summarize)(store)
    seconds = time.perf_counter() - start
    data = summary.to_json()
    data.pop("updated")
    return {"seconds": round(seconds, 4), "summary": data}


def run_child(mode: str, root: Path, wrap: list[str] | None = None) -> dict[str, Any]:
    cmd = [*(wrap or []), sys.executable, __file__, "--child", mode, str(root)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child failed: {shlex.join(cmd)}\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.splitlines()[-1]))


def metadata_calls(mode: str, root: Path, tmp: Path) -> int:
    """Metadata syscalls of the summary alone: its child less one that only imports."""
    total = {}
    for which in (mode, "none"):
        out = tmp / f"count-{which}"
        run_child(which, root, ["strace", "-f", "-c", "-o", str(out),
                                "-e", "trace=" + ",".join(sorted(METADATA))])
        total[which] = sum(int(p[3]) for p in map(str.split, out.read_text().splitlines())
                           if len(p) >= 5 and p[-1] in METADATA and p[3].isdigit())
    return total[mode] - total["none"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--failed", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return
    if shutil.which("strace") is None:
        raise SystemExit("strace is needed: apt-get install strace")
    print(f"command: .venv/bin/python bench/status.py {shlex.join(sys.argv[1:])}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="ds-bench-status-") as tmp:
        root = Path(tmp) / "data"
        start = time.perf_counter()
        fill(root, args.nodes, args.failed)
        print(f"store: {args.nodes:,} finished nodes and {args.failed} failed "
              f"(filled in {time.perf_counter() - start:.0f} s)\n")
        local: dict[str, list[float]] = {"walk": [], "index": []}
        found = {}
        for _ in range(args.repeat):
            for mode in local:
                got = run_child(mode, root)
                local[mode].append(got["seconds"])
                found[mode] = got["summary"]
        if found["walk"] != found["index"]:
            raise SystemExit(f"the summaries differ:\nwalk  {found['walk']}\n"
                             f"index {found['index']}")
        delayed = {mode: run_child(mode, root, LATENCY)["seconds"] for mode in local}
        calls = {mode: metadata_calls(mode, root, Path(tmp)) for mode in local}
    print(f"{'summary of the store':28} {'local disk':>11} {'1 ms/syscall':>13} "
          f"{'metadata syscalls':>18}")
    for mode, what in (("walk", "record walk (before)"), ("index", "index (now)")):
        print(f"{what:28} {min(local[mode]):>9.3f} s {delayed[mode]:>11.2f} s "
              f"{calls[mode]:>18,}")


if __name__ == "__main__":
    main()
