"""The second recipe, recipes/multi_model/, end to end on the embedded local cluster.

Real components: a local MLflow registry (SQLite, local artifacts; no server) made by
the recipe's make_registry.py, envs built from the checkpoints' metadata (numpy 2.2,
numpy 1.26: the uv cache the main job's tests fill), the `dscheduler` command line.
The tests share one copy of the recipe and one store, in order: the first run builds
everything, the next finds it, then an edited config file reruns what it should.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dscheduler as ds

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "recipes/multi_model/experiment.yaml"
CASES = ["202401010000", "202401011200", "202401021200"]  # 2024-01-02T00:00 excluded
NODES = 19  # truth, 3 analyses, 2 fetches, 6 forecasts, 3 interpolations, 3 verify, scorecard
pytestmark = pytest.mark.slow


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``command`` in ``cwd``, with no MLflow setting of the caller's: the recipe's own
    registry (beside it) is the one used."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=1200,
                          env={**base, **env}, check=False)


def dscheduler(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run([str(ROOT / ".venv" / "bin" / "dscheduler"), *args], cwd, **env)


def copy_recipe(where: Path) -> Path:
    shutil.copytree(ROOT / "recipes" / "multi_model", where / "recipes" / "multi_model",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "registry"))
    return where


def ids(experiment: Path, cwd: Path) -> dict[str, str]:
    """label -> run_id, from `dscheduler ids` (its env_id and config_hash columns, in a
    terminal wide enough that no id is shortened)."""
    out = dscheduler("ids", str(experiment), cwd=cwd, COLUMNS="200")
    assert out.returncode == 0, out.stderr[-2000:]
    found = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and all(re.fullmatch(r"[0-9a-f]{16}", p) for p in parts[1:3]):
            found[parts[0]] = f"{parts[1]}/{parts[2]}"
    return found


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the recipe with its registry made (twice: the second run adds nothing)."""
    where = copy_recipe(tmp_path_factory.mktemp("multi-model"))
    make = [sys.executable, "recipes/multi_model/make_registry.py"]
    first, again = run(make, where), run(make, where)
    assert first.returncode == 0 and again.returncode == 0, first.stderr[-2000:] + again.stderr
    assert first.stdout.count("registered toy-forecaster-") == 2, first.stdout
    assert "registered" not in again.stdout  # idempotent
    registry = where / "recipes" / "multi_model" / "registry"
    assert f"MLFLOW_TRACKING_URI=sqlite:///{registry.resolve() / 'mlflow.db'}" in again.stdout
    return where


@pytest.fixture(scope="module")
def first_run(workdir: Path) -> subprocess.CompletedProcess[str]:
    return dscheduler("run", EXPERIMENT, "--store", str(workdir / "data"), cwd=workdir)


def test_the_recipe_runs_and_tracks_its_runs(first_run: subprocess.CompletedProcess[str],
                                             workdir: Path) -> None:
    out = first_run.stdout + first_run.stderr
    assert first_run.returncode == 0, out[-4000:]
    assert f"ran {NODES} of {NODES} nodes ({NODES} succeeded); 0 cached" in out, out[-3000:]
    # fc-a, fc-b and the interpolator's env (fc-a's content, under its own env_id)
    assert "envs: 3 built" in out, out[-3000:]
    # The job kinds on the local cluster: a note, no warning.
    assert "forecast nodes asked for job: inference" in out
    assert "interpolate nodes asked for job: light" in out
    assert "warning" not in out.lower(), out[-3000:]
    assert "best run by mean RMSE: fc-b" in out
    store = ds.Store(workdir / "data")
    # The checkpoints' envs, as their registry metadata pins them.
    locks = [json.loads(p.read_text())["lock"] for p in store.envs_dir.glob("*/env.json")]
    assert len(locks) == 3 and sum("numpy==2.2.6" in lock for lock in locks) == 2
    assert sum("numpy==1.26.4" in lock for lock in locks) == 1
    # The explicit dates, one excluded.
    labels = ids(workdir / EXPERIMENT, workdir)
    assert sorted(labels) == ["fc-a", "fc-b", "interp-a"]
    for label in ("fc-a", "fc-b"):
        run_dir = store.run(labels[label]).dir
        assert sorted(p.name for p in run_dir.iterdir() if p.name.isdigit()) == CASES
        record = json.loads((run_dir / CASES[0] / "forecast.json").read_text())
        assert record["env"]["checkpoint"]["reference"].startswith("models:/toy-forecaster-")
    # Ranked by RMSE, with the scores and params every run logged.
    listed = dscheduler("runs", "--store", str(workdir / "data"), "--sort", "metrics.rmse asc",
                        "--format", "json", cwd=workdir)
    assert listed.returncode == 0, listed.stderr[-2000:]
    rows = json.loads(listed.stdout)
    assert {r["label"] for r in rows} == {"fc-a", "fc-b", "interp-a"}
    rmse = [r["metrics.rmse"] for r in rows]
    assert rmse == sorted(rmse) and all(isinstance(v, float) and v > 0 for v in rmse)
    by_label = {r["label"]: r for r in rows}
    assert rows[0]["label"] == "fc-b"
    assert by_label["interp-a"]["params.kind"] == "interpolate"
    assert by_label["interp-a"]["params.checkpoint"] == "models:/toy-forecaster-a/1"
    assert by_label["fc-a"]["params.config"] == "fc-a.yaml"
    assert by_label["fc-a"]["metrics.bias"] < 0  # its model damps the field


def _records(store: Path) -> dict[str, tuple[int, int]]:
    found = [*store.glob("runs/*/*/*/*.json"), *store.glob("tasks/*/*/*.json")]
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in found}


def test_a_second_run_has_nothing_to_do(first_run: subprocess.CompletedProcess[str],
                                        workdir: Path) -> None:
    assert first_run.returncode == 0
    before = _records(workdir / "data")
    again = dscheduler("run", EXPERIMENT, "--store", str(workdir / "data"), cwd=workdir)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"nothing to run: all {NODES} nodes were cached" in again.stdout, again.stdout
    assert "built" not in again.stdout and "warning" not in again.stderr.lower()
    assert _records(workdir / "data") == before


def test_the_interpolator_follows_its_forecasters_config_not_its_label(
        first_run: subprocess.CompletedProcess[str], workdir: Path,
        tmp_path: Path) -> None:
    """The interpolator's run_id moves when the forecaster's config file changes, not when
    the forecaster's label does; an edited config reruns fc-a and the run on it only."""
    assert first_run.returncode == 0
    experiment = workdir / EXPERIMENT
    before = ids(experiment, workdir)
    # A new label (for the forecaster and where the interpolator names it): same ids.
    relabelled = copy_recipe(tmp_path / "relabel") / EXPERIMENT
    text = experiment.read_text()
    assert "label: fc-a\n" in text and "forecaster: fc-a " in text
    relabelled.write_text(text.replace("label: fc-a\n", "label: fc-alpha\n")
                          .replace("forecaster: fc-a ", "forecaster: fc-alpha "))
    after = ids(relabelled, relabelled.parent)
    assert after["fc-alpha"] == before["fc-a"] and after["interp-a"] == before["interp-a"]
    # An edited config file: fc-a and the interpolator move, fc-b does not.
    config = workdir / "recipes" / "multi_model" / "configs" / "fc-a.yaml"
    config.write_text(config.read_text().replace("lead_hours: 48", "lead_hours: 36"))
    edited = ids(experiment, workdir)
    assert edited["fc-a"] != before["fc-a"] and edited["interp-a"] != before["interp-a"]
    assert edited["fc-b"] == before["fc-b"]
    assert edited["fc-a"].split("/")[0] == before["fc-a"].split("/")[0]  # same env
    rerun = dscheduler("run", EXPERIMENT, "--store", str(workdir / "data"), cwd=workdir)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    # fc-a's 3 forecasts, the 3 interpolations, 2 verifications, the scorecard
    assert f"ran 9 of {NODES} nodes (9 succeeded); 10 cached" in rerun.stdout, rerun.stdout
    assert "built" not in rerun.stdout


@pytest.mark.slurm
def test_the_recipe_on_slurm_with_its_job_kinds(slurm_one_node: str,
                                                tmp_path: Path) -> None:
    """On SLURM, with the recipe's kinds (recipes/multi_model/dask/jobkinds.yaml):
    forecasts run in `inference` jobs (a GPU each), interpolations in `light` jobs.
    On the one-node cluster: its envs (numpy 2.2 and 1.26) come from the package index,
    which the multi-node cluster's nodes cannot reach."""
    slurm_available = slurm_one_node
    where = copy_recipe(tmp_path)
    made = run([sys.executable, "recipes/multi_model/make_registry.py"], where)
    assert made.returncode == 0, made.stderr[-2000:]
    ran = dscheduler("run", EXPERIMENT, "--store", str(where / "data"), "--cluster", "slurm",
                     "--no-progress", cwd=where,
                     DASK_CONFIG=str(where / "recipes" / "multi_model" / "dask"),
                     DASK_DSCHEDULER__SLURM__PARTITION=slurm_available)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert f"ran {NODES} of {NODES} nodes ({NODES} succeeded)" in ran.stdout, ran.stdout
    assert "best run by mean RMSE: fc-b" in ran.stdout
    store = where / "data"
    logs = {}
    for task in ("forecast", "interpolate"):
        attempts = [a for p in store.glob(f"runs/*/*/*/{task}.json")
                    for a in json.loads(p.read_text())["attempts"]]
        assert attempts and all(a.get("slurm_job_id") for a in attempts), task
        logs[task] = {Path(str(a.get("worker_log"))).name for a in attempts}
    # worker logs are named after their job: dscheduler-{kind}-{cluster}-{job id}.log
    assert all(n.startswith("dscheduler-inference-") for n in logs["forecast"]), logs
    assert all(n.startswith("dscheduler-light-") for n in logs["interpolate"]), logs
    jobs = {a.get("slurm_job_id") for p in store.glob("runs/*/*/*/*.json")
            for a in json.loads(p.read_text()).get("attempts", [])}
    queue = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                           check=False)
    assert not (set(queue.stdout.split()) & jobs), "jobs left in the queue"
