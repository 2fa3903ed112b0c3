"""pytest plugin for the run-graph tests: a shared LocalCluster, tasks that count.

Loaded through ``pytest_plugins`` in tests/conftest.py.  Everything the
workers must import lives here (tests/ is on the workers' ``sys.path``: the
LocalCluster spawns them with the driver's path).

Tasks leave side effects, one line per execution, in a file named by an
argument (a ``str``, not a ``Path``: a Path to an existing file would put
the file's changing content into the node's key), so tests count executions
rather than trusting records.

Run as a script (``python tests/graphfixtures.py STORE LOG N SLEEP``) it is a
driver of its own, for the tests that kill a driver or run two at once: it
prints one JSON line with the node states and env build states.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import dask.config
import pytest
from distributed.diagnostics.plugin import SchedulerPlugin

import dscheduler as ds

N_WORKERS = 2


class Cfg(ds.RunConfig):
    """A run whose env is decided by ``flavor``: two flavors, two env_ids."""

    ENV_FIELDS: ClassVar = ("flavor",)
    flavor: str = "a"
    x: int = 0
    log: str = ""
    sleep: float = 0.0
    label: str = ""

    def env(self) -> ds.Env:
        # No requirements: a venv of the machine's Python, built in well under a second.
        return ds.Env(image="dir")


class Broken(Cfg):
    """Flavor "broken" asks for a package no index has: its env build fails."""

    def env(self) -> ds.Env:
        if self.flavor != "broken":
            return super().env()
        return ds.Env(image="dir", requirements=["dstest-does-not-exist==9.9"],
                      find_links=[str(BROKEN_INDEX)], offline=True)


BROKEN_INDEX = Path(__file__).parent  # no wheels here: nothing resolves


class Small(ds.RunConfig):
    """The smallest run config: one env field and a label (for store and listing tests)."""

    ENV_FIELDS: ClassVar = ("ck",)
    ck: str
    label: str = ""


def lines(path: str | Path) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


@ds.task(version="1")
def work(cfg: Any, case: str) -> dict[str, Any]:
    """Runs in cfg.env(): appends 'start' and 'end' lines around an optional sleep."""
    import os
    import time

    with open(cfg.log, "a") as f:
        f.write(f"start {cfg.flavor} {cfg.x} {case} {os.getpid()}\n")
    time.sleep(cfg.sleep)
    with open(cfg.log, "a") as f:
        f.write(f"end {cfg.flavor} {cfg.x} {case}\n")
    return {"x": cfg.x, "case": case}


@ds.task(version="1")
def total(values: list[dict[str, Any]], log: str) -> int:
    """Runs in the worker process: sums upstream values."""
    with open(log, "a") as f:
        f.write("total\n")
    return sum(v["x"] for v in values)


@ds.task(version="1")
def boom(x: int, log: str) -> int:
    with open(log, "a") as f:
        f.write(f"boom {x}\n")
    raise ValueError(f"boom {x} went wrong")


def count(log: str | Path, prefix: str) -> int:
    return sum(1 for line in lines(log) if line.startswith(prefix))


@pytest.fixture(scope="session")
def _local_cluster_settings(node_dirs: dict[str, Path]) -> Iterator[None]:
    """The settings of the tests' embedded cluster for the whole session; closed at its end."""
    from dscheduler.run import clusters as ds_cluster

    ds_cluster.close_local()
    with dask.config.set({"dscheduler.local.n_workers": N_WORKERS}):
        yield
    ds_cluster.close_local()


@pytest.fixture
def cluster(_local_cluster_settings: None) -> Any:
    """The process's embedded local cluster, 2 workers x 1 thread: made once for the session,
    and made again if a test closed it (the tests of the local cluster's own TLS do)."""
    from dscheduler.run import clusters as ds_cluster

    client = ds_cluster.local_cluster()
    if not getattr(client, "_ds_tests_ready", False):
        client.wait_for_workers(N_WORKERS, timeout=60)
        client.register_plugin(SubmittedTasks())
        client._ds_tests_ready = True
    return client


@pytest.fixture
def log(tmp_path: Path) -> str:
    """The file the counting tasks append a line to per execution (a str: see above)."""
    return str(tmp_path / "log")


@pytest.fixture
def graph_store(tmp_path: Path) -> ds.Store:
    return ds.Store(tmp_path / "data")


class SubmittedTasks(SchedulerPlugin):
    """Counts the tasks clients submit to the scheduler."""

    name = "dscheduler-test-submitted"

    def __init__(self) -> None:
        self.count = 0

    def update_graph(self, scheduler: Any, *, keys: Any = (), **kwargs: Any) -> None:
        self.count += len(keys)


def _submitted(dask_scheduler: Any) -> int:
    return int(dask_scheduler.plugins[SubmittedTasks.name].count)


def transitions(client: Any) -> int:
    """How many tasks were ever submitted: unchanged means nothing was submitted."""
    return int(client.run_on_scheduler(_submitted))


def driver_graph(log: str, n: int, sleep: float) -> list[ds.Node]:
    cfgs = [Cfg(flavor="ab"[i % 2], x=i, log=log, sleep=sleep) for i in range(n)]
    nodes = [work(cfg, "c0") for cfg in cfgs]
    return [*nodes, total(nodes, log)]


def slow_nodes(log: str) -> list[ds.Node]:
    """Three 4-second runs over two envs: the same keys in every process."""
    return [work(Cfg(flavor="ab"[i % 2], x=i, log=log, sleep=4), "c0") for i in range(3)]


def driver_main(argv: list[str]) -> int:
    store, log, n, sleep = argv[1], argv[2], int(argv[3]), float(argv[4])
    with dask.config.set({"dscheduler.local.n_workers": N_WORKERS}):
        results = ds.compute(driver_graph(log, n, sleep), store=store, progress=False)
    print(json.dumps({"states": Counter(results.states.values()), "envs": results.envs}),
          flush=True)
    return 0 if results.ok else 1


if __name__ == "__main__":
    # Import this file as the module `graphfixtures`, so workers unpickle the
    # tasks by reference (a __main__ module would be pickled by value).
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import graphfixtures

    sys.exit(graphfixtures.driver_main(sys.argv))

