"""Views, explain, code drift, rerun, lineage and the results CLI, on real records made
by real computes (shared LocalCluster, tasks in real env subprocesses)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from graphfixtures import Cfg, count, total, work
from typer.testing import CliRunner

import dscheduler as ds
from dscheduler.cli import app
from dscheduler.graph.drift import CodeDriftWarning
from dscheduler.graph.explain import explain
from dscheduler.graph.imports import load_file
from dscheduler.run.rerun import rerun

runner = CliRunner()


def cli(*args: str) -> Any:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    return result


@ds.task(version="1", env=None)
def field(cfg: Any, case: str) -> Any:
    import xarray as xr

    step = np.arange(4)
    return xr.Dataset({"t2m": ("step", step * 1.0 + cfg.x)}, coords={"step": step})


def test_open_results_and_collect(cluster: Any, graph_store: ds.Store, tmp_path: Path) -> None:
    import xarray as xr

    cfg = Cfg(x=10, label="fields")
    nodes = [field(cfg, c) for c in ("2020010100", "2020010112", "2020010200")]
    ds.compute(nodes, store=graph_store, cluster=cluster, progress=False).raise_for_status()
    one = graph_store.open(nodes[1])
    assert isinstance(one, xr.Dataset) and one["t2m"].values.tolist() == [10.0, 11, 12, 13]
    combined = ds.open_results(cfg, store=graph_store)
    assert combined["t2m"].dims == ("case", "step")
    assert combined["t2m"].chunks is not None  # lazy (dask)
    assert list(combined["case"].values) == ["2020010100", "2020010112", "2020010200"]
    assert ds.open_results("fields", store=graph_store)["t2m"].shape == (3, 4)  # by label
    path = graph_store.collect(cfg, tmp_path / "all.zarr")
    collected = xr.open_zarr(path, consolidated=True).load()
    xr.testing.assert_equal(collected, combined.load())
    assert collected["t2m"].encoding["chunks"] == (1, 4)  # one chunk per case
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".all.zarr")]
    with pytest.raises(ds.ConfigError, match=r"nothing in the store .* is named 'nope'"):
        ds.open_results("nope", store=graph_store)


def _files(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under ``root``: its bytes, inode and mtime in ns."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_collect_writes_chunks_in_parallel_tasks_after_all_metadata(
        cluster: Any, graph_store: ds.Store, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """store.collect: the metadata written once, by this process, before any chunk; then
    one dask task per chunk on the cluster (chunks of 1 case x the stored chunks), which
    write chunks only: no metadata file is written again."""
    import xarray as xr
    from distributed import get_task_stream

    from dscheduler.store.catalogue import views

    cases = ("2020010100", "2020010112", "2020010200", "2020010212")
    cfg = Cfg(x=20, label="collected")
    nodes = [field(cfg, c) for c in cases]
    ds.compute(nodes, store=graph_store, cluster=cluster, progress=False).raise_for_status()
    stored = graph_store.open(nodes[0])["t2m"].encoding["chunks"]
    seen: dict[str, Any] = {}

    def write_zarr(dataset: Any, path: Path, *, compute: bool = True) -> Any:
        assert compute is False, "collect writes the chunks through dask, not in one call"
        # Aligned: one dask block per case, the stored chunks along the other dimensions.
        assert dataset["t2m"].chunks == ((1,) * len(cases), stored)
        delayed = real(dataset, path, compute=compute)
        seen["before"] = _files(path)
        return delayed

    real = views.write_zarr
    monkeypatch.setattr(views, "write_zarr", write_zarr)
    with get_task_stream(cluster) as stream:
        path = graph_store.collect(cfg, tmp_path / "all.zarr")

    # Before dask ran: every piece of metadata, consolidated, and no chunk of t2m.
    before = seen["before"]
    meta = {name for name in before if name.endswith("zarr.json")}
    assert {"zarr.json", "t2m/zarr.json", "case/zarr.json", "step/zarr.json"} <= meta
    root = json.loads(before["zarr.json"][0])
    assert "t2m" in root["consolidated_metadata"]["metadata"]
    assert not [name for name in before if name.startswith("t2m/c/")]
    # Dask wrote one chunk per case, in one task each, on the cluster's workers...
    after = _files(path)
    chunks = sorted(name for name in after if name.startswith("t2m/c/"))
    assert chunks == [f"t2m/c/{i}/0" for i in range(len(cases))]
    # (dask.array.store's tasks: key ("store-map-<token>", *block index))
    writers = sorted(t["key"][1:] for t in stream.data
                     if isinstance(t["key"], tuple) and t["key"][0].startswith("store-map-"))
    assert writers == [(i, 0) for i in range(len(cases))], [t["key"] for t in stream.data]
    # ... and no task wrote any metadata: those files are the ones written before.
    assert {n: after[n] for n in after if n.endswith("zarr.json")} == \
        {n: before[n] for n in meta}
    xr.testing.assert_equal(xr.open_zarr(path).load(),
                            ds.open_results(cfg, store=graph_store).load())


@ds.task(version="1", env=None)
def stats(cfg: Any, case: str) -> dict[str, Any]:
    return {"case": case, "x": cfg.x, "scores": [0.5, 1.5], "ok": True, "note": None}


def test_open_a_json_value_returns_the_plain_value(cluster: Any,
                                                   graph_store: ds.Store) -> None:
    cfg = Cfg(x=3, label="plain")
    nodes = [stats(cfg, c) for c in ("c0", "c1")]
    ds.compute(nodes, store=graph_store, cluster=cluster, progress=False).raise_for_status()
    expected = {"case": "c0", "x": 3, "scores": [0.5, 1.5], "ok": True, "note": None}
    value = graph_store.open(nodes[0])
    assert value == expected and type(value) is dict  # not xarray, not a record
    assert graph_store.open(nodes[0].name) == expected  # by node name too
    assert ds.open_results(cfg, store=graph_store) == {  # JSON values: a dict by case
        "c0": expected, "c1": dict(expected, case="c1")}


def test_explain_names_the_changed_config_field(cluster: Any, graph_store: ds.Store,
                                                tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    before = work(Cfg(x=1, label="exp", log=log), "c0")
    ds.compute(before, store=graph_store, cluster=cluster, progress=False).raise_for_status()
    after = work(Cfg(x=2, label="exp", log=log), "c0")
    why = explain(after, graph_store)
    assert why.reason == "no record"
    assert [str(c) for c in why.changes] == ["config.x: 1 -> 2"]
    assert "same label" in why.how and why.compared == before.paths(graph_store).record
    assert explain(before, graph_store).reason is None  # stored and current: nothing to say

    # Same run, another task version: the record at its own path, field "version".
    work2 = ds.task(version="2", name="work")(work.fn)
    why = explain(work2(Cfg(x=1, label="exp", log=log), "c0"), graph_store)
    assert why.how == "the stored record at its path"
    assert [str(c) for c in why.changes] == ["version: '1' -> '2'"]


def _task_file(path: Path, body: str, version: str = "1") -> Any:
    path.write_text(
        "import dscheduler as ds\n\n"
        f"@ds.task(version={version!r}, env=None)\n"
        "def step(x: int) -> int:\n"
        f"    {body}\n"
    )
    for name, module in list(sys.modules.items()):
        if getattr(module, "__file__", None) == str(path.resolve()):
            del sys.modules[name]
    return load_file(path).step


def test_code_drift_is_reported_and_rerun_on_request(cluster: Any, graph_store: ds.Store,
                                                     tmp_path: Path) -> None:
    source = tmp_path / "steps.py"
    step = _task_file(source, "return x + 1")
    ds.compute(step(1), store=graph_store, cluster=cluster, progress=False).raise_for_status()
    # A comment and a blank line are not a change.
    step = _task_file(source, "# a comment\n\n    return x + 1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CodeDriftWarning)
        assert ds.plan(step(1), store=graph_store).nothing_to_do

    edited = _task_file(source, "return x + 2")
    with pytest.warns(CodeDriftWarning, match=r"1 finished node\(s\) of task\(s\) step"):
        p = ds.plan(edited(1), store=graph_store)
    assert p.nothing_to_do and list(p.drift.values()) == [
        "code changed since the stored result, version unchanged"]
    assert "cached node(s) whose code changed" in p.explain()
    why = explain(edited(1), graph_store)
    assert why.drift and why.reason is None
    assert [c.field for c in why.changes] == ["code (version unchanged)"]

    import dask.config

    with dask.config.set({"dscheduler.results.code_drift": "rerun"}):
        results = ds.compute(edited(1), store=graph_store, cluster=cluster, progress=False)
    assert results.counts() == {"succeeded": 1} and results.value(edited(1)) == 3
    with dask.config.set({"dscheduler.results.code_drift": "ignore"}), \
            warnings.catch_warnings():
        warnings.simplefilter("error", CodeDriftWarning)
        ds.plan(_task_file(source, "return x + 5")(1), store=graph_store)


def test_rerun_gives_equal_results_and_refuses_changed_code(
        cluster: Any, graph_store: ds.Store, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    cfgs = [Cfg(x=i, label=f"r{i}", log=log) for i in range(2)]
    nodes = [work(c, "c0") for c in cfgs]
    agg = total(nodes, log)
    first = ds.compute(agg, store=graph_store, cluster=cluster, progress=False)
    value = first.value(agg)

    again = rerun(agg.name, store=graph_store, cluster=cluster, progress=False)
    assert again.counts() == {"succeeded": 1, "cached": 2}  # upstream stays cached
    assert again.value(agg) == value and count(log, "total") == 2
    record = graph_store.read_record(agg.paths(graph_store).record)
    assert record is not None and len(record["attempts"]) == 2

    again = rerun("r1", store=graph_store, cluster=cluster, progress=False)  # by label
    assert again.value(nodes[1]) == {"x": 1, "case": "c0"}
    assert count(log, "end a 1 c0") == 2 and count(log, "end a 0 c0") == 1

    source = tmp_path / "steps.py"
    step = _task_file(source, "return x * 3")
    ds.compute(step(2), store=graph_store, cluster=cluster, progress=False).raise_for_status()
    _task_file(source, "return x * 3", version="2")
    with pytest.raises(ds.ConfigError) as info:
        rerun(step(2).name, store=graph_store, cluster=cluster)
    assert "rerun refused" in str(info.value) and "version: '1' -> '2'" in str(info.value)
    _task_file(source, "return x * 4")
    with pytest.raises(ds.ConfigError, match=r"(?s)code of task .step. changed .*--force"):
        rerun(step(2).name, store=graph_store, cluster=cluster)
    forced = rerun(step(2).name, store=graph_store, cluster=cluster, force=True, progress=False)
    assert forced.values() == [8]


def test_cli_runs_show_compare_lineage_explain(cluster: Any, graph_store: ds.Store,
                                               tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    a, b = Cfg(x=1, label="cli-a", log=log), Cfg(x=2, label="cli-b", log=log)
    nodes = [work(a, "c0"), work(b, "c0")]
    agg = total(nodes, log)
    ds.compute(agg, store=graph_store, cluster=cluster, progress=False).raise_for_status()
    store = str(graph_store.root)

    out = cli("runs", "--store", store, "--format", "json", "--filter", "label like 'cli-%'",
              "--sort", "label desc")
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert [r["label"] for r in rows] == ["cli-b", "cli-a"] and rows[0]["config.x"] == 2
    out = cli("runs", "--store", store, "--format", "csv", "--by", "node")
    assert out.exit_code == 0 and out.output.count("\n") == 4  # header + 3 nodes
    out = cli("runs", "--store", store, "--filter", "label like")
    assert out.exit_code == 2 and "bad filter" in out.output and "^" in out.output

    out = cli("show", "cli-a", "--store", store)
    assert out.exit_code == 0, out.output
    assert "x = 1" in out.output and "succeeded" in out.output and "log tail" in out.output

    out = cli("compare", "cli-a", "cli-b", "--store", store)
    assert out.exit_code == 0, out.output
    shown = {line.split()[0] for line in out.output.splitlines()[1:-1]}
    assert {"config.x", "label", "run_id"} <= shown and "state" not in shown

    out = cli("show", agg.name, "--upstream", "--store", store)
    assert out.exit_code == 0 and nodes[0].name in out.output and nodes[1].name in out.output
    out = cli("show", nodes[0].name, "--downstream", "--store", store)
    assert out.exit_code == 0 and agg.name in out.output and nodes[1].name not in out.output

    recipe = tmp_path / "recipe.py"
    recipe.write_text(
        "from graphfixtures import Cfg, work\n\n"
        f"def nodes():\n    return [work(Cfg(x=5, label='cli-a', log={log!r}), 'c0')]\n")
    out = cli("explain", str(recipe), "--store", store)
    assert out.exit_code == 0, out.output
    assert "config.x: 1 -> 5" in out.output and "same label" in out.output


def test_cli_explain_a_stored_run_or_node(cluster: Any, graph_store: ds.Store,
                                          tmp_path: Path) -> None:
    """`explain NODE|RUN`: the stored node rebuilt from its record with today's code."""
    log = str(tmp_path / "log")
    cfg = Cfg(x=1, label="why", log=log)
    ds.compute([work(cfg, "c0"), work(cfg, "c1")], store=graph_store, cluster=cluster,
               progress=False).raise_for_status()
    source = tmp_path / "steps.py"
    step = _task_file(source, "return x + 1")
    ds.compute(step(1), store=graph_store, cluster=cluster, progress=False).raise_for_status()
    store = str(graph_store.root)

    for ref in ("why", cfg.run_id, work(cfg, "c1").name):  # label, run_id, node name
        out = cli("explain", ref, "--store", store)
        assert out.exit_code == 0, out.output
        assert "would not run (its stored result is current)" in out.output
    assert out.output.count("would not run") == 1  # a node names one node
    out = cli("explain", "why", "--store", store)
    assert out.output.count("would not run") == 2 and \
        "0 of 2 node(s) would run or changed code" in out.output

    name = step(1).name
    _task_file(source, "return x + 1", version="2")  # today's code bumped the version
    out = cli("explain", name, "--store", store)
    assert out.exit_code == 0, out.output
    assert "version: '1' -> '2'" in out.output and "1 of 1 node(s) would run" in out.output
    _task_file(source, "return x + 7")  # version 1 again, its code edited
    out = cli("explain", name, "why", "--store", store)
    assert out.exit_code == 0, out.output
    assert "code (version unchanged)" in out.output and "1 of 3 node(s)" in out.output

    out = cli("explain", "no-such-run", "--store", store)
    assert out.exit_code != 0 and "nothing in the store" in out.output
