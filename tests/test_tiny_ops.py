"""A tiny task's store work (docs/design.md §14.2): the file operations of a fresh node, a
killed attempt's partial value in a directory it made, and the segment files a worker keeps
open across stores."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import dask
import pytest
from helpers import run_inline

import dscheduler as ds
from dscheduler.store import atomic, values
from dscheduler.store.catalogue.verify import verify
from dscheduler.store.index import segments
from dscheduler.store.records import read_node


@ds.task(version="1", name="tinyops")
def tinyops(x: int) -> dict[str, int]:
    return {"x": x + 1}


#: Runs fresh nodes through the worker's code path (node_task), after warm-up nodes,
#: under strace; the markers in the output split the warm-up from the measured part.
CHILD = textwrap.dedent("""
    import os, pickle, sys
    import cloudpickle, dask
    import dscheduler as ds
    from dscheduler.run.execute import node_task
    from dscheduler.run.nodespec import make_specs

    def inc(x):
        return x + 1

    task = ds.task(version="1", name="inc")(inc)
    store = ds.Store(sys.argv[1])
    n = int(sys.argv[2])
    # a loaded machine may take longer than 0.2 s for a task: no deferred "running" write
    with dask.config.set({"dscheduler.task.running_record_after": 600}):
        for label, first in (("warm", -100), ("measured", 0)):
            p = ds.plan([task(first + i) for i in range(n)], store=store)
            specs = make_specs(p, "s" + label)
            store.ensure()
            blobs = [cloudpickle.dumps(specs[node.key]) for node in p.to_run]
            os.access("/MARK-" + label, os.F_OK)
            for blob in blobs:
                node_task(pickle.loads(blob), None)
            os.access("/MARK-end-" + label, os.F_OK)
""")


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
def test_fresh_tiny_node_costs_four_file_operations(tmp_path: Path) -> None:
    """The node's directory (which holds it: no lease file, docs/design.md §7), its record
    with its small value inside (create, rename) and its .done link: nothing else touches
    the store."""
    store, out, n = tmp_path / "store", tmp_path / "trace", 20
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run(["strace", "-f", "-e", "trace=%file", "-o", str(out), sys.executable,
                           str(script), str(store), str(n)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = out.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "/MARK-measured" in line)
    end = next(i for i, line in enumerate(lines) if "/MARK-end-measured" in line)
    ops = [line for line in lines[start + 1:end] if str(store) in line
           and "resumed>" not in line]
    # and once per second per process: the stat of the submission's cancel file
    assert len(ops) <= 4 * n + 2, "\n".join(ops[:40])
    assert not [op for op in ops if ".lease" in op], "\n".join(ops[:40])
    records = list(store.glob("tasks/inc/*/inc.json"))
    assert len(records) == 2 * n and not list(store.glob("tasks/inc/*/.inc*partial"))
    assert not list(store.glob("tasks/inc/*/inc.value.json"))


def test_partial_value_of_killed_attempt_is_replaced(tmp_path: Path) -> None:
    """An attempt that made the node's directory and died mid-value (no lease, no record)
    leaves a torn value file: once its claim is old, the next attempt writes over it, the
    value reads back whole and the record lists the attempt that died."""
    store = ds.Store(tmp_path / "store")
    node = tinyops(1)
    paths = node.paths(store)
    atomic.make_dirs(paths.dir)
    paths.value.write_bytes(b'{"x": ')  # torn, as a kill mid-write leaves it
    made = time.time() - 60  # the default lease ttl is 30 s: its claim went stale at 7.5 s
    os.utime(paths.dir, (made, made))
    assert run_inline([node], store) == {node.name: "succeeded"}
    record = read_node(paths.record)
    assert record is not None and [a.state for a in record.attempts] == ["failed", "succeeded"]
    assert "left neither lease nor record" in str(record.attempts[0].error)
    assert ds.compute(node, store=store, progress=False).value(node) == {"x": 2}
    assert not paths.value.exists()  # kept in the record; the torn file is gone
    assert ds.plan(node, store=store).nothing_to_do


def test_young_directory_without_record_is_waited_for(tmp_path: Path) -> None:
    """A directory with neither lease nor record is another attempt's claim (§7): the
    next attempt waits until the claim is a quarter ttl old before it runs the node."""
    store = ds.Store(tmp_path / "store")
    node = tinyops(2)
    paths = node.paths(store)
    atomic.make_dirs(paths.dir)
    made = os.stat(paths.dir).st_mtime
    with dask.config.set({"dscheduler.task.lease_ttl": 8}):  # claims hold 2 s
        assert run_inline([node], store) == {node.name: "succeeded"}
    record = read_node(paths.record)
    assert record is not None and record.attempts[0].error is not None
    started = dt.datetime.fromisoformat(str(record.attempts[-1].start)).timestamp()
    assert started >= made + 2, (started - made)


@ds.task(version="1", name="sized")
def sized(n: int) -> str:
    return "v" * n


def test_small_values_live_in_the_record_large_ones_in_a_file(tmp_path: Path) -> None:
    """A JSON value of at most INLINE_BYTES is kept in its record (a fresh node's
    directory holds its record and link only); a longer one in ``{task}.value.json``,
    written in place; a rerun that changes the kind removes the other's file."""
    store = ds.Store(tmp_path / "store")
    small, large = sized(values.INLINE_BYTES - 2), sized(values.INLINE_BYTES)  # JSON quotes
    assert set(run_inline([small, large], store).values()) == {"succeeded"}
    assert sorted(os.listdir(small.paths(store).dir)) == [".sized.done", "sized.json"]
    assert sorted(os.listdir(large.paths(store).dir)) == [
        ".sized.done", "sized.json", "sized.value.json"]
    results = ds.compute([small, large], store=store, progress=False)
    assert results.value(small) == "v" * (values.INLINE_BYTES - 2)
    assert results.value(large) == "v" * values.INLINE_BYTES
    assert ds.plan([small, large], store=store).nothing_to_do
    assert verify(store).problems == []
    # the large node's path, run again with a small value: its old file goes
    record = json.loads(large.paths(store).record.read_text())
    assert record["output"] == {"kind": "json", "path": "sized.value.json"}
    with values_limit(values.INLINE_BYTES + 10):
        assert run_inline([large], store, force=True) == {large.name: "succeeded"}
    assert not large.paths(store).value.exists()
    assert ds.compute(large, store=store, progress=False).value(large) == "v" * values.INLINE_BYTES


@contextlib.contextmanager
def values_limit(limit: int) -> Iterator[None]:
    old, values.INLINE_BYTES = values.INLINE_BYTES, limit
    try:
        yield
    finally:
        values.INLINE_BYTES = old


def test_segment_writers_per_process_are_bounded(tmp_path: Path) -> None:
    """A worker serving computes into one fresh store after another keeps at most
    KEEP_WRITERS segment files open, not one per store for ever."""
    for i in range(segments.KEEP_WRITERS + 4):
        store = ds.Store(tmp_path / f"s{i}")
        run_inline([tinyops(i)], store)
    open_segments = [fd for fd in os.listdir("/proc/self/fd")
                     if "/index/segments/" in _target(fd) and str(tmp_path) in _target(fd)]
    assert len(open_segments) <= segments.KEEP_WRITERS


def _target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""
