"""``summarize`` and ``dscheduler status`` on a store written by hand: nodes by state per
task and per run label, running against interrupted, envs, failures with their log tail."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from graphfixtures import Cfg
from helpers import write_node_record
from typer.testing import CliRunner

import dscheduler as ds
from dscheduler.cli import app
from dscheduler.store import atomic
from dscheduler.store.catalogue.status import summarize, walk_summary

pytestmark = pytest.mark.fast


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ds.Store]:
    store = ds.Store(tmp_path / "data").ensure()
    alpha, beta = Cfg(flavor="a", x=1, label="alpha"), Cfg(flavor="b", x=2, label="beta")
    store.write_run(alpha)
    store.write_run(beta)
    ra, rb = store.run(alpha.run_id), store.run(beta.run_id)
    write_node_record(ra.node("c0", "work"), "succeeded", 1)
    write_node_record(ra.node("c1", "work"), "failed", 2, when=1_000_000, error="ValueError: older",
         log_tail="older log")
    write_node_record(ra.node("c2", "work"), "failed", 3, when=2_000_000, error="ValueError: newer",
         log_tail="\n".join(f"line {i}" for i in range(40)), log="/x/logs/work.log")
    key = write_node_record(rb.node("c0", "work"), "running", 4)
    held = [store.lease(f"node-{key[:16]}").acquire()]  # a live holder: running
    write_node_record(rb.node("c1", "work"), "running", 5)  # nobody holds its lease: interrupted
    write_node_record(rb.node(None, "check"), "cancelled", 6)
    total = store.task("total", "7" * 16)
    write_node_record(total, "succeeded", 7)
    # A Zarr output holds JSON files too: the walk never looks inside.
    (total.zarr / "c").mkdir(parents=True)
    (total.zarr / "c" / "fake.json").write_text(json.dumps({"state": "failed",
                                                            "attempts": [{}]}))
    boom = store.task("boom", "8" * 16)
    boom.dir.mkdir(parents=True)
    boom.record.write_text("{not json")  # damaged by hand: the index learns it from
    store.index.damaged(boom, "not JSON")  # verify --repair (docs/design.md §14.1, point 4)
    # Envs: one published, one failed build, one building without a directory yet.
    built = store.env("e" * 16)
    built.dir.mkdir()
    atomic.write_json(built.record, {"kind": "squashfs", "created": "2026-01-01T00:00:00+00:00",
                                     "sizes": {"image_bytes": 12_345_678, "venv_bytes": 9},
                                     "timings": {"total": 3.5}})
    failed = store.env("f" * 16)
    failed.dir.mkdir()
    failed.failed_log.write_text("".join(f"uv line {i}\n" for i in range(50)))
    held.append(store.lease(f"env-{'b' * 16}").acquire())
    yield store
    for lease in held:
        lease.release()


def test_summary_counts_per_task_and_label(store: ds.Store) -> None:
    s = summarize(store)
    assert s.runs == 2 and s.kind == "store" and s.cache_hits is None
    assert s.by_task() == {
        "boom": {"damaged": 1}, "check": {"cancelled": 1}, "total": {"succeeded": 1},
        "work": {"succeeded": 1, "failed": 2, "running": 1, "interrupted": 1}}
    assert s.by_label() == {"": {"succeeded": 1, "damaged": 1},
                            "alpha": {"succeeded": 1, "failed": 2},
                            "beta": {"running": 1, "interrupted": 1, "cancelled": 1}}
    assert s.columns() == ["running", "succeeded", "failed", "cancelled", "interrupted",
                           "damaged"]
    assert s.damaged == [store.task("boom", "8" * 16).record]


def test_summary_envs_and_failures(store: ds.Store) -> None:
    s = summarize(store, failures=5)
    envs = {e.env_id[:1]: e for e in s.envs}
    assert (envs["e"].state, envs["e"].kind, envs["e"].build_seconds, envs["e"].size_bytes) \
        == ("built", "squashfs", 3.5, 12_345_678)
    assert envs["f"].state == "failed"
    assert envs["f"].log_tail.splitlines() == [f"uv line {i}" for i in range(30, 50)]
    assert envs["b"].state == "building" and s.envs_built == 1
    assert [f.error for f in s.failures] == ["ValueError: newer", "ValueError: older"]
    newest = s.failures[0]
    assert (newest.task, newest.label, newest.where) == ("work", "alpha", "/x/logs/work.log")
    assert newest.log_tail.splitlines() == [f"line {i}" for i in range(40)]  # as recorded
    assert [f.error for f in summarize(store, failures=1).failures] == ["ValueError: newer"]
    data = json.loads(json.dumps(s.to_json()))
    assert data["states"] == {"running": 1, "succeeded": 2, "failed": 2, "cancelled": 1,
                              "interrupted": 1, "damaged": 1}
    assert data["nodes"] == 8 and data["runs"] == 2


def test_index_gives_what_the_walk_gives(store: ds.Store) -> None:
    """summarize reads the index; the record walk it replaced finds the same summary."""
    from_index, walked = summarize(store, failures=5).to_json(), walk_summary(store, 5).to_json()
    assert from_index["nodes"] == 8
    assert {**from_index, "updated": 0} == {**walked, "updated": 0}


def test_summary_reads_the_index_and_rebuilds_a_damaged_one(tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "data").ensure()
    # Entries alone, as workers append them: counted without a file per node.
    keys = [f"{i:016x}" + "0" * 48 for i in range(1, 51)]
    store.index.append([store.index.entry(store.task("solo", k[:16]), {
        "key": k, "seq": 1, "state": "succeeded", "task": "solo"}) for k in keys])
    assert summarize(store).by_task() == {"solo": {"succeeded": 50}}
    assert walk_summary(store).by_task() == {}
    # An unreadable index is rebuilt from the records, as `dscheduler runs` does: the
    # old entries without files are forgotten (docs/design.md §14.1, Rebuild).
    write_node_record(store.task("real", "1" * 16), "failed", 1, error="ValueError: real")
    store.index_snapshot.write_text("not an index\n")
    s = summarize(store)
    assert s.by_task() == {"real": {"failed": 1}}
    assert [f.error for f in s.failures] == ["ValueError: real"]
    assert store.index.size() == 1  # published again


def test_failure_without_log_shows_its_traceback(tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "data").ensure()
    tb = "Traceback (most recent call last):\n" + "".join(f"  frame {i}\n" for i in range(30)) \
        + "KeyError: 'x'"
    write_node_record(store.task("t", "1" * 16), "failed", 1, error="KeyError: 'x'", traceback=tb)
    [failure] = summarize(store).failures
    assert failure.log_tail.splitlines()[-1] == "KeyError: 'x'"
    assert len(failure.log_tail.splitlines()) == 20  # setting dashboard.log_lines


def test_status_command_prints_the_summary(store: ds.Store) -> None:
    out = CliRunner().invoke(app, ["status", "--store", str(store.root)])
    assert out.exit_code == 0, out.output
    text = out.output
    assert "runs: 2; envs built: 1" in text
    lines = [line.split() for line in text.splitlines()]
    assert ["task", "running", "succeeded", "failed", "cancelled", "interrupted", "damaged",
            "total"] in lines
    assert ["work", "1", "1", "2", "0", "1", "0", "5"] in lines
    assert ["beta", "1", "0", "0", "1", "1", "0", "3"] in lines
    assert ["e" * 16, "built", "squashfs", "3.5", "s", "12.3", "MB"] in lines
    assert ["f" * 16, "failed", "-", "-", "-"] in lines
    assert ["b" * 16, "building", "-", "-", "-"] in lines
    assert "ValueError: newer" in text and "| line 39" in text
    assert "1 damaged record(s)" in text


def test_status_without_a_store_is_an_error(tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["status", "--store", str(tmp_path / "none"), "--watch"])
    assert out.exit_code == 2 and "no store at" in out.output
