"""Running graphs on a real LocalCluster, tasks in real env subprocesses.

Executions are counted by the side effects the tasks leave (graphfixtures),
not by records.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from graphfixtures import Broken, Cfg, boom, count, total, transitions, work

import dscheduler as ds


def _graph(log: str, n: int = 20) -> tuple[list[Cfg], list[ds.Node], ds.Node]:
    cfgs = [Cfg(flavor="ab"[i % 2], x=i, log=log) for i in range(n)]
    nodes = [work(cfg, "c0") for cfg in cfgs]
    return cfgs, nodes, total(nodes, log)


def test_twenty_tasks_two_envs_then_nothing(cluster: Any, graph_store: ds.Store,
                                            tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    _, nodes, agg = _graph(log)
    results = ds.compute(nodes, agg, store=graph_store, cluster=cluster, progress=False)
    results.raise_for_status()
    assert sorted(results.envs.values()) == ["built", "built"]
    assert count(log, "end") == 20 and count(log, "total") == 1
    assert results.value(agg) == sum(range(20))
    assert results.value(nodes[3]) == {"x": 3, "case": "c0"}
    record = results.record(nodes[3])
    assert record is not None and record["state"] == "succeeded"
    assert record["attempts"][0]["exit_code"] == 0
    assert Path(record["attempts"][0]["log"]).read_text().startswith("=== work-")
    assert (graph_store.run(nodes[3].cfg.run_id).record).exists()  # type: ignore[union-attr]

    before = transitions(cluster)
    again = ds.compute(nodes, agg, store=graph_store, cluster=cluster, progress=False)
    assert again.counts() == {"cached": 21} and again.envs == {}
    assert count(log, "end") == 20 and count(log, "total") == 1
    assert transitions(cluster) == before  # nothing was submitted


def test_changed_config_and_version_rerun_only_what_changed(
    cluster: Any, graph_store: ds.Store, tmp_path: Path
) -> None:
    log = str(tmp_path / "log")
    cfgs, nodes, agg = _graph(log, n=4)
    ds.compute(nodes, agg, store=graph_store, cluster=cluster, progress=False).raise_for_status()
    assert count(log, "end") == 4

    # One config changed: that task and the aggregate rerun, nothing else.
    cfgs[1] = cfgs[1].model_copy(update={"x": 100})
    nodes2 = [work(c, "c0") for c in cfgs]
    r = ds.compute(nodes2, total(nodes2, log), store=graph_store, cluster=cluster,
                   progress=False)
    assert r.counts() == {"succeeded": 2, "cached": 3}
    assert count(log, "end b 100") == 1 and count(log, "end") == 5 and count(log, "total") == 2

    # A version bump of the aggregate reruns it alone; of `work`, everything downstream.
    total2 = ds.task(version="2", name="total")(total.fn)
    r = ds.compute(total2(nodes2, log), store=graph_store, cluster=cluster, progress=False)
    assert r.counts() == {"succeeded": 1, "cached": 4} and count(log, "total") == 3
    work2 = ds.task(version="2", name="work")(work.fn)
    bumped = [work2(c, "c0") for c in cfgs[:2]] + nodes2[2:]
    r = ds.compute(total2(bumped, log), store=graph_store, cluster=cluster, progress=False)
    assert r.counts() == {"succeeded": 3, "cached": 2}
    assert count(log, "end") == 7 and count(log, "total") == 4


def test_failure_blocks_downstream_only(cluster: Any, graph_store: ds.Store,
                                        tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    bad = boom(7, log)
    after = total([bad], log)
    after2 = total([after], log + "2")
    ok = [total([], log + f"-ok{i}") for i in range(3)]
    r = ds.compute(after2, *ok, store=graph_store, cluster=cluster, progress=False)
    assert r.state(bad) == "failed"
    assert r.state(after) == r.state(after2) == "blocked"
    assert all(r.state(n) == "succeeded" for n in ok)
    assert count(log, "boom") == 1 and count(log, "total") == 0  # blocked never ran
    record = r.record(bad)
    assert record is not None and record["state"] == "failed"
    assert "ValueError: boom 7 went wrong" in record["attempts"][0]["error"]
    assert "in boom" in record["attempts"][0]["traceback"]
    # User code travels by value, yet its traceback names its file and shows its source.
    assert 'graphfixtures.py", line' in record["attempts"][0]["traceback"]
    assert 'raise ValueError(f"boom {x} went wrong")' in record["attempts"][0]["traceback"]
    with pytest.raises(ds.TaskError) as info:
        r.raise_for_status()
    text = str(info.value)
    assert "boom 7 went wrong" in text and "Traceback" in text and "2 node(s) blocked" in text

    # Rerun: the failed node is tried again ("failed before"), the blocked ones follow.
    p = ds.plan(after2, store=graph_store)
    assert p.reason(bad) == "failed before" and len(p.to_run) == 3


def test_retries_and_force(cluster: Any, graph_store: ds.Store, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    flaky = boom.options(retries=2)(1, log)
    r = ds.compute(flaky, store=graph_store, cluster=cluster, progress=False)
    assert r.state(flaky) == "failed" and count(log, "boom") == 3
    record = r.record(flaky)
    assert record is not None
    assert [a["state"] for a in record["attempts"]] == ["failed"] * 3

    node = total([], log)
    ds.compute(node, store=graph_store, cluster=cluster, progress=False)
    ds.compute(node, store=graph_store, cluster=cluster, progress=False, force=True)
    uncached = total.options(cache=False)([], log)
    ds.compute(uncached, store=graph_store, cluster=cluster, progress=False)
    assert count(log, "total") == 3


@ds.task(version="1")
def arrays(n: int) -> Any:
    import xarray as xr

    return xr.Dataset({"v": ("i", np.arange(n) * 1.5)}, attrs={"n": n})


@ds.task(version="1")
def plain(n: int) -> Any:
    return np.arange(n)


@ds.task(version="1")
def weird(n: int) -> Any:
    return {1, 2, n}


def test_values_persist_as_zarr_and_json(cluster: Any, graph_store: ds.Store) -> None:
    a, b, c = arrays(4), plain(3), weird(1)
    r = ds.compute(a, b, c, store=graph_store, cluster=cluster, progress=False)
    assert r.value(a)["v"].values.tolist() == [0.0, 1.5, 3.0, 4.5]
    assert a.paths(graph_store).zarr.is_dir() and r.value(a).attrs["n"] == 4
    assert r.value(b).tolist() == [0, 1, 2]
    assert r.state(c) == "failed"
    assert "cannot store" in r.errors[c.key]
    import xarray as xr

    assert xr.open_zarr(a.paths(graph_store).zarr, consolidated=False)["v"].sum() == 9.0


def test_bad_input_rejected_before_submission(cluster: Any, graph_store: ds.Store,
                                             tmp_path: Path) -> None:
    before = transitions(cluster)
    with pytest.raises(ds.ConfigError):
        total([object()], "x")
    with pytest.raises(ds.ConfigError):
        total.options(gpus=1)
    a = total([], "x")
    b = total([a], "x")
    a.upstream = (b,)  # tampered: the only way to make a cycle
    with pytest.raises(ds.GraphError, match="cycle"):
        ds.compute(b, store=graph_store, cluster=cluster, progress=False)

    class Missing(Cfg):
        def env(self) -> ds.Env:
            return ds.Env.from_checkpoint(tmp_path / "missing.ckpt")

    good = total([], str(tmp_path / "good"))
    with pytest.raises(ds.GraphError, match="missing environment"):
        ds.compute(good, work(Missing(), "c"), store=graph_store, cluster=cluster,
                   progress=False)
    assert transitions(cluster) == before
    assert not (tmp_path / "good").exists()


def test_env_build_failure_blocks_its_nodes_only(cluster: Any, graph_store: ds.Store,
                                                 tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    bad = work(Broken(flavor="broken", log=log), "c0")
    good = work(Broken(flavor="a", log=log), "c0")
    r = ds.compute(bad, good, store=graph_store, cluster=cluster, progress=False)
    assert r.state(bad) == "blocked" and r.state(good) == "succeeded"
    assert list(r.env_errors) == [bad.env_id] and r.envs[bad.env_id] == "failed"
    assert "dstest-does-not-exist" in r.env_errors[bad.env_id]
    with pytest.raises(ds.TaskError, match=f"build_env-{bad.env_id} failed"):
        r.raise_for_status()
    assert not graph_store.env(bad.env_id).record.exists()  # nothing half-built published
    assert count(log, "end") == 1


def test_local_cluster_binds_loopback_and_store_is_not_world_writable(
    cluster: Any, graph_store: ds.Store, tmp_path: Path
) -> None:
    import stat
    from urllib.parse import urlparse

    assert urlparse(cluster.scheduler.address).hostname == "127.0.0.1"
    assert urlparse(cluster.dashboard_link).hostname == "127.0.0.1"
    _, nodes, agg = _graph(str(tmp_path / "log"), n=2)
    ds.compute(nodes, agg, store=graph_store, cluster=cluster, progress=False).raise_for_status()
    written = list(graph_store.root.rglob("*"))
    assert any(p.suffix == ".zarr" or p.name.endswith(".json") for p in written)
    writable = [p for p in written if not p.is_symlink() and p.stat().st_mode & stat.S_IWOTH]
    assert writable == []


def test_handle_status_after_wait_reports_final_states(
    cluster: Any, graph_store: ds.Store, tmp_path: Path
) -> None:
    log = str(tmp_path / "log")
    good, bad = total([], log), boom(3, log)
    cached = total([], log + "-cached")
    ds.compute(cached, store=graph_store, cluster=cluster, progress=False)
    handle = ds.submit(good, bad, cached, store=graph_store, cluster=cluster)
    results = handle.wait(timeout=120, progress=False)
    assert results.counts() == {"succeeded": 1, "cached": 1, "failed": 1}
    assert handle.status() == results.counts()


def test_same_named_functions_in_two_files_keep_their_own_results(
    cluster: Any, graph_store: ds.Store, tmp_path: Path
) -> None:
    """``f(1)`` from ``x + 1`` and from ``x * 100``: each gets its own value, and one
    graph with both is refused before anything runs."""
    from dscheduler.graph.imports import load_file

    tasks = []
    for stem, body in (("first", "x + 1"), ("second", "x * 100")):
        path = tmp_path / f"{stem}.py"
        path.write_text(f"import dscheduler as ds\n\n@ds.task(version='1')\n"
                        f"def f(x: int) -> int:\n    return {body}\n")
        tasks.append(load_file(path).f)
    one, two = tasks[0](1), tasks[1](1)
    assert ds.compute(one, store=graph_store, cluster=cluster, progress=False).value(one) == 2
    assert ds.compute(two, store=graph_store, cluster=cluster, progress=False).value(two) == 100
    before = transitions(cluster)
    with pytest.raises(ds.GraphError, match=r"first\.py:f .* second\.py:f"):
        ds.compute(tasks[0](7), tasks[1](7), store=graph_store, cluster=cluster,
                   progress=False)
    assert transitions(cluster) == before


def test_damaged_value_is_a_clear_store_error(cluster: Any, graph_store: ds.Store) -> None:
    node = plain(4)
    results = ds.compute(node, store=graph_store, cluster=cluster, progress=False)
    paths = node.paths(graph_store)
    (paths.zarr / "zarr.json").write_text("{trunc")
    with pytest.raises(ds.StoreError) as info:
        results.value(node)
    assert str(paths.zarr) in str(info.value) and "verify --repair" in str(info.value)
    paths.record.write_text('{"state": "succ')
    with pytest.raises(ds.StoreError, match=r"plain\.json is damaged"):
        results.record(node)


@ds.task(version="1")
def nap(i: int, seconds: float) -> int:
    import time

    time.sleep(seconds)
    return i


def test_local_cluster_does_not_queue_dschedulers_tasks(cluster: Any, graph_store: ds.Store
                                                        ) -> None:
    """On the embedded cluster every task asks ``CPU: 1`` of workers that offer one per
    thread, as on SLURM (docs/design.md §5.2): Dask hands such tasks to workers at once
    instead of holding them in its scheduler-side queue, which for tiny tasks costs a
    round trip per task."""
    handle = ds.submit([nap(i, 0.3) for i in range(10)], store=graph_store, cluster=cluster)

    def placement(dask_scheduler: Any, keys: list[str]) -> list[tuple[str, Any]]:
        return [(ts.state, ts.resource_restrictions)
                for ts in map(dask_scheduler.tasks.get, keys) if ts is not None]

    keys = [f.key for f in handle.futures.values()]
    deadline = time.monotonic() + 30
    while len(seen := cluster.run_on_scheduler(placement, keys=keys)) < 10:  # graph in transit
        assert time.monotonic() < deadline, seen
        time.sleep(0.01)
    assert all(restrictions == {"CPU": 1} for _, restrictions in seen), seen
    assert not [state for state, _ in seen if state == "queued"], seen
    offered = cluster.run_on_scheduler(
        lambda dask_scheduler: [ws.resources for ws in dask_scheduler.workers.values()])
    assert offered == [{"CPU": 1}] * 2
    assert handle.wait(timeout=120, progress=False).counts() == {"succeeded": 10}
