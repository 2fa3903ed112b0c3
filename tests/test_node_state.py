"""One owner of node state: typed states and reasons, and planning that writes nothing.

``dscheduler.store.state`` decides a node's state and why it runs for plan,
status and drift alike; a reason is a :class:`Reason` with its detail, read
as text by people and by ``kind`` by code (a rerun is decided from it).
``ds.plan`` only reads the store: the index entries it finds missing and the
compaction it finds due are left to ``ds.compute`` (docs/design.md §14.1).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dask.config
import pytest
from helpers import run_inline

import dscheduler as ds
from dscheduler.run.nodespec import make_specs
from dscheduler.store.index import Index
from dscheduler.store.record import State
from dscheduler.store.state import Reason, Why, judge

pytestmark = pytest.mark.fast


@ds.task(version="1")
def double(i: int) -> int:
    return 2 * i


@ds.task(version="1")
def add(a: int, b: int) -> int:
    return a + b


def listing(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root``: (inode, size, mtime in ns); links not followed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (
                st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def unindexed(store: ds.Store, nodes: list[ds.Node]) -> None:
    """Run ``nodes`` while their index entries are lost (a driver killed after the links)."""
    real = Index.append
    Index.append = lambda self, entries, durable=False: None  # type: ignore[method-assign]
    try:
        run_inline(nodes, store)
    finally:
        Index.append = real  # type: ignore[method-assign]


def test_plan_writes_nothing_under_the_store(tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "store")
    indexed = [double(i) for i in range(3)]
    run_inline(indexed, store)
    lost = [double(i) for i in range(3, 6)]
    unindexed(store, lost)
    nodes = [*indexed, *lost, add(indexed[0], lost[0]), double(99)]
    store.index.load()  # the snapshot exists: a plan only reads it
    before = listing(store.root)
    with dask.config.set({"dscheduler.index.compact_bytes": 0}):  # compaction is due
        p = ds.plan(nodes, store=store)
    assert listing(store.root) == before  # nothing made, removed, written or touched
    assert {n.name for n in p.to_run} == {nodes[6].name, nodes[7].name}
    assert p.compact_index
    assert [paths for paths, _, _ in p.unindexed] == [n.paths(store) for n in lost]


def test_compute_restores_what_the_plan_found_missing(tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "store")
    nodes = [double(i) for i in range(3)]
    unindexed(store, nodes)
    view = store.index.load()
    assert not any(view.finished(store.node_id(n.paths(store)), n.key) for n in nodes)
    handle = ds.compute(nodes, store=store)  # nothing to run: no cluster
    assert handle.plan.nothing_to_do
    view = store.index.load()
    assert all(view.finished(store.node_id(n.paths(store)), n.key) for n in nodes)
    assert ds.plan(nodes, store=store).unindexed == []  # the index alone says finished


def test_reasons_are_typed_and_read_as_before(tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "store")
    a = double(1)
    b = add(a, 1)
    p = ds.plan(b, store=store)
    why = p.reason(b)
    assert isinstance(why, Why) and why.kind is Reason.UPSTREAM and why.detail == a.name
    assert why == f"upstream will run ({a.name})"  # the text people read, unchanged
    assert json.loads(json.dumps({"why": why})) == {"why": str(why)}
    assert p.reason(a) == "no record" and p.reason(a).kind is Reason.NO_RECORD
    forced = ds.plan(b, store=store, force=True)
    assert all(forced.reason(n).forces_rerun for n in (a, b))
    assert not why.forces_rerun
    assert [s.rerun for s in make_specs(forced, "x").values()] == [True, True]
    assert [s.rerun for s in make_specs(p, "x").values()] == [False, False]


def test_a_rerun_is_decided_by_kind_not_by_text(tmp_path: Path) -> None:
    # A reason whose text reads "forced" but whose kind is not FORCED does not force.
    store = ds.Store(tmp_path / "store")
    a = double(2)
    p = ds.plan(a, store=store)
    p.reasons[a.key] = Why(Reason.UPSTREAM, "forced")
    assert make_specs(p, "x")[a.key].rerun is False
    p.reasons[a.key] = Why(Reason.DRIFT)
    assert make_specs(p, "x")[a.key].rerun is True


def test_judge_and_states(tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "store")
    node = double(7)
    paths = node.paths(store)
    assert judge(store, paths, node.key).why == Reason.NO_RECORD
    run_inline([node], store)
    judged = judge(store, paths, node.key)
    assert judged.why is None and judged.record is not None
    assert judged.record.state is State.SUCCEEDED or judged.record.state == State.SUCCEEDED
    paths.done.unlink()
    assert judge(store, paths, node.key).why.kind is Reason.UNLINKED  # type: ignore[union-attr]
    assert State("succeeded") is State.SUCCEEDED and f"{State.FAILED}" == "failed"
