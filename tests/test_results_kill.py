"""A task killed while writing its Zarr result leaves no visible store; the retry's
store is complete (real LocalCluster, kill -9 of the worker mid-write)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from graphfixtures import lines
from helpers import wait_for

import dscheduler as ds

pytestmark = pytest.mark.slow


@ds.task(version="1", env=None)
def slow_writer(log: str, n: int) -> None:
    """Writes a Zarr group through ds.output() one region at a time; the first
    execution announces itself and then writes slowly, waiting to be killed."""
    import os
    import time

    import xarray as xr

    with open(log, "a") as f:
        f.write(f"start {os.getpid()}\n")
    with open(log) as f:
        first = sum(1 for line in f if line.startswith("start")) == 1
    out = ds.output()
    template = xr.Dataset({"v": ("x", np.zeros(n))})
    template.to_zarr(out, compute=False, zarr_format=3, encoding={"v": {"chunks": (10,)}})
    for i in range(0, n, 10):
        region = xr.Dataset({"v": ("x", np.arange(i, i + 10, dtype="float64"))})
        region.to_zarr(out, region={"x": slice(i, i + 10)})
        if first and i == 20:
            with open(log, "a") as f:
                f.write("writing\n")
            time.sleep(60)


def test_killed_while_writing_leaves_nothing_visible_and_retry_completes(
        cluster: Any, graph_store: ds.Store, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    node = slow_writer(log, 100)
    paths = node.paths(graph_store)
    handle = ds.submit(node, store=graph_store, cluster=cluster)
    wait_for(lambda: "writing" in lines(log), what="the write to start")
    pid = int(lines(log)[0].split()[1])
    partial = [p.name for p in paths.dir.iterdir() if p.name.startswith(".slow_writer.zarr.")]
    assert partial and not paths.zarr.exists()  # written so far: only a hidden sibling
    os.kill(pid, signal.SIGKILL)
    try:
        results = handle.wait(timeout=120, progress=False)
        assert results.state(node) == "succeeded", results.errors
        assert sum(1 for line in lines(log) if line.startswith("start")) == 2
        value = results.value(node).load()
        assert value["v"].values.tolist() == list(map(float, range(100)))
        record = results.record(node)
        assert record is not None
        first, second = record["attempts"]
        assert first["state"] == "failed" and "interrupted" in first["error"]
        assert second["state"] == "succeeded"
        leftovers = [p.name for p in paths.dir.iterdir() if p.name.startswith(".")]
        assert leftovers == [".slow_writer.done"]
    finally:
        cluster.wait_for_workers(2, timeout=60)
