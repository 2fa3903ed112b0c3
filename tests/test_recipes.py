"""The main job, the quickstart notebook and the sweep, end to end.

The README's first command runs exactly as written (from the repository
root, its store pointed at a temporary directory through the setting
``store``), with real envs from the package registry: numpy 1.26, numpy 2,
numpy 2 with scipy.  The tests of this module share that store, in order:
the first run builds everything, the next ones find it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
import xarray as xr
from nbclient import NotebookClient

import dscheduler as ds

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def readme_first_command() -> str:
    """The first line of the README's first ```bash block, without its comment."""
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block is not None
    return block.group(1).splitlines()[0].split("#")[0].strip()


def run(command: str, store: Path, cwd: Path = ROOT,
        **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=1200,
        env={**os.environ, "DASK_DSCHEDULER__STORE": str(store), **env}, check=False,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the recipes and the notebook, with its store at ``data/``."""
    where = tmp_path_factory.mktemp("main-job")
    for part in ("recipes", "notebooks"):
        shutil.copytree(ROOT / part, where / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return where


@pytest.fixture(scope="module")
def main_job(workdir: Path) -> subprocess.CompletedProcess[str]:
    command = readme_first_command()
    assert command == ("ci/setup && .venv/bin/dscheduler run "
                       "recipes/forecast_eval/experiment.yaml")
    return run(command, workdir / "data")


def test_the_readme_first_command_runs_the_main_job(
    main_job: subprocess.CompletedProcess[str], workdir: Path
) -> None:
    assert main_job.returncode == 0, main_job.stdout[-3000:] + main_job.stderr[-3000:]
    out = main_job.stdout
    assert "ran 51 of 51 nodes (51 succeeded); 0 cached" in out, out
    assert "envs: 3 built" in out and f"store: {workdir / 'data'}" in out
    assert "dashboard: http://127.0.0.1:" in out
    assert "best run by mean RMSE: stencil" in out
    store = ds.Store(workdir / "data")
    # Three envs, as the checkpoints pin them, each built once from the registry.
    locks = sorted(json.loads(p.read_text())["lock"] for p in store.env_records())
    assert len(locks) == 3
    assert any("numpy==1.26.4" in lock for lock in locks)
    assert any("numpy==2.2.6" in lock for lock in locks)
    assert any("numpy==2.4.6" in lock and "scipy==1.16.3" in lock for lock in locks)
    # The scorecard: a PNG plot and a markdown table, under the store.
    [card] = store.tasks_dir.glob("scorecard/*/scorecard.files")
    assert (card / "scorecard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (card / "scorecard.md").read_text()
    assert table.splitlines()[2].startswith("| stencil |")
    assert f"scorecard: {card / 'scorecard.png'}" in out and table.strip() in out
    # Forecasts ran in their envs: the linear checkpoint's under numpy 1.26.
    linear = next(r for r in store.runs().itertuples() if r.label == "linear")
    record = json.loads(next(store.run(linear.run_id).dir.glob("*/forecast.json")).read_text())
    assert record["env"]["requirements"] == ["numpy==1.26.4"]


def test_running_it_again_does_nothing(main_job: subprocess.CompletedProcess[str],
                                      workdir: Path) -> None:
    started = time.monotonic()
    again = run(readme_first_command(), workdir / "data")
    took = time.monotonic() - started
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing to run: all 51 nodes were cached" in again.stdout
    assert "built" not in again.stdout and "dashboard" not in again.stdout + again.stderr
    print(f"second run of the main job: {took:.2f} s (ci/setup included)")


def test_the_quickstart_notebook(main_job: subprocess.CompletedProcess[str],
                                 workdir: Path) -> None:
    nb = nbformat.read(workdir / "notebooks" / "quickstart.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "the notebook is committed without outputs"
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(workdir / "notebooks")}}).execute()
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    text = "".join(str(o.get("text", "")) for o in outputs)
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert "dashboard: http://" in text
    # Plan and Results show themselves as tables; the run table too.
    assert any("to run" in h and "<table" in h for h in html)
    assert any("succeeded" in h or "cached" in h for h in html)
    assert any("mlp-ensemble" in h for h in html)
    assert any("image/png" in o.get("data", {}) for o in outputs)
    # The figure's numbers are the store's: what the test reads back itself.
    shown = re.search(r"RMSE at 120 h: (\{.*\})", text)
    assert shown is not None, text[-2000:]
    plotted = eval(shown.group(1))  # a dict of str -> float printed by the notebook
    store = ds.Store(workdir / "data")
    stored = {}
    for verify in store.runs_dir.glob("*/*/verify.zarr"):
        label = json.loads((verify.parent / "run.json").read_text())["label"]
        stored[label] = round(float(xr.open_zarr(verify)["rmse"].sel(lead_hours=120)), 4)
    assert plotted == stored
    assert "nothing to run: all 51 nodes were cached" in text


def test_a_config_change_reruns_only_that_run(main_job: subprocess.CompletedProcess[str],
                                              workdir: Path) -> None:
    experiment = workdir / "recipes" / "forecast_eval" / "experiment.yaml"
    text = experiment.read_text()
    assert "perturbation: 1.0" in text
    experiment.write_text(text.replace("perturbation: 1.0", "perturbation: 0.5"))
    changed = run(f"{ROOT}/.venv/bin/dscheduler run {experiment}", workdir / "data",
                  cwd=workdir)
    assert changed.returncode == 0, changed.stderr[-2000:]
    # 9 forecasts, the run's verification and the scorecard; no env built.
    assert "ran 11 of 51 nodes (11 succeeded); 40 cached" in changed.stdout
    assert "envs: 1 reused" in changed.stdout and "built" not in changed.stdout


@pytest.mark.slurm
def test_the_main_job_on_slurm(main_job: subprocess.CompletedProcess[str], workdir: Path,
                               slurm_available: str) -> None:
    store = workdir / "data"
    ran = run(f"{ROOT}/.venv/bin/dscheduler run recipes/forecast_eval/experiment.yaml "
              "--cluster slurm --force --no-progress", store, cwd=workdir,
              DASK_DSCHEDULER__SLURM__PARTITION=slurm_available)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert re.search(r"ran \d+ of \d+ nodes \(\d+ succeeded\)", ran.stdout), ran.stdout
    assert "best run by mean RMSE: stencil" in ran.stdout
    jobs = {a.get("slurm_job_id") for p in Path(store).glob("runs/*/*/*/forecast.json")
            for a in json.loads(p.read_text())["attempts"]}
    assert jobs - {None}, "no forecast ran in a SLURM job"
    queue = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True)
    assert not (set(queue.stdout.split()) & jobs), "jobs left in the queue"


# -- the sweep ---------------------------------------------------------------------------

SWEEP = ROOT / "recipes" / "sweep" / "sweep.py"


def _driver(store: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SWEEP), "--store", str(store), "--trial-ttl", "3", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "DASK_DSCHEDULER__LOCAL__N_WORKERS": "1"},
    )


def _state(store: Path) -> dict[str, Any]:
    path = store / "sweeps" / "l96-mlp" / "state.json"
    return json.loads(path.read_text()) if path.exists() else {"trials": []}


def test_sweep_with_two_drivers_stops_exactly_at_the_budget(tmp_path: Path) -> None:
    store = tmp_path / "data"
    drivers = [_driver(store, "--max-evaluations-total", "5") for _ in range(2)]
    outputs = [d.communicate(timeout=600)[0] for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], outputs
    trials = _state(store)["trials"]
    assert len(trials) == 5 and all(t["status"] == "done" for t in trials)
    evaluated = [line for out in outputs for line in out.splitlines()
                 if line.startswith("trial ")]
    assert len(evaluated) == 5, outputs  # shared between the two drivers, none twice
    assert all("5 evaluations" in out and "| trial |" in out for out in outputs)
    # Starting again resumes a finished sweep: nothing more is evaluated.
    again = _driver(store, "--max-evaluations-total", "5")
    out = again.communicate(timeout=300)[0]
    assert "trial " not in out.split("\n\n")[0] and "5 evaluations" in out
    # The cost budget holds too: a trial's cost is known before it runs.
    capped = tmp_path / "capped"
    out = _driver(capped, "--max-evaluations-total", "10", "--max-cost-total", "500"
                  ).communicate(timeout=600)[0]
    spent = sum(t["config"]["hidden"] * t["config"]["epochs"] for t in _state(capped)["trials"])
    assert 0 < spent <= 500, out


def test_sweep_redoes_the_evaluation_of_a_killed_driver(tmp_path: Path) -> None:
    store = tmp_path / "data"
    first = _driver(store, "--max-evaluations-total", "3", "--delay", "30")
    deadline = time.monotonic() + 120
    while not _state(store)["trials"]:  # wait until it holds a trial
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    [held] = _state(store)["trials"]
    assert held["status"] == "running" and held["attempts"] == 1
    second = _driver(store, "--max-evaluations-total", "3")
    out = second.communicate(timeout=600)[0]
    assert second.returncode == 0, out
    trials = _state(store)["trials"]
    assert len(trials) == 3 and all(t["status"] == "done" for t in trials)
    assert trials[0]["attempts"] == 2 and "trial 0 (attempt 2)" in out  # redone, not lost
