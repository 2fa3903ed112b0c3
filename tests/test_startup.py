"""Startup: heavy libraries stay out of ``import dscheduler`` and of the CLI's import.

A command pays only for what it uses (docs/design.md §4): the package's names
load their subpackage on first use, and distributed, dask_jobqueue, zarr,
xarray, pandas and the dashboard load only when a graph runs on a cluster or
a result is read.  Each check runs a new interpreter, so nothing this test
session imported counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def test_runs_command_loads_no_pandas_nor_dask() -> None:
    # it lists from the index's columns (tests/test_cli_tables.py runs it on a store)
    assert loaded("import dscheduler.cli.runs", ["pandas", "numpy", "dask"]) == []


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


def test_settings_are_read_without_dask() -> None:
    code = "import dscheduler.settings as s\nassert s.get('lease.ttl') == 60"
    assert loaded(code, ["dask", "dask.config"]) == []


def _leaves(tree: dict[str, Any], prefix: str = "") -> list[str]:
    return [k for name, value in tree.items()
            for k in (_leaves(value, f"{prefix}{name}.") if isinstance(value, dict) and value
                      else [f"{prefix}{name}"])]


def test_settings_without_dask_answer_as_dask_does(tmp_path: Path) -> None:
    """Every setting, with a user file and DASK_ variables (dashes and underscores mixed,
    values as dask interprets them), read before dask is imported and after."""
    import yaml

    (tmp_path / "a.yaml").write_text("dscheduler:\n  lease: {ttl: 5, poll: 0.5}\n"
                                     "  store-shared: group\n  index: {seal-after: 9}\n")
    (tmp_path / "b.yml").write_text("dscheduler:\n  lease: {ttl: 7}\n")
    packaged = Path(__file__).parent.parent / "dscheduler" / "dscheduler.yaml"
    keys = _leaves(yaml.safe_load(packaged.read_text())["dscheduler"])
    env = {**os.environ, "DASK_CONFIG": str(tmp_path), "DASK_DSCHEDULER__LEASE__POLL": "2",
           "DASK_DSCHEDULER__TASK__FSYNC": "false", "DASK_DSCHEDULER__STORE": "/x/y",
           "DASK_DSCHEDULER__DASHBOARD__LOG_LINES": "None", "DASK_DSCHEDULER__NEW": "[1, 2]"}
    env.pop("DASK_INTERNAL_INHERIT_CONFIG", None)
    code = f"""
import json, sys
import dscheduler.settings as s
keys = {[*keys, "new"]!r}
light = {{k: s.get(k) for k in keys}}
assert "dask" not in sys.modules
import dask.config
print(json.dumps([light, {{k: s.get(k) for k in keys}}]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=False, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    light, with_dask = json.loads(out.stdout.splitlines()[-1])
    assert light == with_dask
    assert light["lease.ttl"] == 7 and light["lease.poll"] == 2 and light["new"] == [1, 2]
    assert light["store_shared"] == "group" and light["task.fsync"] is False
    assert light["store"] == "/x/y" and light["dashboard.log_lines"] is None


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
