"""Startup: how long a command takes as a whole process (issue 20 item 5).

Run:  .venv/bin/python bench/startup.py [--store DIR --workdir DIR] [--repeat 5]
          [--snakemake PATH] [--runs 10000] [--snake-repeat 3] [--only main|snakemake]

Timed, each as a new process, the minimum of ``--repeat`` runs (wall and CPU
seconds, user + system, of the child): ``python -c "import dscheduler"``,
``dscheduler status`` and ``dscheduler runs`` on the main job's store, and the
main job's second run (``dscheduler run recipes/forecast_eval/experiment.yaml``,
nothing to do).  Without ``--store`` the main job is first run once in a
temporary copy of the recipes (it builds three envs: minutes).  Then
Snakemake's dry run of 10,000 finished jobs (the store bench/plan.py fills)
beside dscheduler's whole process deciding the same (``dscheduler run`` of a
recipe over those runs), each the minimum of its runs, wall and CPU.  Targets
(a quiet 2-core machine): import <= 0.3 s, status and runs <= 0.5 s, second run
<= 1 s, Snakemake >= 10x slower.  The load average is printed with the figures:
on a busy machine they are upper bounds, and the CPU ratio the steadier one.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EXPERIMENT = "recipes/forecast_eval/experiment.yaml"

# The plan bench's store, as a recipe: N finished runs of one task.
RECIPE = '''
import sys
sys.path.insert(0, {bench!r})
from plan import CASE, configs, forecast

def main():
    return [forecast(cfg, CASE) for cfg in configs({runs})]
'''


def timed(cmd: list[str], cwd: Path, env: dict[str, str], repeat: int) -> tuple[float, float]:
    """(wall, cpu) seconds of ``cmd``, each the minimum over ``repeat`` runs."""
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                             check=False)
        walls.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return min(walls), min(cpus)


def show(what: str, wall: float, cpu: float, target: float) -> None:
    load = os.getloadavg()[0]
    mark = "ok" if wall <= target else "over"
    print(f"{what:<44} wall {wall:6.2f} s  cpu {cpu:6.2f} s  target <= {target:g} s "
          f"({mark}; load {load:.1f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default="", help="the main job's store (run already)")
    parser.add_argument("--workdir", default="", help="where its recipes/ are (with --store)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--snakemake", default="", help="the snakemake executable")
    parser.add_argument("--snake-repeat", type=int, default=3, help="Snakemake's runs")
    parser.add_argument("--only", choices=("main", "snakemake"), default=None,
                        help="measure only the main job's commands, or only the Snakemake "
                        "comparison")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ds-bench-startup-") as tmp:
        if args.store:
            store, workdir = Path(args.store), Path(args.workdir or ".")
        else:
            workdir = Path(tmp) / "main"
            shutil.copytree(ROOT / "recipes", workdir / "recipes",
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            store = workdir / "data"
        env = {**os.environ, "DASK_DSCHEDULER__STORE": str(store)}
        if args.only != "snakemake":
            main_job(store, workdir, env, args)
        if args.only != "main":
            snake_versus_us(Path(tmp), args)


def main_job(store: Path, workdir: Path, env: dict[str, str], args: argparse.Namespace
             ) -> None:
    """``import dscheduler``, ``status``, ``runs`` and the main job's second run."""
    dscheduler = str(BIN / "dscheduler")
    if not args.store:
        print("running the main job once (builds its envs) ...", flush=True)
        subprocess.run([dscheduler, "run", EXPERIMENT], cwd=workdir, env=env, check=True,
                       capture_output=True)
    show('python -c "import dscheduler"',
         *timed([sys.executable, "-c", "import dscheduler"], workdir, env, args.repeat), 0.3)
    show("dscheduler status (main job's store)",
         *timed([dscheduler, "status"], workdir, env, args.repeat), 0.5)
    show("dscheduler runs (main job's store)",
         *timed([dscheduler, "runs"], workdir, env, args.repeat), 0.5)
    show(f"dscheduler run {EXPERIMENT} (2nd)",
         *timed([dscheduler, "run", EXPERIMENT], workdir, env, args.repeat), 1.0)


def snake_versus_us(tmp: Path, args: argparse.Namespace) -> None:
    """Snakemake's dry run of ``args.runs`` finished jobs against ``dscheduler run``'s: each
    the minimum of its runs (Snakemake's ``--snake-repeat``), wall and CPU seconds."""
    sys.path.insert(0, str(ROOT / "bench"))
    import plan as plan_bench

    import dscheduler as ds

    root = tmp / "plan"
    runs = plan_bench.fill(ds.Store(root), [plan_bench.forecast(cfg, plan_bench.CASE)
                                            for cfg in plan_bench.configs(args.runs)])
    recipe = tmp / "finished.py"
    recipe.write_text(RECIPE.format(bench=str(ROOT / "bench"), runs=args.runs))
    env = {**os.environ, "DASK_DSCHEDULER__STORE": str(root)}
    wall, cpu = timed([str(BIN / "dscheduler"), "run", f"{recipe}:main"], tmp, env,
                      args.repeat)
    show(f"dscheduler run, {args.runs} finished jobs", wall, cpu, 1.0)
    if args.snakemake:
        os.environ["PATH"] = f"{Path(args.snakemake).parent}{os.pathsep}{os.environ['PATH']}"
    walls, cpus = [], []
    for _ in range(args.snake_repeat):
        # plan_bench dates the envs a minute back: the outputs must stay newer than that
        now = time.time()
        for env_id, config_hash in runs:
            os.utime(root / "runs" / env_id / config_hash / plan_bench.CASE / "forecast.json",
                     (now, now))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        snake = plan_bench.snakemake_dry_run(root, runs)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if isinstance(snake, str):
            print(f"snakemake -n: {snake}")
            return
        if not snake["nothing_to_do"]:
            print("snakemake -n found work to do: not comparable")
            return
        walls.append(snake["seconds"])
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    print(f"snakemake -n, same {args.runs} jobs: wall {min(walls):.2f} s, cpu {min(cpus):.2f} s; "
          f"{min(walls) / wall:.1f}x dscheduler's whole process (wall), {min(cpus) / cpu:.1f}x "
          f"(cpu); target >= 10x; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
