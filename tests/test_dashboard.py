"""The dscheduler page on real schedulers: its JSON against the store, live updates,
idempotent install on a scheduler dscheduler did not start, links, loopback only.

The browser's view of the same pages is in tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask
import pytest
from graphfixtures import Broken, Cfg, boom, total, work
from helpers import assert_loopback_only, wait_for
from typer.testing import CliRunner

import dscheduler as ds
from dscheduler.cli import app
from dscheduler.run import dashboard
from dscheduler.run.dashboard.web import _MARK
from dscheduler.store.catalogue.status import summarize


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("application/json")
        return dict(json.load(response))


def page_url(client: Any) -> str:
    return dashboard.links(client)[1]


def graph_section(client: Any, submission: str) -> dict[str, Any] | None:
    data = get_json(page_url(client) + ".json")
    return next((g for g in data["graphs"] if g["submission"] == submission), None)


@pytest.fixture
def fresh_stores() -> Iterator[None]:
    """The page reads a store again at every request (the default waits a few seconds)."""
    with dask.config.set({"dscheduler.dashboard.store_interval": 0}):
        yield


def mixed_graph(log: str) -> tuple[list[ds.Node], ds.Node, ds.Node]:
    """Six runs under two labels, a sum over them, a failing node and what it blocks,
    and a run whose env cannot be built."""
    cfgs = [Broken(flavor="ab"[i % 2], x=i, log=log, label=f"L{i % 2}") for i in range(6)]
    works = [work(c, "c0") for c in cfgs]
    bad = boom(7, log)
    broken = work(Broken(flavor="broken", x=99, log=log, label="L9"), "c0")
    return [*works, total(works, log), bad, total([bad], log), broken], bad, broken


def per(results: ds.Results, key: Callable[[ds.Node], str]) -> dict[str, dict[str, int]]:
    out: dict[str, Counter[str]] = {}
    for node in results.plan.nodes:
        out.setdefault(key(node), Counter())[results.state(node)] += 1
    return {k: dict(c) for k, c in out.items()}


def test_dashboard_status_has_bokeh(cluster: Any) -> None:
    """A plain install has bokeh: /status is Dask's page, not the missing-bokeh message."""
    status = dashboard.links(cluster)[0]
    with urllib.request.urlopen(status, timeout=30) as response:
        html = response.read().decode()
    assert "Dask needs bokeh" not in html
    assert "bokeh" in html.lower() and "Dask" in html


def test_page_json_agrees_with_results_store_and_status(
    cluster: Any, graph_store: ds.Store, tmp_path: Path, fresh_stores: None
) -> None:
    log = str(tmp_path / "log")
    nodes, bad, broken = mixed_graph(log)
    ds.compute(nodes[:2], store=graph_store, cluster=cluster, progress=False)  # 2 cached later
    handle = ds.submit(nodes, store=graph_store, cluster=cluster)
    results = handle.wait(progress=False)
    assert results.counts() == {"succeeded": 5, "cached": 2, "failed": 1, "blocked": 2}

    graph = wait_for(lambda: (g := graph_section(cluster, handle.submission)) and g["done"]
                     and g, what="the graph to end on the page")
    # Nodes by state per task and per run label: exactly what the driver collected.
    assert graph["by_task"] == per(results, lambda n: n.task.name)
    assert graph["by_label"] == per(results, dashboard.label_of)
    assert graph["cache_hits"] == 2 and graph["nodes"] == len(nodes)
    assert graph["columns"][:6] == ["queued", "running", "cached", "succeeded", "failed",
                                    "blocked"]
    # Envs: the two flavors built (with build time and size from env.json), one failed.
    envs = {e["env_id"]: e for e in graph["envs"]}
    assert envs[broken.env_id]["state"] == "failed"
    assert "dstest-does-not-exist" in envs[broken.env_id]["log_tail"]
    good = [e for k, e in envs.items() if k != broken.env_id]
    assert len(good) == 2 and all(e["state"] == "built" and e["kind"] == "dir"
                                  and e["build_seconds"] > 0 and e["size_bytes"] > 0
                                  for e in good)
    # Latest failures, newest first, with the record's error and log tail.
    failures = {f["name"]: f for f in graph["failures"]}
    assert set(failures) == {bad.name, f"build_env-{broken.env_id}"}
    assert failures[bad.name]["error"] == "ValueError: boom 7 went wrong"
    assert "boom 7 went wrong" in failures[bad.name]["log_tail"]
    assert failures[bad.name]["where"] == str(bad.paths(graph_store).record)
    assert "dstest-does-not-exist" in failures[f"build_env-{broken.env_id}"]["log_tail"]

    # The store section is the store's own summary: what `dscheduler status` prints.
    data = get_json(page_url(cluster) + ".json")
    [store] = [s for s in data["stores"] if s["root"] == str(graph_store.root)]
    expected = summarize(graph_store).to_json()
    assert {k: v for k, v in store.items() if k != "updated"} == \
        {k: v for k, v in expected.items() if k != "updated"}
    runs = graph_store.runs()
    assert store["runs"] == len(runs) == 7
    assert set(store["by_label"]) - {""} == set(runs["label"]) - {"L9"}  # L9 never ran
    assert store["by_task"] == {"work": {"succeeded": 6}, "total": {"succeeded": 1},
                                "boom": {"failed": 1}}
    # The graph's succeeded and cached nodes are the store's succeeded ones.
    for task, counts in graph["by_task"].items():
        stored = store["by_task"].get(task, {})
        assert counts.get("succeeded", 0) + counts.get("cached", 0) == \
            stored.get("succeeded", 0)
        assert counts.get("failed", 0) == stored.get("failed", 0)

    out = CliRunner().invoke(app, ["status", "--store", str(graph_store.root)])
    assert out.exit_code == 0, out.output
    assert f"runs: {len(runs)}; envs built: 2" in out.output
    assert "succeeded  7" in out.output and "failed     1" in out.output
    lines = out.output.splitlines()
    assert any(line.split() == ["work", "6", "0", "6"] for line in lines), out.output
    assert any(line.split() == ["L0", "3", "0", "3"] for line in lines), out.output
    assert "ValueError: boom 7 went wrong" in out.output


def test_page_follows_a_running_graph(cluster: Any, graph_store: ds.Store,
                                      tmp_path: Path) -> None:
    """Counts move while the graph runs: queued and running first, then succeeded."""
    log = str(tmp_path / "log")
    cfgs = [Cfg(flavor="a", x=i, log=log, sleep=1.5, label="slow") for i in range(4)]
    works = [work(c, "c0") for c in cfgs]
    handle = ds.submit(works, total(works, log), store=graph_store, cluster=cluster)
    seen = wait_for(lambda: (g := graph_section(cluster, handle.submission))
                    and g["states"].get("running") and g, what="running nodes")
    assert not seen["done"] and seen["states"].get("queued", 0) >= 1  # the sum waits
    assert seen["by_label"]["slow"].get("running", 0) >= 1
    handle.wait(progress=False)
    done = wait_for(lambda: (g := graph_section(cluster, handle.submission)) and g["done"]
                    and g, what="the graph to end")
    assert done["states"] == {"succeeded": 5}


def test_install_is_idempotent_on_a_scheduler_dscheduler_did_not_start(
    tmp_path: Path, fresh_stores: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plain LocalCluster (with a dashboard prefix) already running: the page appears on
    the first submit, once; two stores share the scheduler, each with its section."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address="127.0.0.1:0",
                      scheduler_kwargs={"http_prefix": "/prefix"}) as lc, Client(lc) as client:
        scheduler = lc.scheduler
        assert dashboard.NAME not in scheduler.plugins
        port = scheduler.http_server.port
        log = str(tmp_path / "log")
        stores = [ds.Store(tmp_path / "one"), ds.Store(tmp_path / "two")]
        first = ds.compute(total([boom(1, log)], log), store=stores[0], cluster=client,
                           progress=False)
        assert first.counts() == {"failed": 1, "blocked": 1}
        plugin = scheduler.plugins[dashboard.NAME]
        assert dashboard.install(client) and dashboard.install(client)  # again: no change
        assert scheduler.plugins[dashboard.NAME] is plugin
        assert page_rules(scheduler) == ["/prefix/dscheduler$", "/prefix/dscheduler\\.json$"]
        assert getattr(scheduler.http_application, _MARK) == "/prefix/"
        second = ds.compute(total([], log), store=stores[1], cluster=client, progress=False)
        assert second.counts() == {"succeeded": 1}

        base = f"http://127.0.0.1:{port}/prefix/dscheduler"
        with urllib.request.urlopen(base, timeout=30) as response:
            assert "<title>dscheduler</title>" in response.read().decode()
        data = get_json(base + ".json")
        assert [g["root"] for g in data["graphs"]] == [str(s.root) for s in reversed(stores)]
        assert data["graphs"][1]["by_task"] == {"boom": {"failed": 1},
                                                "total": {"blocked": 1}}
        assert [s["root"] for s in data["stores"]] == [str(s.root) for s in reversed(stores)]
        for section, store in zip(data["stores"], reversed(stores), strict=True):
            assert section["by_task"] == summarize(store).to_json()["by_task"]
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/dscheduler", timeout=30)
    assert capsys.readouterr().err.count("dscheduler page:") == 1  # printed once


@pytest.fixture
def scheduler_process(tmp_path: Path) -> Iterator[str]:
    """A ``dask scheduler`` and a ``dask worker``, processes of their own, as a long-lived
    scheduler (``cluster up``, a SLURM job) would be: its address."""
    import subprocess
    import sys

    info = tmp_path / "scheduler.json"
    dask_cli = [sys.executable, "-m", "dask"]
    procs = [subprocess.Popen([*dask_cli, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--dashboard-address", "127.0.0.1:0", "--dashboard-prefix",
                               "/hub", "--scheduler-file", str(info)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_for(info.exists, timeout=60, what="the scheduler to start")
        address = json.loads(wait_for(info.read_text, what="its scheduler file"))["address"]
        procs.append(subprocess.Popen([*dask_cli, "worker", address, "--nthreads", "1",
                                       "--host", "127.0.0.1", "--no-nanny"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)


def test_page_on_a_scheduler_in_another_process(scheduler_process: str, tmp_path: Path,
                                                graph_store: ds.Store) -> None:
    """The plugin travels to a scheduler process by reference and serves the page there."""
    from distributed import Client

    with Client(scheduler_process) as client:
        client.wait_for_workers(1, timeout=60)
        log = str(tmp_path / "log")
        results = ds.compute(total([boom(2, log)], log), total([], log), store=graph_store,
                             cluster=client, progress=False)
        assert results.counts() == {"failed": 1, "blocked": 1, "succeeded": 1}
        port = client.scheduler_info()["services"]["dashboard"]
        base = f"http://127.0.0.1:{port}/hub/dscheduler"
        [graph] = wait_for(lambda: [g for g in get_json(base + ".json")["graphs"] if g["done"]],
                           what="the graph to end on the page")
        assert graph["by_task"] == {"boom": {"failed": 1},
                                    "total": {"blocked": 1, "succeeded": 1}}
        assert graph["failures"][0]["error"] == "ValueError: boom 2 went wrong"


def page_rules(scheduler: Any) -> list[str]:
    """Route patterns naming dscheduler on the scheduler's dashboard server."""
    found = []
    for rule in scheduler.http_application.default_router.rules:
        for sub in getattr(rule.target, "rules", []):
            pattern = getattr(sub.matcher, "regex", None)
            if pattern is not None and "dscheduler" in pattern.pattern:
                found.append(pattern.pattern)
    return found


def test_printed_link_follows_the_dashboard_link_setting(
    cluster: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A JupyterHub proxy template gives both links through the proxy."""
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ana/")
    monkeypatch.setattr(dashboard, "_printed", set())
    port = cluster.scheduler_info()["services"]["dashboard"]
    with dask.config.set({"distributed.dashboard.link":
                          "{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status"}):
        assert dashboard.links(cluster) == (f"/user/ana/proxy/{port}/status",
                                            f"/user/ana/proxy/{port}/dscheduler")
        assert dashboard.install(cluster)
    err = capsys.readouterr().err
    assert f"dashboard at /user/ana/proxy/{port}/status " \
           f"(dscheduler page: /user/ana/proxy/{port}/dscheduler)" in err
    assert dashboard.page_link("http://h:1/other/") == "http://h:1/other/dscheduler"


def test_dashboard_listens_on_loopback_only(cluster: Any) -> None:
    """Bound to 127.0.0.1: the machine's other addresses (eth0's) are refused."""
    if not assert_loopback_only(dashboard.links(cluster)[0]):
        pytest.skip("this machine has no IPv4 address outside loopback to connect to")
