"""The index's summaries file in columns: round trips, compaction by blocks, an index of
the old format, and a damaged summaries file.

Blocks are made small (``columns.ROWS``) so that a few dozen nodes make several;
nodes run through the worker's own code path as in tests/test_index.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from helpers import BoundCfg, bound_v1, bound_v2, run_inline
from typer.testing import CliRunner

import dscheduler as ds
from dscheduler.cli import app
from dscheduler.errors import StoreError
from dscheduler.store.catalogue import runs as runs_mod
from dscheduler.store.index import columns
from dscheduler.store.index.snapshot import load

pytestmark = pytest.mark.fast


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(columns, "ROWS", 4)
    return 4


def summary(i: int, **extra: Any) -> dict[str, Any]:
    return {"key": f"k{i}", "state": "succeeded", "seconds": i / 2, "upstream": [f"k{i - 1}"],
            "params": {"lr": i / 10, "model": "linear" if i % 2 else None},
            "metrics": {"rmse": i} if i % 3 else {}, "tags": {}, **extra}


def is_run(path: str) -> bool:
    return path.endswith("run.json")


def read(path: Path) -> list[columns.Block]:
    with open(path, "rb") as f:
        return list(columns.blocks(f))


def test_columns_round_trip(tmp_path: Path, small_blocks: int) -> None:
    rows = {f"runs/e/c{i:02}/x/.t.done": summary(i) for i in range(10)}
    rows.update({f"runs/e/c{i:02}/run.json": summary(i, state="pending") for i in range(3)})
    with open(tmp_path / "s", "wb") as out:
        columns.write(None, out, rows, is_run)
    blocks = read(tmp_path / "s")
    # Blocks of at most ROWS rows, sorted by path; runs' rows in blocks of their own.
    assert [b.rows for b in blocks] == [4, 4, 2, 3]
    assert [all(map(is_run, b.paths)) for b in blocks] == [False, False, False, True]
    assert all(b.paths == sorted(b.paths) for b in blocks)
    table = columns.Table([(b, None) for b in blocks], [])
    back = dict(zip(table.paths(), table.summaries(), strict=True))
    # Every field comes back; a group's null and a missing name are one.
    assert back.keys() == rows.keys()
    for path, s in rows.items():
        s = dict(s, params={k: v for k, v in s["params"].items() if v is not None})
        assert back[path] == s, path
    assert table.column("metrics.rmse")[:4] == [None, 1, 2, None]
    assert table.column("no.such") == [None] * 13
    # Rows a reader leaves out, and rows laid over the file.
    first = blocks[0]
    table = columns.Table([(first, [1, 3])], [("new", {"key": "kn", "params": {"x": 1}})])
    assert table.paths() == [first.paths[1], first.paths[3], "new"]
    assert table.column("key") == ["k1", "k3", "kn"]
    assert table.column("params.x") == [None, None, 1]
    assert "params.x" in table.names() and table.groups() == ["params", "metrics", "tags"]


def listed(blocks: list[columns.Block]) -> dict[str, Any]:
    """Key by path of what a listing reads of these blocks."""
    table = columns.Table([(b, b.live()) for b in blocks], [])
    return dict(zip(table.paths(), table.column("key"), strict=True))


def test_compaction_copies_blocks_and_parses_only_those_half_dropped(
    tmp_path: Path, small_blocks: int,
) -> None:
    rows = {f"n/{i:02}": summary(i) for i in range(12)}
    with open(tmp_path / "old", "wb") as out:
        columns.write(None, out, rows, is_run)
    # Spaces after commas: valid, but not what writing the rows again would give.
    (tmp_path / "old").write_bytes((tmp_path / "old").read_bytes().replace(b'","', b'", "'))
    old = read(tmp_path / "old")
    changed = {"n/05": summary(50), "n/06": {}, "n/99": summary(99), "n/98": {}}
    with open(tmp_path / "old", "rb") as f, open(tmp_path / "new", "wb") as out:
        columns.write(f, out, changed, is_run)
    new = read(tmp_path / "new")
    # Blocks without a changed path, byte for byte; the middle one with the rows of
    # n/05 and n/06 dropped in its header, its lines as they were.
    assert [new[0].text(), new[2].text()] == [old[0].text(), old[2].text()]
    assert new[1].dropped == [1, 2] and new[1].raw[1:] == old[1].raw[1:]
    assert new[3].paths == ["n/05", "n/99"]
    want = {p: s["key"] for p, s in rows.items() if p != "n/06"}
    want.update({"n/05": "k50", "n/99": "k99"})
    assert listed(new) == want
    # A block less than half alive is parsed, its live rows written in a new block.
    with open(tmp_path / "new", "rb") as f, open(tmp_path / "third", "wb") as out:
        columns.write(f, out, {"n/04": {}}, is_run)
    third = read(tmp_path / "third")
    assert [(b.rows, b.dropped) for b in third] == [(4, []), (4, []), (2, []), (1, [])]
    assert third[3].paths == ["n/07"]
    del want["n/04"]
    assert listed(third) == want


def test_a_name_only_dropped_rows_have_is_no_column(tmp_path: Path, small_blocks: int) -> None:
    def node(i: int, params: dict[str, Any]) -> dict[str, Any]:
        return {"key": f"k{i}", "task": "t", "run_id": f"e/{i}", "params": params}

    with open(tmp_path / "old", "wb") as out:
        columns.write(None, out, {"a": node(1, {"old": 1}),
                                  **{p: node(2, {"x": 2}) for p in "bcd"}}, is_run)
    with open(tmp_path / "old", "rb") as f, open(tmp_path / "new", "wb") as out:
        columns.write(f, out, {"a": node(1, {"x": 3})}, is_run)
    blocks = read(tmp_path / "new")
    assert blocks[0].dropped == [0] and "params.old" in blocks[0].lines
    summaries = runs_mod.Summaries(columns.Table([(b, b.live()) for b in blocks], []))
    frame = runs_mod.runs_frame(summaries, by="node")
    assert "params.old" not in frame and sorted(frame["params.x"]) == [2, 2, 2, 3]


def test_listing_and_compaction_in_blocks(
    store: ds.Store, log: str, small_blocks: int,
) -> None:
    cfgs = [BoundCfg(x=i, label=f"run{i}") for i in range(14)]
    for cfg in cfgs:
        store.write_run(cfg)
    run_inline([bound_v1(cfg, "c", log) for cfg in cfgs[:9]], store)
    assert store.index.compact()
    summaries = store.index_summaries(load(store).generation)
    before = read(summaries)
    assert len(before) >= 4  # nodes' blocks and runs' blocks

    def walked() -> Any:
        return runs_mod.runs_frame(runs_mod.node_summary(r, p, store.root)
                                   for p, r in runs_mod.iter_node_records(store))

    assert store.runs().equals(walked())
    assert len(store.runs(by="node")) == 9
    # A rerun changes one node: the next compaction copies every block without it.
    run_inline([bound_v2(cfgs[3], "c", log)], store)
    assert store.runs().equals(walked())  # the segment's summary over the file's
    assert store.index.compact()
    after = read(store.index_summaries(load(store).generation))
    changed = store.node_id(bound_v2(cfgs[3], "c", log).paths(store))
    kept = [b.text() for b in before if b.rows == 4 and changed not in b.paths]
    assert kept and set(kept) <= {b.text() for b in after}
    assert store.runs().equals(walked())
    frame = store.runs(by="node").set_index("label")
    assert frame.loc["run3", "version"] == "2" and len(frame) == 9
    assert list(store.runs(run_id=cfgs[12].run_id)["state"]) == ["pending"]


def old_format(store: ds.Store) -> None:
    """Turn the store's index into one that dscheduler wrote before summaries were
    kept in columns (format 1: one line ``path<TAB>summary`` each)."""
    view = load(store)
    table = store.index.table(view)
    assert table is not None
    lines = [f"{p}\t{json.dumps(s)}\n" for p, s in
             zip(table.paths(), table.summaries(), strict=True)]
    store.index_summaries(view.generation).write_text("".join(lines))
    header, _, body = store.index_snapshot.read_bytes().partition(b"\n")
    store.index_snapshot.write_bytes(
        json.dumps(dict(json.loads(header), format=1)).encode() + b"\n" + body)


def test_an_index_of_the_old_format_is_rebuilt(
    store: ds.Store, log: str, caplog: pytest.LogCaptureFixture,
) -> None:
    cfgs = [BoundCfg(x=i, label=f"run{i}") for i in range(3)]
    nodes = [bound_v1(cfg, "c", log) for cfg in cfgs[:2]]
    for cfg in cfgs:
        store.write_run(cfg)
    run_inline(nodes, store)
    assert store.index.compact()
    listed = store.runs()
    old_format(store)
    with caplog.at_level(logging.WARNING, "dscheduler.index"):
        assert store.runs().equals(listed)  # read again from the records
    assert "an index of format 1" in caplog.text
    assert json.loads(store.index_snapshot.read_bytes().split(b"\n", 1)[0])["format"] == 2
    old_format(store)
    assert ds.plan(nodes, store=store).nothing_to_do  # planning rebuilds it too
    assert store.runs().equals(listed)


def test_a_damaged_summaries_file(store: ds.Store, log: str) -> None:
    cfgs = [BoundCfg(x=i, label=f"run{i}") for i in range(3)]
    run_inline([bound_v1(cfg, "c", log) for cfg in cfgs], store)
    assert store.index.compact()
    listed = store.runs()
    path = store.index_summaries(load(store).generation)
    text = path.read_bytes()
    path.write_bytes(text[: len(text) // 2])  # cut short: the index is rebuilt
    assert store.runs().equals(listed)
    # Damaged inside a column, which is parsed only when a listing asks for it.
    path = store.index_summaries(load(store).generation)
    text = path.read_bytes()
    path.write_bytes(text.replace(b'"run1"', b'"run1'))
    with pytest.raises(StoreError, match="index rebuild"):
        store.runs()
    out = CliRunner().invoke(app, ["index", "rebuild", "--store", str(store.root)])
    assert out.exit_code == 0, out.output
    assert store.runs().equals(listed)
