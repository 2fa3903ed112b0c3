"""Startup: heavy libraries stay out of ``import dscheduler`` and of the CLI's import.

A command pays only for what it uses (docs/design.md §4): the package's names
load their subpackage on first use, and distributed, dask_jobqueue, zarr,
xarray, pandas and the dashboard load only when a graph runs on a cluster or
a result is read.  Each check runs a new interpreter, so nothing this test
session imported counts.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.fast

#: Never loaded by ``import dscheduler``.
HEAVY = ["bokeh", "cloudpickle", "dask", "dask.distributed", "dask_jobqueue", "distributed",
         "numcodecs", "numpy", "packaging", "pandas", "psutil", "pydantic", "tornado", "xarray",
         "yaml", "zarr"]
#: Never loaded by importing the CLI or the code that plans and runs a graph.
CLUSTER = ["bokeh", "dask", "dask.distributed", "dask_jobqueue", "distributed", "numcodecs",
           "pandas", "tornado", "xarray", "zarr", "dscheduler.run.dashboard.plugin",
           "dscheduler.run.slurm.cluster"]


def loaded(code: str, names: list[str]) -> list[str]:
    """Which of ``names`` are in ``sys.modules`` after ``code`` runs in a new interpreter."""
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps([n for n in {names!r} if n in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return list(json.loads(out.stdout.splitlines()[-1]))


def test_import_dscheduler_loads_no_heavy_module() -> None:
    assert loaded("import dscheduler", HEAVY) == []


def test_cli_and_compute_load_no_cluster_code() -> None:
    code = "import dscheduler.cli, dscheduler.run.compute, dscheduler.run.clusters"
    assert loaded(code, CLUSTER) == []


def test_the_check_sees_a_heavy_import() -> None:
    # What the two tests above would say if dscheduler imported distributed.
    assert {"dask", "distributed"} <= set(loaded("import dscheduler, distributed", HEAVY))


def test_lazy_names_resolve_as_before() -> None:
    code = """
import dscheduler as ds
for name in ds.__all__:
    getattr(ds, name)
assert ds.compute is ds.run.compute and ds.Store is ds.store.Store
from dscheduler.run import dashboard, slurm
assert dashboard.DashboardPlugin is dashboard.plugin.DashboardPlugin
assert slurm.SlurmCluster.__module__ == "dscheduler.run.slurm.cluster"
try:
    ds.no_such_name
except AttributeError as err:
    assert "no_such_name" in str(err)
else:
    raise SystemExit("no AttributeError")
"""
    assert "distributed" in loaded(code, ["distributed"])  # it really loaded them


def test_settings_load_dask_config_on_first_get() -> None:
    code = "import dscheduler.settings as s\nimport sys\nassert 'dask' not in sys.modules\n" \
           "assert s.get('lease.ttl') == 60"
    assert loaded(code, ["dask.config"]) == ["dask.config"]


#: Every command module of the CLI, each loaded only when its command runs.
COMMAND_MODULES = ["dscheduler.cli." + m for m in
                   ("cluster", "envs", "graph", "ids", "index", "results", "runs", "verify")]
COMMANDS = ["run", "plan", "status", "verify", "ids", "envs", "runs", "show", "compare",
            "explain", "rerun", "cluster", "index"]


def _cli(args: list[str]) -> str:
    """``app(args)`` in a new interpreter, as the ``dscheduler`` script calls it."""
    return f"from dscheduler.cli import app\ntry:\n    app({args!r})\nexcept SystemExit:\n    pass"


def test_a_command_loads_only_its_own_module() -> None:
    assert loaded("import dscheduler.cli", COMMAND_MODULES) == []
    assert loaded(_cli(["runs", "--help"]), COMMAND_MODULES) == ["dscheduler.cli.runs"]
    assert loaded(_cli(["index", "--help"]), COMMAND_MODULES) == ["dscheduler.cli.index"]
    # runs lists from the index: neither the graph layer nor the run layer (typer's own
    # coercion of the options loads pydantic, so that is no sign of either)
    assert loaded(_cli(["runs", "--help"]), ["dscheduler.graph", "dscheduler.run"]) == []


def test_help_lists_every_command_in_order() -> None:
    out = subprocess.run([sys.executable, "-c", _cli(["--help"])], capture_output=True,
                         text=True, timeout=300, check=False, env={"COLUMNS": "120",
                                                                   "PATH": "/usr/bin:/bin"})
    listed = [line.split()[1] for line in out.stdout.splitlines()
              if line.startswith("│ ") and len(line.split()) > 2
              and line.split()[1] in COMMANDS]
    assert listed == COMMANDS, out.stdout + out.stderr
