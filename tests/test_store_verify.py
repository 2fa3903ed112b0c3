"""A store that can be checked: damaged records and values, ``dscheduler verify [--repair]``.

Nodes are run in this process through the worker's own code path
(``run_node``), without a cluster: real records, values and links.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

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


@ds.task(version="1")
def value(x: int) -> dict[str, Any]:
    return {"x": x, "pad": "." * 2000}  # too long to be kept in the record: a file


@ds.task(version="1")
def array(n: int) -> Any:
    return np.arange(n)


@ds.task(version="1")
def plus(v: dict[str, int]) -> int:
    return v["x"] + 1


def run_inline(nodes: list[ds.Node], store: ds.Store) -> ds.Plan:
    """Run what the plan says, in graph order, in this process; the plan."""
    p = ds.plan(nodes, store=store)
    specs = make_specs(p, "inline")
    store.ensure()
    for node in p.to_run:
        run_node(specs[node.key])
    return p


@pytest.fixture
def finished(tmp_path: Path) -> tuple[ds.Store, list[ds.Node]]:
    store = ds.Store(tmp_path / "data")
    nodes = [value(1), value(2), array(5)]
    nodes.append(plus(nodes[0]))
    run_inline(nodes, store)
    assert ds.plan(nodes, store=store).nothing_to_do
    return store, nodes


def test_a_healthy_store_verifies(finished: tuple[ds.Store, list[ds.Node]]) -> None:
    store, nodes = finished
    report = verify(store)
    assert report.checked == len(nodes) and report.problems == []
    out = CliRunner().invoke(app, ["verify", "--store", str(store.root)])
    assert out.exit_code == 0, out.output
    assert "checked 4 finished node(s)" in out.output and "0 problem(s)" in out.output


def test_truncated_record_is_a_store_error_that_names_the_file(
    finished: tuple[ds.Store, list[ds.Node]],
) -> None:
    store, nodes = finished
    record = nodes[0].paths(store).record
    record.write_bytes(record.read_bytes()[:40])  # a half-finished copy
    with pytest.raises(ds.StoreError) as info:
        read_record(record)
    message = str(info.value)
    assert str(record) in message and "dscheduler verify --repair" in message
    # Downstream of it, a worker gets the same clear error, not a JSONDecodeError.
    p = ds.plan(plus(nodes[0]), store=store, force=True)
    spec = make_specs(p, "inline")[p.to_run[-1].key]
    with pytest.raises(ds.TaskError, match="is damaged"):
        run_node(spec)


def test_verify_finds_and_repair_demotes(finished: tuple[ds.Store, list[ds.Node]]) -> None:
    store, nodes = finished
    paths = [n.paths(store) for n in nodes]
    paths[0].record.write_bytes(b'{"key": "tru')  # truncated record
    paths[1].value.unlink()  # value missing
    (paths[2].zarr / "zarr.json").write_text("{not json")  # zarr metadata damaged
    paths[3].done.unlink()  # link missing; record and value fine
    good_record = paths[3].record.read_bytes()  # its small value is inside

    report = verify(store)
    whys = {p.path: p.why for p in report.problems}
    assert len(report.problems) == 4 and report.checked == 4
    assert "record is unreadable" in whys[paths[0].record]
    assert "value.json is missing" in whys[paths[1].record]
    assert "Zarr store is unreadable" in whys[paths[2].record]
    assert "link is missing" in whys[paths[3].record]
    out = CliRunner().invoke(app, ["verify", "--store", str(store.root)])
    assert out.exit_code == 1 and "4 problem(s)" in out.output

    repaired = verify(store, repair=True)
    assert all(p.action for p in repaired.problems)
    assert verify(store).problems == []
    # Nothing good was deleted: the damaged record was moved aside, the good
    # node kept its value and got its link back.
    assert list(paths[0].dir.glob(f"{paths[0].record.name}.damaged-*"))
    assert paths[3].record.read_bytes() == good_record and os.readlink(paths[3].done)
    # The next plan redoes exactly the demoted nodes (and what depends on them).
    p = ds.plan(nodes, store=store)
    assert p.reason(nodes[1]) == p.reason(nodes[2]) == Reason.DAMAGED
    assert p.reason(nodes[0]) == "no record" and p.reason(nodes[3]) is not None
    run_inline(nodes, store)
    assert ds.plan(nodes, store=store).nothing_to_do
    assert verify(store).problems == []


def test_verify_one_run_and_bad_run(tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "data").ensure()
    with pytest.raises(ds.StoreError, match="no run"):
        verify(store, run_id="0123456789abcdef/0123456789abcdef")
    out = CliRunner().invoke(app, ["verify", "--store", str(tmp_path / "nowhere")])
    assert out.exit_code == 2 and "no store at" in out.output


def test_link_to_a_missing_record_is_reported(finished: tuple[ds.Store, list[ds.Node]]) -> None:
    store, nodes = finished
    paths = nodes[1].paths(store)
    shutil.copy(paths.record, paths.record.with_suffix(".bak"))
    paths.record.unlink()
    [problem] = verify(store).problems
    assert "no record" in problem.why
    verify(store, repair=True)
    assert not os.path.lexists(paths.done)
    assert json.loads(paths.record.with_suffix(".bak").read_text())["state"] == "succeeded"


def test_zarr_2_values_written_in_old_envs_verify(tmp_path: Path) -> None:
    """A Zarr 2 store (``.zgroup``/``.zarray``) is a readable value, not an incomplete one."""
    import zarr

    store = ds.Store(tmp_path / "data")
    node = array(3)
    run_inline([node], store)
    paths = node.paths(store)
    shutil.rmtree(paths.zarr)
    group = zarr.open_group(str(paths.zarr), mode="w", zarr_format=2)
    group.create_array("v", shape=(3,), dtype="f8")
    # As ds.output() records it (a returned array is always zarr v3: a v2 store in its
    # place is damage, tests/test_value_integrity.py).
    record = read_record(paths.record) or {}
    record["output"] = {"kind": "zarr", "type": "zarr.group", "path": paths.zarr.name}
    paths.record.write_text(json.dumps(record))
    assert verify(store).problems == []
    (paths.zarr / "v" / ".zarray").unlink()
    [problem] = verify(store).problems
    assert "incomplete" in problem.why
