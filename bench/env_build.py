"""Env build time: dscheduler against the same steps by hand, and against pip.

Run:  .venv/bin/python bench/env_build.py [--packages "numpy xarray"] [--repeat 3]
      .venv/bin/python bench/env_build.py --heavy      # torch 2.13.0 CPU from /opt/wheels
      .venv/bin/python bench/env_build.py --incremental [--base "..."] [--changed "..."]

In one invocation, with a warm uv cache (one warm-up install first):

* by hand: ``uv venv --relocatable``, ``uv pip install``, ``compileall`` as in
  docs/design.md §6 (plus ``-j0``, as dscheduler runs it), and
  ``mksquashfs -comp zstd -Xcompression-level 3`` with the reproducible flags;
* dscheduler: ``build_env`` into a fresh store (the same steps plus the lease,
  ``uv pip freeze``, the import smoke test, mode normalisation, fsync and the
  publish renames);
* pip: ``python -m venv`` + ``pip install`` (pip compiles .pyc itself; no image),
  with pip's cache warmed by one install first;
* reuse: ``build_env`` of the published env + ``ds.mount`` enter/exit.

dscheduler builds here run without the bytecode cache (``pyc_cache=False``):
they do the same steps as by hand.  ``--incremental`` measures the cache
instead (:func:`incremental`): an env that differs from a built one in one
package (``--changed``, default xarray 2026.7.0 instead of 2026.9.0), built
cold and after ``--base`` filled the cache, uv's cache warm in both.
Target: incremental / cold <= 0.35, and the same image bytes.  CPU seconds
(this process and its children) are shown beside the wall times: they vary
less with other work on the machine.  Each timed build starts 0.5 s after
the last one, whose scratch dir is removed in a thread after it returns.

Targets (docs/design.md §10): dscheduler / by hand <= 1.1; reuse < 0.1 s.  The pip
ratio is reported.  Medians over ``--repeat`` rounds, the three builds
interleaved in each round.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dscheduler as ds
from dscheduler.envs.build import build_env
from dscheduler.envs.interpreters import find_interpreter
from dscheduler.envs.uv import uv_bin

HEAVY = ["torch==2.13.0", "numpy"]


def run(cmd: list[str | Path], env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)
        ) -> None:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, check=False)
    if out.returncode not in ok:
        sys.exit(f"failed ({out.returncode}): {shlex.join(map(str, cmd))}\n{out.stderr[-3000:]}")


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(cmd: list[str | Path], env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)
          ) -> float:
    start = time.perf_counter()
    run(cmd, env, ok)
    return time.perf_counter() - start


def by_hand(work: Path, python: Path, packages: list[str], index: list[str], cache: Path,
            level: int) -> dict[str, float]:
    venv, image = work / "env", work / "env.sqsh"
    uv = uv_bin()
    steps = {
        "venv": timed([uv, "venv", "-q", "--relocatable", "--no-python-downloads",
                       "--python", python, venv]),
        "install": timed([uv, "pip", "install", "-q", "--python", venv / "bin" / "python",
                          "--cache-dir", cache, *index, *packages]),
        "compile": timed([venv / "bin" / "python", "-m", "compileall", "-q", "-j0",
                          "-s", venv, "-p", "/env", "--invalidation-mode", "unchecked-hash",
                          venv / "lib"], env={"SOURCE_DATE_EPOCH": "0"},
                         ok=(0, 1)),  # 1: some files do not compile (torch has such)
        "squash": timed(["mksquashfs", venv, image, "-noappend", "-no-progress", "-comp", "zstd",
                         "-Xcompression-level", str(level), "-all-time", "0", "-mkfs-time", "0",
                         "-force-uid", "0", "-force-gid", "0"]),
    }
    steps["total"] = sum(steps.values())
    return steps


def with_pip(work: Path, python: Path, packages: list[str], index: list[str]) -> float:
    venv = work / "pipenv"
    start = time.perf_counter()
    run([python, "-m", "venv", venv])
    run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
         *index, *packages])
    return time.perf_counter() - start


BASE = "numpy==2.4.6 xarray==2026.9.0"
CHANGED = "numpy==2.4.6 xarray==2026.7.0"


def incremental(base_packages: list[str], changed_packages: list[str], repeat: int,
                python: str, find_links: list[str]) -> dict[str, Any]:
    """Cold against incremental builds of ``changed_packages`` (see the module docstring).

    Each round builds the changed env cold (an empty bytecode cache), and
    again into another store after the base env filled a fresh cache; the
    two builds alternate which goes first.  Returns medians and per-round
    figures; ``same_image`` says whether every warm image had the cold one's
    bytes.
    """
    work = Path(tempfile.mkdtemp(prefix="dscheduler-bench-incr-"))
    uv_cache, scratch = work / "uv-cache", work / "scratch"
    base = ds.Env(python=python, requirements=base_packages, find_links=find_links)
    changed = ds.Env(python=python, requirements=changed_packages, find_links=find_links)

    cpu: dict[str, list[float]] = {"cold": [], "warm": []}

    def build(name: str, env: ds.Env, cache: Path | bool, kind: str = ""
              ) -> tuple[float, ds.BuiltEnv]:
        if kind:
            time.sleep(0.5)  # the last build's scratch dir is removed in a thread: let it end
        before, start = cpu_seconds(), time.perf_counter()
        built = build_env(ds.Store(work / name), env, uv_cache=uv_cache, scratch=scratch,
                          pyc_cache=cache)
        took = time.perf_counter() - start
        if kind:
            # Children are counted once waited for: all of a build's are by its return.
            cpu[kind].append(cpu_seconds() - before)
        return took, built

    try:
        build("warm-base", base, False)  # fills uv's cache (and the page cache)
        build("warm-changed", changed, False)
        cold, warm, rounds = [], [], []
        for r in range(repeat):
            def cold_build(r: int = r) -> tuple[float, ds.BuiltEnv]:
                return build(f"cold{r}", changed, work / f"empty{r}", "cold")

            def warm_build(r: int = r) -> tuple[float, ds.BuiltEnv]:
                build(f"base{r}", base, work / f"cache{r}")
                return build(f"warm{r}", changed, work / f"cache{r}", "warm")

            if r % 2:
                (tw, w), (tc, c) = warm_build(), cold_build()
            else:
                (tc, c), (tw, w) = cold_build(), warm_build()
            cold.append(tc)
            warm.append(tw)
            assert c.image is not None and w.image is not None
            rounds.append({"cold": c.record["timings"], "warm": w.record["timings"],
                           "cache": w.record["bytecode_cache"],
                           "same_image": c.image.read_bytes() == w.image.read_bytes()})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = statistics.median
    return {"cold_s": med(cold), "warm_s": med(warm), "ratio": med(warm) / med(cold),
            "cold": cold, "warm": warm, "rounds": rounds,
            "cold_cpu": med(cpu["cold"]), "warm_cpu": med(cpu["warm"]),
            "same_image": all(r["same_image"] for r in rounds)}


def show_incremental(found: dict[str, Any], base: str, changed: str) -> None:
    phases = ["install", "compile", "smoke", "squash"]
    rounds = found["rounds"]

    def phase(kind: str, name: str) -> float:
        return statistics.median(r[kind].get(name, 0) for r in rounds)

    print(f"incremental build: base {base!r}, changed {changed!r}, uv cache warm "
          "(median s; the smoke test runs beside compile and squash)")
    for kind, label in (("cold", "cold (empty bytecode cache)"),
                        ("warm", "incremental (cache filled) ")):
        print(f"  {label} {found[kind + '_s']:.2f} s, {found[kind + '_cpu']:.2f} CPU s   ("
              + ", ".join(f"{p} {phase(kind, p):.2f}" for p in phases) + ")")
    cache = rounds[-1]["cache"]
    print(f"  .pyc restored {cache['cached']} of {cache['sources']}, compiled "
          f"{cache['sources'] - cache['cached']}; rounds cold "
          + ", ".join(f"{t:.2f}" for t in found["cold"]) + "; incremental "
          + ", ".join(f"{t:.2f}" for t in found["warm"]))
    print(f"  incremental / cold = {found['ratio']:.2f} (target <= 0.35), CPU seconds "
          f"{found['warm_cpu'] / found['cold_cpu']:.2f}; same image bytes: "
          f"{found['same_image']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packages", default="numpy xarray")
    parser.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reuse-repeat", type=int, default=30)
    parser.add_argument("--heavy", action="store_true",
                        help="torch 2.13.0 CPU + numpy, torch from --find-links /opt/wheels")
    parser.add_argument("--find-links", default="/opt/wheels")
    parser.add_argument("--no-pip", action="store_true", help="skip the pip comparison")
    parser.add_argument("--no-smoke", action="store_true",
                        help="dscheduler without its import smoke test (smoke_imports=[])")
    parser.add_argument("--incremental", action="store_true",
                        help="cold against incremental builds of an env one package apart")
    parser.add_argument("--base", default=BASE)
    parser.add_argument("--changed", default=CHANGED)
    args = parser.parse_args()
    if args.incremental:
        print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        found = incremental(args.base.split(), args.changed.split(), args.repeat, args.python,
                            [args.find_links] if args.heavy else [])
        show_incremental(found, args.base, args.changed)
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print("\nreproduce: .venv/bin/python bench/env_build.py " + shlex.join(sys.argv[1:]))
        return

    packages = HEAVY if args.heavy else args.packages.split()
    links = [args.find_links] if args.heavy else []
    index = [x for link in links for x in ("--find-links", link)]
    python = find_interpreter(args.python).path
    level = int(ds.settings.get("env.compression_level"))
    base = Path(tempfile.mkdtemp(prefix="dscheduler-bench-"))
    cache = base / "uv-cache"
    env = ds.Env(python=args.python, requirements=packages, find_links=links)
    print(f"packages: {' '.join(packages)}; python {python}; zstd level {level}; "
          f"{os.cpu_count()} cores; work dir {base}")
    try:
        warm = base / "warm"
        by_hand(warm, python, packages, index, cache, level)  # fills the uv cache
        if not args.no_pip:
            with_pip(warm, python, packages, index)  # fills pip's cache
        shutil.rmtree(warm)

        hand, dsched, pip, phases = [], [], [], []
        cpu: dict[str, list[float]] = {"hand": [], "ds": []}
        store = None

        def hand_round(r: int) -> None:
            work = base / f"hand{r}"
            before = cpu_seconds()
            hand.append(by_hand(work, python, packages, index, cache, level))
            cpu["hand"].append(cpu_seconds() - before)
            shutil.rmtree(work)

        def ds_round(r: int) -> ds.BuiltEnv:
            nonlocal store
            if store is not None:
                shutil.rmtree(store.root)
            store = ds.Store(base / f"store{r}")
            before, start = cpu_seconds(), time.perf_counter()
            built = build_env(store, env, uv_cache=cache, scratch=base / "scratch",
                              smoke_imports=[] if args.no_smoke else None, pyc_cache=False)
            dsched.append(time.perf_counter() - start)
            cpu["ds"].append(cpu_seconds() - before)
            phases.append(built.record["timings"])
            return built

        for r in range(args.repeat):
            # Alternate which goes first: neither always gets the warmer page cache.
            if r % 2:
                built = ds_round(r)
                hand_round(r)
            else:
                hand_round(r)
                built = ds_round(r)
            if not args.no_pip:
                work = base / f"pip{r}"
                pip.append(with_pip(work, python, packages, index))
                shutil.rmtree(work)
        assert store is not None

        reuse = []
        for _ in range(args.reuse_repeat):
            start = time.perf_counter()
            with ds.mount(build_env(store, env)) as prefix:
                pass
            reuse.append(time.perf_counter() - start)
        still_mounted = (prefix / "pyvenv.cfg").exists()  # the last one out unmounts
    finally:
        shutil.rmtree(base, ignore_errors=True)

    med = statistics.median
    hand_total = med(h["total"] for h in hand)
    ds_total = med(dsched)
    print("\nby hand (median s):  " + "  ".join(
        f"{k} {med(h[k] for h in hand):.2f}" for k in ("venv", "install", "compile", "squash")
    ) + f"  = {hand_total:.2f}")
    order = ["lease_wait", "venv", "install", "freeze", "compile", "smoke", "squash"]
    keys = [k for k in order if k in phases[0]]
    print("dscheduler (median s): " + "  ".join(f"{k} {med(p[k] for p in phases):.2f}"
                                                for k in keys)
          + f"  = {ds_total:.2f} (wall, build_env call)")
    print(f"image: {built.record['sizes']['image_bytes'] / 1e6:.1f} MB, "
          f"{built.record['sizes']['files']} files, "
          f"{built.record['sizes']['venv_bytes'] / 1e6:.0f} MB unpacked")
    print("rounds (s): by hand " + ", ".join(f"{h['total']:.2f}" for h in hand)
          + "; dscheduler " + ", ".join(f"{t:.2f}" for t in dsched))
    print(f"\ndscheduler / by hand = {ds_total / hand_total:.2f}   (target <= 1.1; wall, medians)")
    print(f"  best rounds: {min(dsched):.2f} / {min(h['total'] for h in hand):.2f} = "
          f"{min(dsched) / min(h['total'] for h in hand):.2f}; CPU seconds (median): "
          f"{med(cpu['ds']):.2f} / {med(cpu['hand']):.2f} = "
          f"{med(cpu['ds']) / med(cpu['hand']):.2f}")
    if pip:
        uv_only = med(h["venv"] + h["install"] for h in hand)
        print(f"pip venv+install      = {med(pip):.2f} s: {med(pip) / ds_total:.1f}x dscheduler's "
              f"whole build, {med(pip) / uv_only:.1f}x uv venv+install ({uv_only:.2f} s)")
    print(f"reuse (build_env on a published env + mount enter/exit, {args.reuse_repeat} times): "
          f"median {med(reuse) * 1000:.0f} ms, max {max(reuse) * 1000:.0f} ms   (target < 100 ms)")
    if still_mounted:
        print("warning: the image was still mounted after the last mount exited")
    print("\nreproduce: .venv/bin/python bench/env_build.py " + shlex.join(sys.argv[1:]))


if __name__ == "__main__":
    main()
