"""Damage ``verify`` must see, and values JSON must not lose (issue 17, items 5 and 6).

* A stored Zarr value has a file for every chunk of its grid (fill-value chunks
  too), so a deleted chunk is reported by ``dscheduler verify`` (a listing per
  array) and ``Store.open`` raises a StoreError naming it; a chunk whose bytes
  are corrupt is found by ``verify --deep``; a value swapped for a Zarr v2
  store where the record says v3 is reported.
* JSON: keys that collide as strings (``{1: 'a', '1': 'b'}``) are an error
  naming the field path; NaN and Infinity in values, params and metrics are
  stored as ``{"$float": "NaN"}`` (strict JSON) and read back as floats.

Nodes run in this process through the worker's own code path (``run_node``).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from pathlib import Path
from typing import Any

import dask.config
import numpy as np
import pytest
from typer.testing import CliRunner

import dscheduler as ds
from dscheduler.cli import app
from dscheduler.run.execute import run_node
from dscheduler.run.nodespec import make_specs
from dscheduler.store.catalogue.verify import verify
from dscheduler.store.records import read_record
from dscheduler.store.state import Reason

pytestmark = pytest.mark.fast

VAR = "__xarray_dataarray_variable__"


@ds.task(version="1")
def series(n: int) -> Any:
    values = np.arange(n, dtype="f8")
    values[: n // 4] = np.nan  # whole chunks of the fill value: zarr skips them by default
    return values


@ds.task(version="1")
def plain(case: str) -> Any:
    if case == "collide":
        return {"scores": {1: "a", "1": "b"}}
    if case == "tag":
        return {"x": {"$float": "NaN"}}
    return {"rmse": math.nan, "bounds": [-math.inf, math.inf], "n": 3, "$float": "kept"}


@ds.task(version="1")
def tracked(case: str) -> int:
    if case == "collide":
        ds.log_param("grid", {1: "a", "1": "b"})
    ds.log_param("alpha", math.inf)
    ds.log_metric("loss", 1.0, step=0)
    ds.log_metric("loss", math.nan, step=1)
    return 1


def strict(text: bytes) -> Any:
    """Parse as a strict JSON reader does: NaN and Infinity tokens refused."""
    def refuse(token: str) -> Any:
        raise ValueError(f"not strict JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def run_inline(nodes: list[ds.Node], store: ds.Store) -> None:
    p = ds.plan(nodes, store=store)
    specs = make_specs(p, "inline")
    store.ensure()
    for node in p.to_run:
        with contextlib.suppress(ds.TaskError):  # the record says why; the tests read it
            run_node(specs[node.key])


@pytest.fixture
def stored(tmp_path: Path) -> tuple[ds.Store, ds.Node]:
    """A store holding one array of 8 chunks (1 KiB each), the first two all NaN."""
    store = ds.Store(tmp_path / "data")
    node = series(1024)
    with dask.config.set({"dscheduler.results.chunk_mb": 1 / 1024}):
        run_inline([node], store)
    return store, node


def chunk(store: ds.Store, node: ds.Node, i: int) -> Path:
    return node.paths(store).zarr / VAR / "c" / str(i)


def test_every_chunk_is_written_and_a_healthy_value_verifies(
        stored: tuple[ds.Store, ds.Node]) -> None:
    store, node = stored
    assert all(chunk(store, node, i).is_file() for i in range(8))  # the NaN ones too
    report = verify(store, deep=True)
    assert report.checked == 1 and report.problems == []
    assert np.isnan(store.open(node).values[:256]).all()


def test_a_missing_chunk_is_reported_repaired_and_refused_by_open(
        stored: tuple[ds.Store, ds.Node]) -> None:
    store, node = stored
    chunk(store, node, 5).unlink()
    [problem] = verify(store).problems
    assert f"array {VAR!r}: chunk c/5 is missing" in problem.why
    out = CliRunner().invoke(app, ["verify", "--store", str(store.root)])
    assert out.exit_code == 1 and "chunk c/5 is missing" in out.output, out.output

    with pytest.raises(ds.StoreError) as info:  # not NaN where the chunk was
        store.open(node)
    message = str(info.value)
    assert "chunk c/5 is missing" in message and VAR in message
    assert "dscheduler verify --repair" in message

    out = CliRunner().invoke(app, ["verify", "--store", str(store.root), "--repair"])
    assert out.exit_code == 0 and "demoted" in out.output, out.output
    assert read_record(node.paths(store).record)["state"] == "damaged"
    assert ds.plan(node, store=store).reason(node) == Reason.DAMAGED


def test_a_corrupt_chunk_is_found_by_deep(stored: tuple[ds.Store, ds.Node]) -> None:
    store, node = stored
    path = chunk(store, node, 6)
    path.write_bytes(b"\x00" * len(path.read_bytes()))  # same size, not zstd any more
    assert verify(store).problems == []  # the default check lists, it does not read
    [problem] = verify(store, deep=True).problems
    assert f"array {VAR!r}: chunk c/6 cannot be read" in problem.why
    out = CliRunner().invoke(app, ["verify", "--store", str(store.root), "--deep"])
    assert out.exit_code == 1 and "chunk c/6 cannot be read" in out.output, out.output


def test_a_zarr_2_store_where_the_record_says_v3_is_reported(
        stored: tuple[ds.Store, ds.Node]) -> None:
    import xarray as xr

    store, node = stored
    paths = node.paths(store)
    shutil.rmtree(paths.zarr)
    xr.Dataset({VAR: ("dim_0", np.arange(4.0))}).to_zarr(str(paths.zarr), zarr_format=2)
    [problem] = verify(store).problems
    assert "is a Zarr v2 store, but its record says zarr v3" in problem.why
    out = CliRunner().invoke(app, ["verify", "--store", str(store.root)])
    assert out.exit_code == 1 and "Zarr v2 store" in out.output, out.output


def test_colliding_keys_are_an_error_naming_the_field(tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "data")
    value, param = plain("collide"), tracked("collide")
    run_inline([value, param], store)
    for node, where in ((value, "value['scores']['1']"), (param, "param 'grid'['1']")):
        record = read_record(node.paths(store).record)
        assert record["state"] == "failed"
        error = record["attempts"][-1]["error"]
        assert where in error and "both written as the JSON key '1'" in error, error
    assert not value.paths(store).value.exists()


def test_a_dict_shaped_like_the_float_tag_is_refused(tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "data")
    node = plain("tag")
    run_inline([node], store)
    record = read_record(node.paths(store).record)
    error = record["attempts"][-1]["error"]
    assert record["state"] == "failed", record
    assert "value['x']: a dict whose only key is '$float'" in error, error


def test_nan_and_infinity_are_stored_as_strict_json_and_read_back(tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "data")
    value, metrics = plain("ok"), tracked("ok")
    run_inline([value, metrics], store)

    paths = value.paths(store)  # a small value: kept in the record, as strict JSON text
    inline = strict(paths.record.read_bytes())["output"]["inline"]
    assert strict(inline.encode())["rmse"] == {"$float": "NaN"}
    got = store.open(value)
    assert math.isnan(got["rmse"]) and got["bounds"] == [-math.inf, math.inf]
    assert got["n"] == 3 and got["$float"] == "kept"

    paths = metrics.paths(store)
    on_disk = strict(paths.record.read_bytes())
    assert on_disk["metrics"]["loss"] == {"$float": "NaN"}
    assert on_disk["params"]["alpha"] == {"$float": "Infinity"}
    record = read_record(paths.record)
    assert record["state"] == "succeeded" and math.isnan(record["metrics"]["loss"])
    assert record["params"]["alpha"] == math.inf
    assert record["metric_history"]["loss"][0][1] == 1.0
    assert math.isnan(record["metric_history"]["loss"][1][1])
    rows = store.runs(by="node")
    row = rows[rows["task"] == "tracked"].iloc[0]
    assert math.isnan(row["metrics.loss"])
    assert verify(store).problems == []


def test_the_index_keeps_nan_metrics_as_strict_json(tmp_path: Path) -> None:
    """Segments and the compacted summaries are strict JSON too, and list NaN back."""
    store = ds.Store(tmp_path / "data")
    run_inline([tracked("ok")], store)
    index = store.root / "index"
    segments = [p for p in (index / "segments").iterdir() if p.is_file()]
    assert segments
    for segment in segments:
        for line in segment.read_bytes().splitlines():
            strict(line)
    done = CliRunner().invoke(app, ["index", "compact", "--store", str(store.root)])
    assert done.exit_code == 0, done.output
    summaries = list(index.glob("summaries-*.json"))
    assert summaries
    for line in summaries[0].read_bytes().splitlines():
        strict(line)
    rows = store.runs(by="node")
    assert math.isnan(rows[rows["task"] == "tracked"].iloc[0]["metrics.loss"])
