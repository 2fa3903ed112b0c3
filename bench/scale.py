"""Cluster scale, side by side: planning under filesystem latency, listing, env builds.

Run:  .venv/bin/python bench/scale.py [--sizes 10000,100000] [--snakemake-sizes 10000]
                                      [--million] [--env] [--repeat 3]

On a parallel filesystem every metadata syscall is a network round trip.
This injects one: ``strace --seccomp-bpf -f -e trace=X -e inject=X:
delay_enter=1000`` with X = readlink,newfstatat,openat,getdents64,statx
delays each of them by 1 ms.

1. Planning N finished runs (bench/plan.py's store: record, value, .done
   link and index entry per run, one compaction), for each of ``--sizes``,
   with and without the injected latency: the time of ``ds.plan`` in a fresh
   child process (nodes made beforehand), and metadata syscalls per node
   (``strace -f -c``: the child that plans, less the same child that does
   not).  Next to it Snakemake's dry run of the same files under the same
   latency, for ``--snakemake-sizes`` (each of its nodes costs several
   delayed syscalls: 100,000 take many minutes), and its syscalls per node
   (less a dry run of no runs).  Targets: 100,000 decided in < 3 s under
   latency, <= 0.01 metadata operations per finished node.
2. ``--million``: 1,000,000 finished nodes (tasks not bound to runs) decided
   on local disk: nodes + plan < 15 s, peak RSS < 2 GB.  That store holds
   only its index (entries as workers append them, one compaction): a node
   the index calls finished costs planning nothing else.
3. ``store.runs()`` listing the 100,000 runs of part 1 through the index
   (target < 2 s).
4. ``--env``: an env differing from a built one in one package, built cold
   and incrementally (bench/env_build.py --incremental: numpy + xarray from
   the registry).  Target: incremental / cold <= 0.35, same image bytes.
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

DELAYED = "readlink,newfstatat,openat,getdents64,statx"
#: --seccomp-bpf stops only the traced (delayed) syscalls: without it strace stops the
#: process at every other syscall too, which costs time of its own (the 24,000 reads
#: of a listing: 2.5 s).
LATENCY = ["strace", "--seccomp-bpf", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={DELAYED}",
           "-e", f"inject={DELAYED}:delay_enter=1000"]


@ds.task(version="1")
def step(i: int) -> None: ...


# -- children --------------------------------------------------------------------------


def child(mode: str, n: int, root: Path) -> dict[str, Any]:
    """In a fresh process: make the nodes, then (mode) plan, list, or nothing."""
    t0 = time.perf_counter()
    if mode in ("million", "fill-million"):
        nodes = [step(i) for i in range(n)]
    else:
        nodes = [plan_bench.forecast(cfg, plan_bench.CASE) for cfg in plan_bench.configs(n)]
    t1 = time.perf_counter()
    store = ds.Store(root)
    out: dict[str, Any] = {"nodes_s": round(t1 - t0, 3)}
    if mode in ("plan", "million"):
        p = ds.plan(nodes, store=store)
        out["plan_s"] = round(time.perf_counter() - t1, 3)
        if len(p.cached) != n:
            raise SystemExit(f"expected {n} cached, got {p.summary()}")
    elif mode == "runs":
        from dscheduler.store.catalogue.runs import node_summary, runs_frame

        # Imports (pandas, lark) are not the listing's cost: one tiny listing first.
        runs_frame([node_summary({"run_id": "e/c", "task": "t", "state": "succeeded"})],
                   filter="state = 'succeeded'")
        t1 = time.perf_counter()
        frame = store.runs()
        out["runs_s"] = round(time.perf_counter() - t1, 3)
        if len(frame) != n:
            raise SystemExit(f"expected {n} runs, listed {len(frame)}")
    elif mode == "fill-million":
        fill_index_only(store, nodes)
    out["peak_rss_mb"] = plan_bench.peak_rss_mb()
    return out


def fill_index_only(store: ds.Store, nodes: list[ds.Node]) -> None:
    """Index entries saying every node finished, as workers append them, and one compaction."""
    store.ensure()
    entries = [store.index.entry(node.paths(store), {"key": node.key, "seq": 1,
                                                     "state": "succeeded", "task": "step"})
               for node in nodes]
    store.index.append(entries)
    del entries
    store.index.compact()


def run_child(mode: str, n: int, root: Path, wrap: list[str] | None = None) -> dict[str, Any]:
    cmd = [*(wrap or []), sys.executable, __file__, "--child", mode, str(n), str(root)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child failed: {shlex.join(cmd)}\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.splitlines()[-1]))


def counted(summary: Path) -> list[str]:
    """strace counting the metadata syscalls, its summary into ``summary``."""
    return ["strace", "-f", "-c", "-o", str(summary), "-e", "trace=" + ",".join(sorted(METADATA))]


def metadata_calls(summary: Path) -> int:
    total = 0
    for line in summary.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] in METADATA and parts[3].isdigit():
            total += int(parts[3])
    return total


def ds_syscalls(n: int, root: Path, tmp: Path) -> float:
    """Metadata syscalls of planning per node: planning child less a child that does not."""
    run_child("plan", n, root, counted(tmp / "with"))
    run_child("nodes", n, root, counted(tmp / "without"))
    return (metadata_calls(tmp / "with") - metadata_calls(tmp / "without")) / n


def snake_syscalls(root: Path, runs: list[tuple[str, str]], tmp: Path) -> float | str:
    out = plan_bench.snakemake_dry_run(root, runs, counted(tmp / "snake"))
    if isinstance(out, str):
        return out
    empty = tmp / "empty"
    empty.mkdir(exist_ok=True)
    plan_bench.snakemake_dry_run(empty, [], counted(tmp / "snake0"))
    return (metadata_calls(tmp / "snake") - metadata_calls(tmp / "snake0")) / len(runs)


# -- parts -----------------------------------------------------------------------------


def planning(sizes: list[int], snake_sizes: list[int], tmp: Path) -> dict[int, Path]:
    roots = {}
    print("planning N finished runs: ds.plan in a fresh process; Snakemake's dry run of the "
          "same files; 1 ms per metadata syscall when delayed")
    print(f"{'runs':>8} {'ds.plan':>9} {'delayed':>9} {'ops/node':>9}   "
          f"{'snakemake -n':>12} {'delayed':>9} {'ops/node':>9}")
    for n in sizes:
        root = roots[n] = tmp / f"store{n}"
        start = time.perf_counter()
        runs = plan_bench.fill(ds.Store(root), [plan_bench.forecast(cfg, plan_bench.CASE)
                                               for cfg in plan_bench.configs(n)])
        filled = time.perf_counter() - start
        quick = run_child("plan", n, root)
        slow = run_child("plan", n, root, LATENCY)
        ops = ds_syscalls(n, root, tmp)
        snake: list[str] = ["", "", ""]
        if n in snake_sizes:
            fast = plan_bench.snakemake_dry_run(root, runs)
            delayed = plan_bench.snakemake_dry_run(root, runs, LATENCY)
            per_node = snake_syscalls(root, runs, tmp)
            snake = [f"{fast['seconds']:.2f} s" if isinstance(fast, dict) else str(fast),
                     f"{delayed['seconds']:.2f} s" if isinstance(delayed, dict) else "",
                     f"{per_node:.2f}" if isinstance(per_node, float) else ""]
        print(f"{n:>8} {quick['plan_s']:>7.3f} s {slow['plan_s']:>7.3f} s {ops:>9.4f}   "
              f"{snake[0]:>12} {snake[1]:>9} {snake[2]:>9}   (store filled in {filled:.0f} s; "
              f"nodes made in {quick['nodes_s']:.2f} s apart)")
    return roots


def million(tmp: Path) -> None:
    n = 1_000_000
    root = tmp / "million"
    store = ds.Store(root)
    start = time.perf_counter()
    run_child("fill-million", n, root)  # a process of its own: this one stays small
    made = time.perf_counter() - start
    got = run_child("million", n, root)
    index_mb = sum(f.stat().st_size for f in store.index_dir.rglob("*") if f.is_file()) / 1e6
    total = got["nodes_s"] + got["plan_s"]
    print(f"\n1,000,000 finished nodes, local disk: nodes {got['nodes_s']:.1f} s + plan "
          f"{got['plan_s']:.1f} s = {total:.1f} s, peak RSS {got['peak_rss_mb']} MB "
          f"(targets < 15 s, < 2 GB); index files {index_mb:.0f} MB, made in {made:.0f} s")


def listing(root: Path, n: int) -> None:
    got = run_child("runs", n, root)
    delayed = run_child("runs", n, root, LATENCY)
    print(f"\nstore.runs() of {n:,} runs through the index: {got['runs_s']:.2f} s, "
          f"{delayed['runs_s']:.2f} s with 1 ms per metadata syscall (target < 2 s)")


def env_builds(repeat: int) -> None:
    import env_build

    found = env_build.incremental(env_build.BASE.split(), env_build.CHANGED.split(), repeat,
                                  f"{sys.version_info.major}.{sys.version_info.minor}", [])
    print()
    env_build.show_incremental(found, env_build.BASE, env_build.CHANGED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--snakemake-sizes", default="10000")
    parser.add_argument("--million", action="store_true")
    parser.add_argument("--env", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="env build rounds")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, n, root = args.child
        print(json.dumps(child(mode, int(n), Path(root))))
        return
    if shutil.which("strace") is None:
        raise SystemExit("strace is needed: apt-get install strace")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    snake = [int(s) for s in args.snakemake_sizes.split(",") if s]
    print(f"command: .venv/bin/python bench/scale.py {shlex.join(sys.argv[1:])}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    with tempfile.TemporaryDirectory(prefix="ds-bench-scale-") as tmp:
        roots = planning(sizes, snake, Path(tmp))
        if args.million:
            million(Path(tmp))
        if roots:
            n = max(roots)
            listing(roots[n], n)
    if args.env:
        env_builds(args.repeat)


if __name__ == "__main__":
    main()
