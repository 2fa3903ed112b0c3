"""The main job, the quickstart notebook and the sweep, end to end.

The README's first command runs exactly as written (from the repository
root, its store pointed at a temporary directory through the setting
``store``), with real envs from the package registry: numpy 1.26, numpy 2,
numpy 2 with scipy.  The tests of the main job share that store, in order:
the first run builds everything, the next ones find it.  The notebook runs
on a store of its own, which starts empty, so that its first compute builds
the envs and runs every node (the machine's uv cache, which the main job
filled, makes those builds take seconds).
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


def _copy_project(where: Path) -> Path:
    """A copy of the recipes and the notebook in ``where``, its store to be ``data/``."""
    for part in ("recipes", "notebooks"):
        shutil.copytree(ROOT / part, where / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return where


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the recipes and the notebook, with its store at ``data/``."""
    return _copy_project(tmp_path_factory.mktemp("main-job"))


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
    locks = sorted(json.loads(p.read_text())["lock"] for p in store.envs_dir.glob("*/env.json"))
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
    # The runs are tracked: `dscheduler runs --sort "metrics.rmse asc"` ranks them as the
    # scorecard does, with their scores, checkpoints and member counts.
    ranked = [row.split("|")[1].strip() for row in table.splitlines()[2:]]
    listed = run(f'{ROOT}/.venv/bin/dscheduler runs --sort "metrics.rmse asc" --format json',
                 workdir / "data")
    assert listed.returncode == 0, listed.stderr[-2000:]
    rows = json.loads(listed.stdout)
    assert [r["label"] for r in rows] == ranked and len(ranked) == 4
    by_label = {r["label"]: r for r in rows}
    assert by_label["mlp-ensemble"]["params.members"] == 8
    assert by_label["linear"]["params.checkpoint"] == "checkpoints/linear.npz"
    assert f"{by_label['stencil']['metrics.rmse']:.3f}" in table.splitlines()[2]
    assert all(isinstance(r["metrics.bias"], float) for r in rows)
    shown = run(f"{ROOT}/.venv/bin/dscheduler show stencil", workdir / "data")
    assert shown.returncode == 0 and "rmse" in shown.stdout, shown.stdout[-2000:]
    # Forecasts ran in their envs: the linear checkpoint's under numpy 1.26.
    linear = next(r for r in store.runs().itertuples() if r.label == "linear")
    record = json.loads(next(store.run(linear.run_id).dir.glob("*/forecast.json")).read_text())
    assert record["env"]["requirements"] == ["numpy==1.26.4"]


def _records(store: Path) -> dict[str, tuple[int, int]]:
    """Every node record and log of ``store``: (size, mtime in ns) by path."""
    found = [*store.glob("runs/*/*/*/*.json"), *store.glob("tasks/*/*/*.json"),
             *store.glob("**/logs/*.log")]
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in found}


def test_running_it_again_does_nothing(main_job: subprocess.CompletedProcess[str],
                                      workdir: Path) -> None:
    """The README's command again, its `dscheduler run` timed alone (not ci/setup):
    about a second on a quiet machine; the bound leaves room for a loaded CI one."""
    setup, _, command = readme_first_command().partition(" && ")
    assert setup == "ci/setup" and command.startswith(".venv/bin/dscheduler run ")
    store = workdir / "data"
    before = _records(store)
    assert len([p for p in before if p.endswith(".json")]) >= 51
    started = time.monotonic()
    again = run(command, store)
    took = time.monotonic() - started
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing to run: all 51 nodes were cached" in again.stdout
    assert "built" not in again.stdout and "dashboard" not in again.stdout + again.stderr
    assert _records(store) == before  # nothing executed: no record or log written
    print(f"second run of the main job: `dscheduler run` alone {took:.2f} s")
    assert took < 5, f"`dscheduler run` with nothing to do took {took:.1f} s"


@pytest.fixture(scope="module")
def notebook_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another copy, whose store starts empty: the notebook's first compute builds the
    envs (the uv cache of this machine, which the main job filled, makes that take
    seconds) and runs everything."""
    return _copy_project(tmp_path_factory.mktemp("notebook"))


def _cell_outputs(nb: Any, starts: str) -> list[dict[str, Any]]:
    [cell] = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(starts)]
    return list(cell.get("outputs", []))


def _output_text(outputs: list[dict[str, Any]], kind: str = "text/plain") -> str:
    return "".join(str(o.get("text", "")) + str(o.get("data", {}).get(kind, ""))
                   for o in outputs)


def test_the_quickstart_notebook(main_job: subprocess.CompletedProcess[str],
                                 notebook_dir: Path) -> None:
    nb = nbformat.read(notebook_dir / "notebooks" / "quickstart.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "the notebook is committed without outputs"
    assert not (notebook_dir / "data").exists()  # a fresh store
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(notebook_dir / "notebooks")}}).execute()
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    text = "".join(str(o.get("text", "")) for o in outputs)
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert "dashboard: http://" in text
    # The plan: everything to run, three envs to build.
    plan = _cell_outputs(nb, "plan = ds.plan(")
    assert "51 nodes: 51 to run, 0 cached; 3 env(s) to build" in _output_text(plan)
    assert "to run" in _output_text(plan, "text/html") and "<table" in _output_text(
        plan, "text/html")
    # The first compute ran every node and built the envs; its view says so.
    first = _cell_outputs(nb, "results = ds.compute(")
    assert "<Results 51 succeeded; envs: 3 built>" in _output_text(first)
    shown = _output_text(first, "text/html")
    assert "ran 51 of 51 nodes (51 succeeded); 0 cached" in shown, shown
    assert shown.count(">built<") == 3 and "failed" not in shown
    # The second: nothing to run, all cached, no env built.
    again = _output_text(_cell_outputs(nb, "again = ds.compute("))
    assert "nothing to run: all 51 nodes were cached" in again
    assert "{'cached': 51}" in again and "built" not in again
    # The run table shows itself as HTML too.
    assert any("mlp-ensemble" in h for h in html)
    assert any("image/png" in o.get("data", {}) for o in outputs)
    # The figure's numbers are the store's: what the test reads back itself.
    shown_rmse = re.search(r"RMSE at 120 h: (\{.*\})", text)
    assert shown_rmse is not None, text[-2000:]
    plotted = eval(shown_rmse.group(1))  # a dict of str -> float printed by the notebook
    store = ds.Store(notebook_dir / "data")
    stored = {}
    for verify in store.runs_dir.glob("*/*/verify.zarr"):
        label = json.loads((verify.parent / "run.json").read_text())["label"]
        stored[label] = round(float(xr.open_zarr(verify)["rmse"].sel(lead_hours=120)), 4)
    assert plotted == stored and len(stored) == 4
    # The runs ranked by RMSE, as a table: the store's order.
    ranking = _output_text(_cell_outputs(nb, "store.runs(order_by="), "text/html")
    order = list(store.runs(order_by=["metrics.rmse asc"])["label"])
    assert "<table" in ranking and "metrics.rmse" in ranking and len(order) == 4
    assert [ranking.index(f"<td>{label}</td>") for label in order] == sorted(
        ranking.index(f"<td>{label}</td>") for label in order)
    # The committed notebook itself still has no outputs.
    committed = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code")


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


def test_the_checkpoints_are_made_again_byte_for_byte(tmp_path: Path) -> None:
    """make_checkpoints.py gives the committed files again, bytes and all."""
    recipe = ROOT / "recipes" / "forecast_eval"
    made = subprocess.run([sys.executable, str(recipe / "make_checkpoints.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert made.returncode == 0, made.stderr[-2000:]
    committed = sorted(p.name for p in (recipe / "checkpoints").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == committed
    assert len(committed) == 6
    for name in committed:
        assert (tmp_path / name).read_bytes() == (recipe / "checkpoints" / name).read_bytes(), \
            f"{name} differs from the committed checkpoint"


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


#: What a driver prints for an evaluation it recorded; "trial N: taken over ..." is not one.
RECORDED = re.compile(r"^trial (\d+) \(attempt (\d+)\)", re.M)


def _recorded(*outputs: str) -> list[tuple[int, int]]:
    """(trial, attempt) of every evaluation the drivers recorded."""
    return sorted((int(t), int(a)) for out in outputs for t, a in RECORDED.findall(out))


def _sweep_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("sweep_recipe", SWEEP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_with_two_drivers_stops_exactly_at_the_budget(tmp_path: Path) -> None:
    store = tmp_path / "data"
    drivers = [_driver(store, "--max-evaluations-total", "5") for _ in range(2)]
    outputs = [d.communicate(timeout=600)[0] for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], outputs
    trials = _state(store)["trials"]
    assert len(trials) == 5 and all(t["status"] == "done" for t in trials)
    # Shared between the two drivers, each recorded once (a driver whose trial was
    # taken over says so, and records nothing).
    assert [t for t, _ in _recorded(*outputs)] == [0, 1, 2, 3, 4], outputs
    assert all("5 evaluations" in out and "| trial |" in out for out in outputs)
    # Starting again resumes a finished sweep: nothing more is evaluated.
    again = _driver(store, "--max-evaluations-total", "5")
    out = again.communicate(timeout=300)[0]
    assert again.returncode == 0 and not _recorded(out) and "5 evaluations" in out
    # The cost budget holds too, across two drivers at once: a trial's cost is known
    # before it runs, and running trials count.
    capped = tmp_path / "capped"
    drivers = [_driver(capped, "--max-evaluations-total", "10", "--max-cost-total", "500")
               for _ in range(2)]
    outputs = [d.communicate(timeout=600)[0] for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], outputs
    trials = _state(capped)["trials"]
    assert all(t["status"] == "done" for t in trials) and 0 < len(trials) < 10
    assert [t for t, _ in _recorded(*outputs)] == list(range(len(trials))), outputs
    sweep = _sweep_module()
    spent = sum(sweep.cost(t["config"]) for t in trials)
    assert spent <= 500 < spent + sweep.cost(sweep.sample(0, len(trials))), outputs


def _holding(store: Path, drivers: list[subprocess.Popen[str]]
             ) -> tuple[int, subprocess.Popen[str]] | None:
    """(trial, driver) when a driver holds a trial's lease and is evaluating it (it does
    not hold the sweep's lease, which a stopped driver would keep from the others)."""
    from dscheduler.store.lease import read_lease

    layout = ds.Store(store)
    sweep_lease = read_lease(layout.lease_path("sweep-l96-mlp")) or {}
    for trial in _state(store)["trials"]:
        if trial["status"] != "running" or trial["attempts"] != 1:
            continue
        info = read_lease(layout.lease_path(f"sweep-l96-mlp-trial-{trial['trial']}")) or {}
        for driver in drivers:
            if info.get("pid") == driver.pid and sweep_lease.get("pid") != driver.pid:
                return trial["trial"], driver
    return None


def test_sweep_driver_stalled_past_its_trial_ttl_is_taken_over(tmp_path: Path) -> None:
    """A live driver stalls (SIGSTOP) for longer than --trial-ttl while it holds a trial:
    the other takes the trial over; resumed, the first says so and goes on."""
    store = tmp_path / "data"
    # Evaluations of 2 s or more: a window in which a driver holds its trial.
    drivers = [_driver(store, "--max-evaluations-total", "4", "--delay", "2")
               for _ in range(2)]
    stalled: subprocess.Popen[str] | None = None
    try:
        deadline = time.monotonic() + 120
        while (found := _holding(store, drivers)) is None:
            assert time.monotonic() < deadline and all(d.poll() is None for d in drivers)
            time.sleep(0.05)
        held, stalled = found
        os.killpg(stalled.pid, signal.SIGSTOP)  # the driver, its scheduler and worker
        stopped = time.monotonic()
        taker = drivers[1 - drivers.index(stalled)]
        while _state(store)["trials"][held]["attempts"] < 2:
            assert time.monotonic() < stopped + 120 and taker.poll() is None
            time.sleep(0.1)
        assert time.monotonic() - stopped > 3  # not before the trial's ttl
    finally:
        if stalled is not None:
            os.killpg(stalled.pid, signal.SIGCONT)
    outputs = [d.communicate(timeout=300)[0] for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], outputs
    trials = _state(store)["trials"]
    assert len(trials) == 4 and all(t["status"] == "done" for t in trials)
    assert trials[held]["attempts"] == 2
    recorded = _recorded(*outputs)
    assert [t for t, _ in recorded] == [0, 1, 2, 3], outputs  # exactly the budget
    assert (held, 2) in recorded
    out = outputs[drivers.index(stalled)]
    assert f"trial {held}: taken over by another driver" in out, out
    assert all("4 evaluations" in out for out in outputs)


def _evaluating(store: Path) -> bool:
    """Whether an evaluation runs: a record of the sweep's task says it is running."""
    from dscheduler.store.records import read_record

    records = (store / "tasks" / "train_and_validate").glob("*/train_and_validate.json")
    return any((read_record(path) or {}).get("state") == "running" for path in records)


def test_sweep_redoes_the_evaluation_of_a_killed_driver(tmp_path: Path) -> None:
    store = tmp_path / "data"
    first = _driver(store, "--max-evaluations-total", "3", "--delay", "30")
    deadline = time.monotonic() + 120
    # Wait until it holds a trial and evaluates it (past planning, which may hold the
    # store index's lease: killed then, the next driver would wait for its ttl).
    while not (_state(store)["trials"] and _evaluating(store)):
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
