"""The README's main job, as a whole process: local disk, three SLURM nodes, slowfs.

Run:  .venv/bin/python bench/main_job.py [--delay-ms 1] [--find-links WHEELS]

Each variant runs ``dscheduler run recipes/forecast_eval/experiment.yaml --store S`` (51
nodes, 3 envs) in a new store S, then again (nothing to do), and prints both wall times
with their ratio to (a):

(a) the embedded local cluster, the store on local disk (the baseline);
(b) ``--cluster slurm`` on the 3-node cluster of ``DSCHEDULER_SLURM_NODES=3 ci/slurm/up``
    (started here when ``sinfo`` does not answer; its SLURM_CONF and the Dask interface
    from /etc/slurm-nodes/nodes.json), the store under /var/tmp, which the nodes see;
(c) the embedded local cluster, the store on tests/slowfs.py (1 ms per metadata op).

A first run builds the three envs in the new store (dscheduler keeps envs per store;
there is no reuse across stores), each variant from cold node-local caches of its own
(uv, bytecode), so the first runs compare alike.  A third column runs in another new
store whose envs ``dscheduler envs build`` made beforehand (not timed).  Packages come
from a local wheel directory (UV_FIND_LINKS, UV_OFFLINE) in every variant: the nodes
have no route to the package index (docs/design.md §9).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psutil
from slowfs import slow  # the same mount as bench/slowfs.py

import dscheduler as ds

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = "recipes/forecast_eval/experiment.yaml"
CLI = str(Path(sys.executable).with_name("dscheduler"))
NODES_INFO = Path("/etc/slurm-nodes/nodes.json")
TIMEOUT = 900  # seconds one `dscheduler` call may take before the bench gives up


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_cli(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of one whole ``dscheduler`` process, and its output; its process
    group is killed if it overruns (a SLURM driver's reaper then cancels its jobs)."""
    start = time.perf_counter()
    proc = subprocess.Popen([CLI, *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise SystemExit(f"dscheduler {' '.join(argv)} took over {TIMEOUT} s:\n{out}") from None
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"dscheduler {' '.join(argv)} exited {proc.returncode}:\n{out}")
    return seconds, out


def job(store: Path, env: dict[str, str], cluster: list[str]) -> tuple[float, float]:
    """First run and the nothing-to-do run of the main job in ``store``."""
    first, out = run_cli(["run", EXPERIMENT, "--store", str(store), "--no-progress",
                          *cluster], env)
    if "(51 succeeded)" not in out:
        raise SystemExit(f"first run in {store} did not run all 51 nodes:\n{out}")
    again, out = run_cli(["run", EXPERIMENT, "--store", str(store), "--no-progress",
                          *cluster], env)
    if "nothing to run" not in out:
        raise SystemExit(f"second run in {store} was not a no-op:\n{out}")
    return first, again


def prebuilt(store: Path, env: dict[str, str], host_env: dict[str, str],
             cluster: list[str]) -> float:
    """The first run in a new store whose envs were built beforehand, on this host."""
    run_cli(["envs", "build", EXPERIMENT, "--store", str(store), "--quiet"], host_env)
    seconds, out = run_cli(["run", EXPERIMENT, "--store", str(store), "--no-progress",
                            *cluster], env)
    if "(51 succeeded)" not in out or "envs: 3 reused" not in out:
        raise SystemExit(f"run with pre-built envs in {store}:\n{out}")
    return seconds


def where(store: Path) -> str:
    """Env builds (summed build seconds, builder hosts) and the hosts that ran the nodes."""
    builds = [json.loads(p.read_text()) for p in store.glob("envs/*/env.json")]
    total = sum(b["timings"]["total"] for b in builds)
    env_hosts = ",".join(sorted({b["host"] for b in builds}))
    hosts = ds.Store(store).runs(by="node")["host"].value_counts().sort_index()
    ran = " ".join(f"{h}:{n}" for h, n in hosts.items())
    return f"{len(builds)} envs in {total:.0f} s on {env_hosts}; nodes on {ran}"


# -- the 3-node SLURM cluster --------------------------------------------------------


def slurm_nodes() -> dict[str, str]:
    """SLURM_CONF and the interface of the 3-node cluster, brought up when needed."""
    conf = "/etc/slurm-nodes/slurm.conf"
    env = {**os.environ, "SLURM_CONF": conf}
    if subprocess.run(["sinfo", "-h"], env=env, capture_output=True, timeout=30).returncode \
            or not NODES_INFO.exists():
        subprocess.run([str(REPO / "ci" / "slurm" / "up")], check=True, timeout=300,
                       env={**os.environ, "DSCHEDULER_SLURM_NODES": "3"})
    info = json.loads(NODES_INFO.read_text())
    return {"SLURM_CONF": info["slurm_conf"],
            "DASK_DSCHEDULER__SLURM__INTERFACE": info["interface"]}


def cancel_leftovers(stores: list[Path], env: dict[str, str]) -> list[str]:
    """Cancel this bench's jobs still queued (ids from the stores' worker log names)."""
    ours = {log.stem.rsplit("-", 1)[-1] for store in stores
            for log in store.glob("slurm/logs/*.log")}
    queued = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True,
                            text=True, timeout=60).stdout.split()
    left = sorted(ours & set(queued))
    if left:
        subprocess.run(["scancel", *left], env=env, timeout=60, check=False)
    return left


def node_roots() -> list[Path]:
    """Each running node's root seen from the host (its pid 1 is ``dsnode-init NODE``)."""
    roots = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "dsnode-init":
            status = Path(f"/proc/{proc.pid}/status").read_text()
            if any(line.split()[-1] == "1" for line in status.splitlines()
                   if line.startswith("NSpid:")):
                roots.append(Path(f"/proc/{proc.pid}/root"))
    return roots


@contextmanager
def caches(prefix: str, roots: list[Path]) -> Iterator[dict[str, str]]:
    """Fresh node-local uv and bytecode caches (``/tmp/{prefix}-*`` on the host and on
    every node, since /tmp is each node's own), removed afterwards."""
    try:
        yield {"DASK_DSCHEDULER__ENV__UV_CACHE": f"/tmp/{prefix}-uv",
               "DASK_DSCHEDULER__ENV__PYC_CACHE": f"/tmp/{prefix}-pyc"}
    finally:
        for root in roots:
            for path in (root / "tmp").glob(f"{prefix}-*"):
                shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay-ms", type=float, default=1.0)
    parser.add_argument("--find-links", default=os.environ.get("UV_FIND_LINKS"),
                        help="a directory of wheels every variant installs from, offline "
                             "(numpy, scipy): the nodes have no route to the package index; "
                             "default $UV_FIND_LINKS, else the index (then (b) cannot build)")
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    args = parser.parse_args()
    print(f"load before: {load()}  ({os.cpu_count()} CPUs)", flush=True)
    # not under /tmp: the nodes' /tmp is their own
    base = Path(tempfile.mkdtemp(prefix="ds-bench-mainjob-", dir="/var/tmp"))
    token = base.name
    packages = {"UV_OFFLINE": "1", "UV_FIND_LINKS": args.find_links} if args.find_links else {}
    slurm = slurm_nodes()
    roots = [Path("/"), *node_roots()]
    slurm_env = {**os.environ, **packages, **slurm}
    local = ["--cluster", "local"]
    rows: dict[str, tuple[float, float, float, str]] = {}
    try:
        with ExitStack() as stack:
            host = stack.enter_context(caches(f"{token}-host", roots))
            host_env = {**os.environ, **packages, **host}
            mnt = stack.enter_context(slow(base / "slow-backing", base / "slow",
                                           args.delay_ms))
            variants = [("(a) local cluster, local disk", base / "a", local, {}),
                        ("(b) SLURM, 3 nodes, /var/tmp", base / "b", ["--cluster", "slurm"],
                         slurm),
                        (f"(c) local cluster, slowfs {args.delay_ms:g} ms", mnt / "c", local,
                         {})]
            for name, root, cluster, extra in variants:
                with caches(f"{token}-{root.name}", roots) as cold:
                    env = {**os.environ, **packages, **extra, **cold}
                    try:
                        first, again = job(root / "store", env, cluster)
                        # the pre-built variant: envs built on this host (caches of its own)
                        pre = prebuilt(root / "prebuilt", {**env, **host}, host_env, cluster)
                    except SystemExit as failed:  # the other variants still run
                        print(f"{name}: FAILED\n{failed}", flush=True)
                        continue
                rows[name] = (first, again, pre, where(root / "store"))
                print(f"{name}: first {first:.1f} s, again {again:.2f} s, envs pre-built "
                      f"{pre:.1f} s (load {load()})", flush=True)
    finally:
        left = cancel_leftovers([base / "b" / "store", base / "b" / "prebuilt"], slurm_env)
        if left:
            print(f"cancelled this bench's jobs still queued: {' '.join(left)}")
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    report(rows)


def report(rows: dict[str, tuple[float, float, float, str]]) -> None:
    print(f"\n`dscheduler run {EXPERIMENT} --store S` (whole process, wall seconds; "
          f"ratio to (a)); load after: {load()}")
    print(f"{'':34} {'first run':>10} {'ratio':>6} {'again':>7} {'ratio':>6} "
          f"{'envs pre-built':>15} {'ratio':>6}")
    if not rows:
        return
    a = next(iter(rows.values()))
    for name, (first, again, pre, _) in rows.items():
        print(f"{name:34} {first:>9.1f}s {first / a[0]:>6.2f} {again:>6.2f}s "
              f"{again / a[1]:>6.2f} {pre:>14.1f}s {pre / a[2]:>6.2f}")
    print("\nfirst runs: env builds (summed; they overlap the other tasks) and where nodes ran")
    for name, row in rows.items():
        print(f"{name:34} {row[3]}")


if __name__ == "__main__":
    main()
