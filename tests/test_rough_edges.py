"""Bad input is one line and exit 2, before anything runs (issue 17, item 7).

Each test goes through the real command line and checks our message, not
Python's: a non-UTF-8 or duplicated-key experiment, ``verify --run ../..``,
``runs --state bogus``, ``plan --store FILE``, a read-only store; and the
rough edges around them: a dead local holder's ``index.lease``, the plan's
reason for a finished node without its ``.done`` link, and task failures
without distributed's "Compute Failed" traceback per task.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dask.config
import pytest
from typer.testing import CliRunner

import dscheduler as ds
from dscheduler.cli import app
from dscheduler.graph import load_experiment
from dscheduler.store.lease import Lease

DSCHEDULER = str(Path(sys.executable).with_name("dscheduler"))

MODEL = "import dscheduler as ds\nclass C(ds.RunConfig):\n    a: int = 1\n"

RECIPE = '''
import dscheduler as ds

@ds.task(version="1")
def square(x: int) -> int:
    return x * x

@ds.task(version="1")
def add_up(values: list) -> int:
    return sum(values)

def main():
    return [add_up([square(x) for x in (1, 2)])]
'''

FAILING = '''
import dscheduler as ds

@ds.task(version="1", retries=0)
def bad(x: int) -> int:
    raise RuntimeError(f"bad input {x}")

def main():
    return [bad(x) for x in (1, 2, 3)]
'''


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _bad_input(out: Any, *texts: str) -> None:
    """Exit 2, one line of ours, no traceback."""
    assert out.exit_code == 2, out.output
    assert "Traceback" not in out.output, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.output
    for text in texts:
        assert text in out.output, out.output


@pytest.fixture
def experiment_dir(tmp_path: Path) -> Path:
    (tmp_path / "m.py").write_text(MODEL)
    return tmp_path


@pytest.mark.fast
def test_non_utf8_experiment_names_file_and_byte(experiment_dir: Path) -> None:
    exp = experiment_dir / "latin.yaml"
    exp.write_bytes(b"model: m.py:C\nruns:\n  - {a: 1}\n# caf\xe9\n")
    for command in ("ids", "plan"):
        _bad_input(_invoke(command, str(exp)),
                   f"{exp}: not UTF-8 text: byte 36 (line 4) is 0xe9; save the file as UTF-8")


@pytest.mark.fast
def test_duplicate_keys_are_refused_with_their_lines(experiment_dir: Path) -> None:
    exp = experiment_dir / "dup.yaml"
    exp.write_text("model: m.py:C\nruns:\n  - {a: 1}\nruns:\n  - {a: 2}\n")
    _bad_input(_invoke("ids", str(exp)),
               f"{exp}, line 4: key 'runs' appears twice (first on line 2)",
               "merge the two into one")
    exp.write_text("model: m.py:C\nruns:\n  - a: 1\n    a: 2\n")  # nested, too
    _bad_input(_invoke("ids", str(exp)), "line 4: key 'a' appears twice (first on line 3)")
    # A key a << merge brings in may still be overridden, as YAML intends.
    exp.write_text("model: m.py:C\ndefaults: &d {a: 1}\nruns:\n  - {<<: *d, a: 2}\n")
    assert [r.a for r in load_experiment(exp).runs] == [2]  # type: ignore[attr-defined]


@pytest.mark.fast
def test_verify_bad_run_id(tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "data").ensure()
    _bad_input(_invoke("verify", "--store", str(store.root), "--run", "../../x"),
               "--run '../../x': env_id '..' cannot name a directory",
               "give a run_id ENV_ID/CONFIG_HASH")


@pytest.mark.fast
def test_runs_bogus_state_lists_the_valid_ones(tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "data").ensure()
    _bad_input(_invoke("runs", "--store", str(store.root), "--state", "bogus"),
               "state 'bogus': a run is running, failed, damaged, cancelled, succeeded, "
               "pending; pass one of those")
    _bad_input(_invoke("runs", "--store", str(store.root), "--state", "pending", "--by", "node"),
               "state 'pending': a node is running, failed")
    assert _invoke("runs", "--store", str(store.root), "--state", "failed").exit_code == 0


@pytest.mark.fast
def test_plan_store_that_is_a_file(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.py"
    recipe.write_text(RECIPE)
    afile = tmp_path / "afile"
    afile.write_text("precious\n")
    _bad_input(_invoke("plan", str(recipe), "--store", str(afile)),
               f"store {afile} is a file, not a directory")
    assert afile.read_text() == "precious\n"


def _dead_holder(path: Path) -> int:
    """A process of this host that takes the lease at ``path`` and exits holding it."""
    code = ("import os, sys\nfrom dscheduler.store.lease import Lease\n"
            "ok = Lease(sys.argv[1], ttl=600, owner='index compaction').try_acquire()\n"
            "os._exit(0 if ok else 3)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)])
    try:
        assert proc.wait(timeout=120) == 0  # reaped: the pid names no process now
    finally:
        proc.kill()
    assert path.exists()
    return proc.pid


@pytest.mark.fast
def test_index_lease_of_a_dead_local_process_is_broken_at_once(tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "data").ensure()
    lease = store.lease_path("index")
    pid = _dead_holder(lease)
    assert f'"pid": {pid}' in lease.read_text()
    start = time.monotonic()
    out = _invoke("index", "compact", "--store", str(store.root))
    assert out.exit_code == 0 and "index compacted" in out.output, out.output
    _dead_holder(lease)
    out = _invoke("index", "rebuild", "--store", str(store.root))  # waits up to 120 s
    assert out.exit_code == 0 and "rebuilt" in out.output, out.output
    assert time.monotonic() - start < 60  # neither waited for the 600 s ttl
    # A live holder is never broken.
    held = Lease(lease, ttl=600)
    assert held.try_acquire()
    try:
        out = _invoke("index", "compact", "--store", str(store.root))
        assert "another process is compacting the index" in out.output, out.output
    finally:
        held.release()


def test_plan_reason_of_a_finished_node_without_its_link(cluster: Any, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.py"
    recipe.write_text(RECIPE)
    store = str(tmp_path / "data")
    assert _invoke("run", str(recipe), "--store", store, "--no-progress").exit_code == 0
    links = sorted(d / ".square.done" for d in Path(store, "tasks", "square").iterdir()
                   if (d / ".square.done").is_symlink())  # (a link to its key, no file)
    assert len(links) == 2
    links[0].unlink()
    # A rebuild long after the run (two lease ttls): the files decide, not the run's entries.
    with dask.config.set({"dscheduler.task.lease_ttl": 0.001}):
        assert _invoke("index", "rebuild", "--store", store).exit_code == 0
    planned = _invoke("plan", str(recipe), "--store", store)
    assert planned.exit_code == 0, planned.output
    assert f"square-{links[0].parent.name}: finished, but its .done link is missing: its " \
           "task restores the link and reports it cached" in planned.output, planned.output
    assert "no record" not in planned.output
    ran = _invoke("run", str(recipe), "--store", store, "--no-progress")  # what the plan said
    assert ran.exit_code == 0 and "all 3 nodes were cached" in ran.output, ran.output
    assert links[0].is_symlink()


@pytest.fixture
def read_only_store(tmp_path: Path) -> Any:
    """A store on a read-only bind mount of a store made here."""
    source = ds.Store(tmp_path / "source").ensure()
    mount = tmp_path / "ro"
    mount.mkdir()
    subprocess.run(["mount", "--bind", str(source.root), str(mount)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(mount)], check=True)
        yield ds.Store(mount)
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_read_only_store_is_one_error_before_anything_runs(
        cluster: Any, tmp_path: Path, read_only_store: ds.Store) -> None:
    from graphfixtures import transitions

    recipe = tmp_path / "recipe.py"
    recipe.write_text(RECIPE)
    before = transitions(cluster)
    _bad_input(_invoke("run", str(recipe), "--store", str(read_only_store.root), "--no-progress"),
               f"cannot write to the store {read_only_store.root}: Read-only file system",
               "make it writable")
    assert transitions(cluster) == before  # nothing was submitted


def test_task_failures_print_no_dask_traceback_per_task(tmp_path: Path) -> None:
    """The workers of the embedded cluster print on the driver's stderr: a failed task is
    said once, in the final report, not also in distributed's "Compute Failed" log."""
    recipe = tmp_path / "failing.py"
    recipe.write_text(FAILING)
    env = {**os.environ, "DASK_DSCHEDULER__LOCAL__N_WORKERS": "1"}
    proc = subprocess.run([DSCHEDULER, "run", str(recipe), "--store", str(tmp_path / "data"),
                           "--no-progress"], capture_output=True, text=True, timeout=240,
                          env=env, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out  # failed work: 1
    assert "3 failed" in out, out
    assert out.count("failed (attempt 1): RuntimeError: bad input 2") == 1, out
    assert "Compute Failed" not in out, out
