"""The store is data (docs/design.md §15 Trust model): whoever writes a store can change its
results, never make dscheduler run code or pass their values to another program.

Tests run as root and play the store's writer: records edited to name ``evil.py`` (a file
of uid 65534 that writes a marker when run), job files whose ids are scancel options, a
cluster record naming an unrelated process of ours.  Each attack is shown to fail: no
marker, our SLURM job still runs, our process still lives, a clear message.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import dscheduler as ds
from dscheduler.graph.imports import load_file

DSCHEDULER = str(Path(sys.executable).parent / "dscheduler")
NOBODY = 65534
EVIL = "from pathlib import Path\nPath({marker!r}).write_text('ran')\n"


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory uid 65534 can enter (pytest's tmp_path is 0700)."""
    path = Path(f"/tmp/ds-store-is-data-{os.getpid()}-{time.monotonic_ns()}")
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_nobody(*args: str, cwd: Path) -> None:
    """Run a command as uid 65534 (the store's writer writing their own files)."""
    subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                    "--", *args], cwd=cwd, check=True, env={"HOME": str(cwd),
                                                            "TMPDIR": str(cwd),
                                                            "PATH": os.environ["PATH"]})


def evil_file(base: Path, name: str) -> tuple[Path, Path]:
    """``{name}.py`` of uid 65534 that writes a marker when run; (file, marker)."""
    folder = base / "attacker"
    if not folder.exists():
        folder.mkdir(mode=0o755)
        os.chown(folder, NOBODY, NOBODY)
    marker = base / f"marker-{name}"
    as_nobody("sh", "-c", f"cat > {name}.py <<'EOF'\n{EVIL.format(marker=str(marker))}EOF\n",
              cwd=folder)
    return folder / f"{name}.py", marker


def dscheduler(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([DSCHEDULER, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def task_module(base: Path) -> Any:
    """The user's own tasks, in a file of theirs."""
    project = base / "project"
    project.mkdir(mode=0o755)
    source = project / "mytasks.py"
    source.write_text(
        "import dscheduler as ds\n\n\n"
        "class Conf(ds.RunConfig):\n    x: int = 1\n    label: str = ''\n\n\n"
        "@ds.task(version='1', env=None)\n"
        "def step(cfg: Conf, case: str) -> int:\n    return cfg.x + 1\n")
    source.chmod(0o644)
    return load_file(source)


def edit(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_records_naming_evil_code_run_nothing(cluster: Any, base: Path) -> None:
    tasks = task_module(base)
    store = ds.Store(base / "store")
    nodes = [tasks.step(tasks.Conf(x=i, label=f"l{i}"), "c0") for i in range(3)]
    ds.compute(nodes, store=store, cluster=cluster, progress=False).raise_for_status()
    records = [n.paths(store).record for n in nodes]
    # Three ways a writer makes a record name their code: a file loaded by path, a module
    # beside its file, a config class; and run.json's model.
    by_path, marker1 = evil_file(base, "evil")
    module, marker2 = evil_file(base, "evilmod")
    config, marker3 = evil_file(base, "evilconf")
    markers = (marker1, marker2, marker3)
    edit(records[0], lambda r: r["call"].update(module="_ds_recipe_evil_0", file=str(by_path)))
    edit(records[1], lambda r: r["call"].update(module="evilmod", file=str(module)))

    def config_ref(r: dict[str, Any]) -> None:
        r["call"]["args"]["cfg"]["\u0000config"].update(module="evilconf", file=str(config))
        r["model"] = "evilconf.Conf"
    edit(records[2], config_ref)
    for run in store.root.rglob("run.json"):
        edit(run, lambda r: r.update(model="evilconf.Conf"))
    sys.modules.pop("evilmod", None)

    root = str(store.root)
    for ref in ("l0", "l1", "l2"):
        out = dscheduler("explain", ref, "--store", root)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "not compared: the version, code and function of task 'step'" in out.stdout
        assert "--code FILE" in out.stdout
        out = dscheduler("show", ref, "--store", root)
        assert out.returncode == 0, out.stdout + out.stderr
    recipe = base / "project" / "recipe.py"
    recipe.write_text(
        "from pathlib import Path\nfrom dscheduler.graph.imports import load_file\n\n\n"
        "def nodes():\n    tasks = load_file(Path(__file__).parent / 'mytasks.py')\n"
        "    return [tasks.step(tasks.Conf(x=0, label='l0'), 'c0')]\n")
    for args in (["status"], ["runs"], ["verify"], ["plan", str(recipe)],
                 ["explain", str(recipe)]):
        out = dscheduler(*args, "--store", root)
        assert out.returncode in (0, 1), (args, out.stdout + out.stderr)
    assert not [m for m in markers if m.exists()]

    # In this process too: explain and rerun refuse what a record names.
    from dscheduler.graph.explain import StoredExplanation, explain_stored
    from dscheduler.run.rerun import plan_rerun

    found = explain_stored(["l0", "l1", "l2"], store)
    assert all(isinstance(e, StoredExplanation) for e in found)
    for ref, file in (("l0", by_path), ("l1", module), ("l2", config)):
        with pytest.raises(ds.DSchedulerError, match=rf"not loading {re.escape(str(file))}: "
                           rf"it is owned by .*uid {NOBODY}\), not by you"):
            plan_rerun(store, ref)
    assert not [m for m in markers if m.exists()]


def test_explain_and_rerun_use_the_users_own_code(cluster: Any, base: Path) -> None:
    tasks = task_module(base)
    store = ds.Store(base / "store")
    node = tasks.step(tasks.Conf(x=4, label="mine"), "c0")
    ds.compute(node, store=store, cluster=cluster, progress=False).raise_for_status()
    root, source = str(store.root), base / "project" / "mytasks.py"

    # Named with --code, the user's file is loaded and compared: nothing changed.
    out = dscheduler("explain", "mine", "--store", root, "--code", str(source))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "would not run (its stored result is current)" in out.stdout

    # rerun loads the user's own file, and says so.
    out = dscheduler("rerun", "mine", "--store", root, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"rerun: loading your code {source}" in out.stdout
    record = store.read_record(node.paths(store).record)
    assert record is not None and len(record["attempts"]) == 2

    # The same file writable by others is refused, naming it and its mode.
    source.chmod(0o666)
    try:
        out = dscheduler("rerun", "mine", "--store", root, timeout=300)
    finally:
        source.chmod(0o644)
    assert out.returncode != 0
    text = " ".join((out.stdout + out.stderr).split())
    assert f"not loading {source}: it is writable by others (mode 0666)" in text
    record = store.read_record(node.paths(store).record)
    assert record is not None and len(record["attempts"]) == 2


# -- SLURM job files ----------------------------------------------------------------------


@pytest.fixture
def our_job(slurm_available: str, base: Path) -> Iterator[str]:
    """A SLURM job of ours, sleeping; cancelled at the end."""
    out = subprocess.run(["sbatch", "--parsable", "-p", slurm_available, "-o", "/dev/null",
                          "-J", "ds-store-is-data", "--wrap", "sleep 300"],
                         capture_output=True, text=True, check=True, cwd=base, timeout=60)
    job = out.stdout.strip().split(";")[0]
    yield job
    subprocess.run(["scancel", job], check=False, timeout=60)


def job_state(job: str) -> str:
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True,
                         text=True, timeout=60)
    return next((f.split("=", 1)[1] for f in out.stdout.split() if f.startswith("JobState=")),
                "gone")


@pytest.mark.slurm
def test_job_files_pass_no_options_to_scancel(our_job: str, base: Path) -> None:
    store = ds.Store(base / "store")
    store.ensure()
    jobs = store.slurm_jobs_record("deadbeef").parent
    jobs.mkdir(parents=True, exist_ok=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    owner = {"kind": "driver", "host": socket.gethostname(), "pid": gone.pid,
             "started": 1.0, "address": None, "beat": time.time()}
    (jobs / "deadbeef.json").write_text(json.dumps(
        {**owner, "cluster": "deadbeef", "names": ["--me", "x --user=root"],
         "jobs": {"--me": {}, "1;touch x": {}}}))
    (jobs / "deadbee0.json").write_text(json.dumps(
        {**owner, "cluster": "deadbee0", "names": [], "jobs": {"--state=RUNNING": {}}}))
    assert job_state(our_job) in ("RUNNING", "PENDING")
    out = dscheduler("status", "--store", str(store.root))
    assert out.returncode == 0, out.stdout + out.stderr
    assert job_state(our_job) in ("RUNNING", "PENDING")
    assert "not passed to scancel (not a SLURM job id or a dscheduler job name): " \
           "job id '--me', job id '1;touch x', job name '--me', job name 'x --user=root'" \
        in out.stdout
    assert not list(jobs.glob("*.json"))  # the orphans' files are gone all the same


# -- cluster down ---------------------------------------------------------------------------


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("case", ["another command", "another start", "another host"])
def test_cluster_down_signals_only_its_scheduler(sleeper: subprocess.Popen[bytes],
                                                 base: Path, case: str) -> None:
    store = ds.Store(base / "store")
    store.ensure()
    store.slurm_dir.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = psutil.Process(sleeper.pid).create_time()
    record = {"cluster": "deadbeef", "address": f"tcp://127.0.0.1:{port}",
              "host": socket.gethostname(), "pid": sleeper.pid, "started": started}
    if case == "another start":
        record["started"] = started - 100
    if case == "another host":
        record["host"] = "elsewhere.invalid"
    store.slurm_cluster_record.write_text(json.dumps(record))
    begun = time.monotonic()
    out = dscheduler("cluster", "down", "--store", str(store.root), timeout=90)
    assert time.monotonic() - begun < 60
    assert sleeper.poll() is None  # our process lives
    text = " ".join((out.stdout + out.stderr).split())
    if case == "another command":
        assert out.returncode != 0
        assert f"not stopping pid {sleeper.pid}" in text and "sleep 300" in text
        assert "Nothing was signalled" in text
    elif case == "another start":  # the recorded process is gone: pid reused
        assert out.returncode == 0, text
        assert "SLURM cluster deadbeef had stopped already" in text
        assert not store.slurm_cluster_record.exists()
    else:
        assert out.returncode != 0
        assert "cannot reach the SLURM scheduler" in text and "nothing signalled" in text
