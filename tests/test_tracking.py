"""Tracking inside tasks (ds.log_param, log_metric, set_tag, log_artifact, ds.output),
in the worker and in real env subprocesses, on the shared LocalCluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from graphfixtures import Cfg

import dscheduler as ds


class Tracked(ds.RunConfig):
    """A run in a dir env of the machine's Python (numpy not needed inside)."""

    ENV_FIELDS: ClassVar = ("flavor",)
    flavor: str = "t"
    lr: float = 0.1
    label: str = ""

    def env(self) -> ds.Env:
        return ds.Env(image="dir")


@ds.task(version="1")
def train(cfg: Any, case: str, artifact: str) -> dict[str, Any]:
    """In the env: every tracking call, through the `ds` module and a bare name."""
    ds.log_param("lr", cfg.lr)
    ds.log_param("case", case)
    for step in range(3):
        ds.log_metric("loss", 1.0 / (step + 1), step=step)
    ds.set_tag("stage", "eval")
    log_metric("rmse", 0.5 if case == "c0" else 1.5)
    ds.log_artifact(artifact)
    return {"ok": True}


log_metric = ds.log_metric


@ds.task(version="1", env=None)
def in_worker(n: int) -> Any:
    ds.log_param("n", n)
    ds.log_metric("mean", float(np.arange(n).mean()))
    ds.set_tag("where", "worker")
    return {"a": np.arange(n, dtype="int16"), "b": np.ones((2, n), dtype="float32")}


@ds.task(version="1", env=None)
def fails_after_logging(n: int) -> int:
    ds.log_metric("progress", 0.5)
    raise RuntimeError("stopped half way")


@ds.task(version="1", env=None)
def writes_output(n: int, files: bool) -> Any:
    import xarray as xr

    xr.Dataset({"v": ("x", np.arange(n) * 2.0)}).to_zarr(ds.output(), zarr_format=3)
    if files:
        (ds.output("dir") / "note.txt").write_text("side file")
    return None


@ds.task(version="1", env=None)
def writes_and_returns(n: int) -> Any:
    ds.output()
    return n


@ds.task(version="1", env=None)
def bad_param(n: int) -> int:
    ds.log_param("x", 1)
    ds.log_param("x", 2)
    return n


def test_tracking_in_an_env_task(cluster: Any, graph_store: ds.Store, tmp_path: Path) -> None:
    artifact = tmp_path / "weights.txt"
    artifact.write_text("w" * 100)
    nodes = [train(Tracked(lr=0.25, label="first"), c, str(artifact)) for c in ("c0", "c1")]
    ds.compute(nodes, store=graph_store, cluster=cluster, progress=False).raise_for_status()
    record = graph_store.read_record(nodes[0].paths(graph_store).record)
    assert record is not None
    assert record["params"] == {"lr": 0.25, "case": "c0"}
    assert record["metrics"] == {"loss": pytest.approx(1 / 3), "rmse": 0.5}
    assert [h[:2] for h in record["metric_history"]["loss"]] == [[0, 1.0], [1, 0.5],
                                                                [2, pytest.approx(1 / 3)]]
    assert record["tags"] == {"stage": "eval"}
    assert record["artifacts"] == [{"name": "weights.txt", "bytes": 100}]
    stored = nodes[0].paths(graph_store).artifacts / "weights.txt"
    assert stored.read_text() == "w" * 100
    assert record["label"] == "first" and record["config"]["lr"] == 0.25
    assert record["call"]["fn"].endswith(":train") and record["call"]["code"]["digest"]
    assert record["env"]["image"] == "dir"

    frame = graph_store.runs(by="node", filter="metrics.rmse < 1 and tags.stage = 'eval'")
    assert list(frame["case"]) == ["c0"] and frame["params.lr"][0] == 0.25
    runs = graph_store.runs()
    assert len(runs) == 1 and runs["metrics.rmse"][0] == pytest.approx(1.0)  # mean of 0.5, 1.5
    assert runs["label"][0] == "first" and runs["config.lr"][0] == 0.25


def test_tracking_in_the_worker_and_dict_of_arrays(cluster: Any, graph_store: ds.Store) -> None:
    node = in_worker(5)
    results = ds.compute(node, store=graph_store, cluster=cluster, progress=False)
    value = results.value(node)
    assert value["a"].dtype == np.int16 and value["a"].tolist() == [0, 1, 2, 3, 4]
    assert value["b"].shape == (2, 5) and value["b"].dtype == np.float32
    record = results.record(node)
    assert record is not None and record["params"] == {"n": 5}
    assert record["metrics"] == {"mean": 2.0} and record["tags"] == {"where": "worker"}
    opened = graph_store.open(node)
    assert opened["b"].dims == ("b_dim_0", "dim_1") and opened["a"].dims == ("a_dim_0",)


def test_failed_attempt_keeps_its_metrics(cluster: Any, graph_store: ds.Store) -> None:
    node = fails_after_logging(1)
    results = ds.compute(node, store=graph_store, cluster=cluster, progress=False)
    record = results.record(node)
    assert record is not None and record["state"] == "failed"
    assert record["metrics"] == {"progress": 0.5}
    bad = bad_param(1)
    results = ds.compute(bad, store=graph_store, cluster=cluster, progress=False)
    assert results.state(bad) == "failed"
    assert "param 'x' was already logged as 1, now 2" in results.errors[bad.key]


def test_output_is_committed_only_on_success(cluster: Any, graph_store: ds.Store) -> None:
    node = writes_output(4, True)
    results = ds.compute(node, store=graph_store, cluster=cluster, progress=False)
    results.raise_for_status()
    paths = node.paths(graph_store)
    assert results.value(node)["v"].values.tolist() == [0.0, 2.0, 4.0, 6.0]
    assert (paths.files / "note.txt").read_text() == "side file"
    record = results.record(node)
    assert record is not None
    assert record["output"] == {"kind": "zarr", "type": "zarr.group", "path": "writes_output.zarr",
                                "files": "writes_output.files"}
    both = writes_and_returns(3)
    results = ds.compute(both, store=graph_store, cluster=cluster, progress=False)
    assert results.state(both) == "failed"
    assert "return None from such a task" in results.errors[both.key]
    leftovers = [p.name for p in both.paths(graph_store).dir.iterdir()]
    assert leftovers == ["writes_and_returns.json"]  # no output, no temporary dir


def test_tracking_outside_a_task_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"ds.log_metric\(\) works only inside a running task"):
        ds.log_metric("x", 1.0)


def test_env_task_using_what_an_env_lacks(cluster: Any, graph_store: ds.Store,
                                          tmp_path: Path) -> None:
    @ds.task(version="1")
    def wants_store(cfg: Any, case: str) -> int:
        return len(str(ds.Store))

    node = wants_store(Cfg(log=str(tmp_path / "log")), "c0")
    results = ds.compute(node, store=graph_store, cluster=cluster, progress=False)
    assert results.state(node) == "failed"
    assert "ds.Store is not available inside an env" in results.errors[node.key]
