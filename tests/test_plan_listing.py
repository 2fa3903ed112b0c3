"""Planning nodes without a stored result: directory listings, not an open per node.

``ds.plan`` reads a node's record only to say why it runs.  A new graph's
nodes have no records; once more than a few nodes under one directory (a
run, ``tasks/{task}``) were asked about, the plan lists that directory once
and skips the nodes whose directories are not there (graph/plan.py
``_Listings``).  On a parallel filesystem each open is a round trip.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import pytest
from helpers import run_inline

import dscheduler as ds
from dscheduler.store.state import Reason

pytestmark = pytest.mark.fast
plan_module = importlib.import_module("dscheduler.graph.plan")  # ds.graph.plan is the function
#: Where planning reads records: the store's one judge of node state.
state_module = importlib.import_module("dscheduler.store.state")


class Run(ds.RunConfig):
    ENV_FIELDS: ClassVar = ("ck",)
    ck: str = "a"
    label: str = ""


def length(cfg: Run, case: str, fail: bool = False) -> int:
    if fail:
        raise ValueError("told to fail")
    return len(case)


v1 = ds.task(version="1", name="length", env=None)(length)
v2 = ds.task(version="2", name="length", env=None)(length)


@ds.task(version="1")
def square(i: int) -> int:
    return i * i


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths of the records the plan reads."""
    seen: list[str] = []
    real = state_module.read_node

    def spy(path: Any, **kw: Any) -> Any:
        seen.append(str(path))
        return real(path, **kw)

    monkeypatch.setattr(state_module, "read_node", spy)
    return seen


def test_new_cases_of_a_run_are_decided_by_one_listing(tmp_path: Any, reads: list[str]
                                                       ) -> None:
    store = ds.Store(tmp_path / "data")
    cfg = Run()
    old = [f"c{i:02d}" for i in range(10)]
    new = [f"n{i:02d}" for i in range(10)]
    run_inline([v1(cfg, c) for c in old], store)
    run_inline([v1(cfg, "f00", fail=True)], store)
    reads.clear()

    nodes = [v2(cfg, c) for c in old] + [v1(cfg, "f00", fail=True)] + [v2(cfg, c) for c in new]
    p = ds.plan(nodes, store=store)
    assert [p.reason(n) for n in nodes] == ([Reason.CHANGED] * 10 + [Reason.FAILED]
                                            + [Reason.NO_RECORD] * 10)
    # Every stored case is read (to say "changed" or "failed"); of the new ones only
    # those asked about before the run's directory was listed.
    assert len(reads) <= 11 + 4, reads
    assert not any(f"/{c}/" in r for c in new[4:] for r in reads), reads


def test_new_nodes_not_bound_to_a_run(tmp_path: Any, reads: list[str]) -> None:
    store = ds.Store(tmp_path / "data")
    run_inline([square(i) for i in range(3)], store)
    reads.clear()
    nodes = [square(i) for i in range(3, 40)]
    p = ds.plan(nodes, store=store)
    assert all(p.reason(n) == Reason.NO_RECORD for n in nodes)
    assert len(reads) <= 4, reads


def test_a_few_new_nodes_beside_many_stored_are_opened_not_listed(
        tmp_path: Any, reads: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    store = ds.Store(tmp_path / "data")
    run_inline([square(i) for i in range(30)], store)
    listed: list[str] = []
    real = plan_module.os.listdir
    monkeypatch.setattr(plan_module.os, "listdir", lambda p: listed.append(p) or real(p))
    reads.clear()
    nodes = [square(i) for i in range(30, 33)]
    p = ds.plan(nodes, store=store)
    assert all(p.reason(n) == Reason.NO_RECORD for n in nodes)
    assert len(reads) == 3
    assert not [d for d in listed if "/tasks/" in str(d)], listed  # the index lists its own
