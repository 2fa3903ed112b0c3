"""Deciding "nothing to do": dscheduler's plan against Snakemake's dry run.

Run:  .venv/bin/python bench/plan.py [--runs 10000] [--big 100000] [--keep DIR]

Shape (docs/design.md §10): N finished runs over 10 envs, one case each.  The
store is filled the way the executor leaves a finished node (record JSON,
value JSON, ``.done`` link, index entry; env.json per env), without running
anything.  bench/scale.py reuses this store under injected latency.

Timed, in process: making the nodes (one task call per run), ``ds.plan``,
and ``ds.compute`` (which must return without starting a cluster).  The
target (<= 0.3 s for 10,000) is for nodes + plan; making the RunConfigs is
the experiment loader's cost and is shown apart.  The big case (100,000 runs,
<= 3 s and <= 500 MB peak RSS) runs in a child process so that its peak RSS
is its own.

Snakemake (the ``bench`` extra; skipped with a message when missing) dry-runs
the equivalent Snakefile, two rules (build_env per env, run per config), on
the same files, with ``--rerun-triggers mtime`` (the cheapest check it has).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import dscheduler as ds
from dscheduler.store.index import run_entry

ENVS = 10
CASE = "c0"


class Run(ds.RunConfig):
    ENV_FIELDS: ClassVar = ("checkpoint",)
    checkpoint: str
    member: int = 0
    steps: str = "0/120/6"
    label: str = ""

    def env(self) -> ds.Env:  # never called when nothing is to run
        return ds.Env(image="dir")


@ds.task(version="1")
def forecast(cfg: Run, init_time: str) -> None: ...


def configs(n: int) -> list[Run]:
    return [Run(checkpoint=f"ckpt/{i % ENVS}.pt", member=i) for i in range(n)]


def fill(store: ds.Store, nodes: list[ds.Node]) -> list[tuple[str, str]]:
    """Make every node look finished; returns (env_id, config_hash) per run.

    The files are those the executor leaves; the index gets the entries its
    workers would have written, then one compaction, as after a long session.
    """
    store.ensure()
    runs = []
    envs = set()
    entries = []
    for node in nodes:
        cfg = node.cfg
        assert cfg is not None
        if cfg.env_id not in envs:
            envs.add(cfg.env_id)
            env = store.env(cfg.env_id)
            env.dir.mkdir(parents=True, exist_ok=True)
            env.record.write_text(json.dumps({"env_id": cfg.env_id}))
        paths = node.paths(store)
        paths.dir.mkdir(parents=True, exist_ok=True)
        (paths.dir.parent / "run.json").write_text(json.dumps({"run_id": cfg.run_id}))
        paths.value.write_text("null\n")
        record = {"key": node.key, "state": "succeeded", "run_id": cfg.run_id,
                  "output": {"kind": "json", "path": paths.value.name}, "attempts": []}
        paths.record.write_text(json.dumps(record))
        os.symlink(node.key, paths.done)
        entries.append(store.index.entry(paths, record))
        entries.append(run_entry(store, {"run_id": cfg.run_id, "env_id": cfg.env_id}))
        runs.append((cfg.env_id, cfg.config_hash))
    store.index.append(entries)
    store.index.compact()
    return runs


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM).  Not ``ru_maxrss``: after fork and
    exec that keeps the parent's peak, and a parent that filled a big store has one."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def measure(n: int, root: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    cfgs = configs(n)
    t1 = time.perf_counter()
    nodes = [forecast(cfg, CASE) for cfg in cfgs]
    t2 = time.perf_counter()
    store = ds.Store(root)
    if not (root / "runs").exists():
        fill(store, nodes)
    t3 = time.perf_counter()
    p = ds.plan(nodes, store=store)
    t4 = time.perf_counter()
    results = ds.compute(nodes, store=store, progress=False)
    t5 = time.perf_counter()
    if not p.nothing_to_do or results.counts() != {"cached": n}:
        raise SystemExit(f"expected nothing to do, got {p.summary()}")
    from dscheduler.run import clusters as cluster

    if cluster._local is not None:
        raise SystemExit("ds.compute started a cluster for a finished graph")
    return {
        "runs": n,
        "configs_s": round(t1 - t0, 3),
        "nodes_s": round(t2 - t1, 3),
        "plan_s": round(t4 - t3, 3),
        "compute_s": round(t5 - t4, 3),
        "decide_s": round((t2 - t1) + (t4 - t3), 3),
        "peak_rss_mb": peak_rss_mb(),
    }


SNAKEFILE = """
import json
RUNS = json.load(open(config["runs"]))
rule all:
    input: [f"runs/{e}/{c}/c0/forecast.json" for e, c in RUNS]
rule build_env:
    output: "envs/{env}/env.json"
    shell: "touch {output}"
rule run:
    input: "envs/{env}/env.json"
    output: "runs/{env}/{cfg}/c0/forecast.json"
    shell: "touch {output}"
"""


def snakemake_dry_run(root: Path, runs: list[tuple[str, str]], wrap: list[str] | None = None
                      ) -> dict[str, Any] | str:
    """Snakemake's dry run of ``runs`` over the store at ``root``; ``wrap`` goes in front
    of the command (``strace ...``)."""
    exe = shutil.which("snakemake") or str(Path(sys.executable).with_name("snakemake"))
    if not Path(exe).exists():
        return "skipped: snakemake not installed (pip install -e '.[bench]')"
    # Outputs must be newer than their inputs for Snakemake to call them done.
    now = time.time()
    for env in {e for e, _ in runs}:
        os.utime(root / "envs" / env / "env.json", (now - 60, now - 60))
    (root / "runs.json").write_text(json.dumps(runs))
    (root / "Snakefile").write_text(SNAKEFILE)
    cmd = [*(wrap or []), exe, "-n", "--cores", "1", "--rerun-triggers", "mtime", "--quiet",
           "all", "--config", f"runs={root / 'runs.json'}", "-s", str(root / "Snakefile"),
           "-d", str(root)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    took = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if out.returncode != 0:
        return f"failed ({out.returncode}): {out.stderr[-500:]}"
    nothing = "Nothing to be done" in out.stdout + out.stderr or not out.stdout.strip()
    return {"seconds": round(took, 2), "peak_rss_mb": round(max(rss, before) / 1024, 1),
            "nothing_to_do": nothing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--big", type=int, default=100_000, help="0 skips the big case")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--root", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, Path(args.root))))
        return

    with tempfile.TemporaryDirectory(prefix="ds-bench-plan-") as tmp:
        root = Path(tmp) / "small"
        store = ds.Store(root)
        runs = fill(store, [forecast(cfg, CASE) for cfg in configs(args.runs)])
        # A fresh process for the timing: nothing warmed by filling the store.
        small = json.loads(subprocess.run(
            [sys.executable, __file__, "--child", str(args.runs), "--root", str(root)],
            capture_output=True, text=True, check=True).stdout)
        print(f"dscheduler, {args.runs} finished runs over {ENVS} envs: "
              f"decide {small['decide_s']} s (nodes {small['nodes_s']} s + plan "
              f"{small['plan_s']} s; ds.compute {small['compute_s']} s, no cluster started; "
              f"configs {small['configs_s']} s apart); target <= 0.3 s")
        snake = snakemake_dry_run(root, runs)
        if isinstance(snake, dict):
            ratio = snake["seconds"] / max(small["decide_s"], 1e-9)
            print(f"snakemake -n, same files: {snake['seconds']} s, {snake['peak_rss_mb']} MB "
                  f"(nothing to do: {snake['nothing_to_do']}); dscheduler {ratio:.0f}x faster "
                  "(target >= 20x)")
        else:
            print(f"snakemake -n: {snake}")
        if args.big:
            big_root = Path(tmp) / "big"
            fill(ds.Store(big_root), [forecast(cfg, CASE) for cfg in configs(args.big)])
            big = json.loads(subprocess.run(
                [sys.executable, __file__, "--child", str(args.big), "--root", str(big_root)],
                capture_output=True, text=True, check=True).stdout)
            print(f"dscheduler, {args.big} finished runs: decide {big['decide_s']} s (nodes "
                  f"{big['nodes_s']} s + plan {big['plan_s']} s), configs {big['configs_s']} s, "
                  f"peak RSS {big['peak_rss_mb']} MB; target <= 3 s, <= 500 MB")


if __name__ == "__main__":
    main()
