"""The store index in one process: entries, torn files, rebuilds, reruns, listing.

Nodes run through the worker's own code path (``run_node``, in
helpers.run_inline) without a cluster, so records, links and index entries
are the real ones.  Tasks count their executions in a log file, as
tests/graphfixtures.py does.
Tests with many processes and kill -9 are in tests/test_index_processes.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import dask.config
import pytest
from helpers import BoundCfg, bound_v1, bound_v2, run_inline
from typer.testing import CliRunner

import dscheduler as ds
from dscheduler import settings
from dscheduler.cli import app
from dscheduler.run import execute
from dscheduler.store.index import Entry, Index
from dscheduler.store.index import segments as segments_mod
from dscheduler.store.index.entries import Merged
from dscheduler.store.index.snapshot import load
from dscheduler.store.state import Reason

pytestmark = pytest.mark.fast


@ds.task(version="1")
def step(i: int, log: str) -> dict[str, int]:
    with open(log, "a") as f:
        f.write(f"{i}\n")
    if os.path.exists(log + ".fail"):
        raise ValueError(f"step {i} told to fail")
    return {"i": i}


def runs_of(log: str, i: int) -> int:
    try:
        return Path(log).read_text().split().count(str(i))
    except FileNotFoundError:
        return 0


def truth(store: ds.Store, node: ds.Node) -> bool:
    try:
        return os.readlink(node.paths(store).done) == node.key
    except OSError:
        return False


def agrees(store: ds.Store, nodes: list[ds.Node]) -> None:
    """The index calls exactly the truly finished nodes finished."""
    view = store.index.load()
    for node in nodes:
        assert view.finished(store.node_id(node.paths(store)), node.key) == truth(store, node), \
            node.name


# -- entries ---------------------------------------------------------------------------


def test_the_highest_seq_wins_and_a_tie_never_finishes() -> None:
    merged = Merged({})
    done = Entry("a", 5, "succeeded", "k")
    merged.add(done)
    merged.add(Entry("a", 4, "running", "k"))  # older: ignored
    assert merged.values["a"] == "succeeded 5 k"
    merged.add(Entry("a", 5, "running", "k"))  # a tie: not finished wins
    assert merged.values["a"] == "running 5 k"
    merged.add(done)  # replaying an older entry changes nothing
    assert merged.values["a"] == "running 5 k"
    merged.add(Entry("a", 6, "succeeded", "k2", {"m": 1}))
    assert merged.values["a"] == "succeeded 6 k2" and merged.summaries["a"] == {"m": 1}


def test_torn_lines_and_zeros_are_skipped(store: ds.Store, log: str) -> None:
    nodes = [step(i, log) for i in range(3)]
    run_inline(nodes, store)
    index = store.index
    path = segments_mod.writer(store).path
    assert path is not None
    segments_mod.writer(store).close()
    # kill -9 mid-write leaves a line without its end; a machine crash, zeros.
    line = Entry("tasks/step/x/.step.done", 1, "succeeded", "k").line()
    with open(path, "ab") as f:
        f.write(b"\0" * 64 + b"\n" + b"[1, 2\n" + line[:20])
    view = load(store)
    assert view.skipped == 1  # the torn middle line; zeros and the unfinished tail are not
    assert "tasks/step/x/.step.done" not in view.values
    assert ds.plan(nodes, store=store).nothing_to_do
    agrees(store, nodes)
    assert index.compact() and ds.plan(nodes, store=store).nothing_to_do


# -- rebuilding ------------------------------------------------------------------------


def test_deleted_or_corrupt_index_is_rebuilt(store: ds.Store, log: str) -> None:
    nodes = [step(i, log) for i in range(4)]
    run_inline(nodes, store)
    store.write_run(BoundCfg(x=1, label="one"))
    segments_mod.writer(store).close()  # this process's writer, as another process's would be

    import shutil

    shutil.rmtree(store.index_dir)
    assert ds.plan(nodes, store=store).nothing_to_do
    assert store.index_snapshot.is_file()  # rebuilt from the records and links
    agrees(store, nodes)
    generation = load(store).generation

    store.index_snapshot.write_bytes(b'{"format": 1, "generation": 9, "segm')  # torn
    assert ds.plan(nodes, store=store).nothing_to_do
    assert load(store).generation > generation
    agrees(store, nodes)

    header, _, body = store.index_snapshot.read_bytes().partition(b"\n")
    store.index_snapshot.write_bytes(header + b"\n" + body[: len(body) // 2])  # half a file
    assert ds.plan(nodes, store=store).nothing_to_do
    agrees(store, nodes)

    summaries = store.index_summaries(load(store).generation)
    summaries.unlink()
    assert list(store.runs()["label"]) == ["one"]  # listing rebuilt it too
    out = CliRunner().invoke(app, ["index", "rebuild", "--store", str(store.root)])
    assert out.exit_code == 0 and "4 finished node(s)" in out.output, out.output
    assert all(runs_of(log, i) == 1 for i in range(4))  # nothing ran again


def test_results_removed_by_hand_need_a_rebuild(store: ds.Store, log: str) -> None:
    import shutil

    nodes = [step(i, log) for i in range(2)]
    run_inline(nodes, store)
    shutil.rmtree(nodes[0].paths(store).dir)
    # The index is a cache: it still says finished until rebuilt.  A rebuild
    # trusts only entries younger than 2 lease ttls over the files it reads.
    with dask.config.set({"dscheduler.task.lease_ttl": 0}):
        store.index.rebuild()
    assert ds.plan(nodes, store=store).reason(nodes[0]) == Reason.NO_RECORD
    agrees(store, nodes)


# -- what must never be hidden ---------------------------------------------------------


def killed_mid_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Attempts from now on die like kill -9 while the function runs: the record stays
    "running" and nothing after it is written."""
    from dscheduler.run import execute

    def die(*args: Any) -> Any:
        raise SystemExit("killed")

    monkeypatch.setattr(execute, "_call", die)
    monkeypatch.setattr(execute, "_fail", lambda *args: None)


def test_forced_rerun_that_fails_or_dies_is_not_hidden(
    store: ds.Store, log: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    nodes = [step(i, log) for i in range(3)]
    run_inline(nodes, store)
    Path(log + ".fail").touch()
    assert run_inline(nodes[:1], store, force=True) == {nodes[0].name: "failed"}
    p = ds.plan(nodes, store=store)
    assert p.reason(nodes[0]) == Reason.FAILED and p.reason(nodes[1]) is None
    agrees(store, nodes)
    Path(log + ".fail").unlink()
    with monkeypatch.context() as mp:
        killed_mid_attempt(mp)
        with pytest.raises(SystemExit):
            run_inline(nodes[1:2], store, force=True)
    assert ds.plan(nodes, store=store).reason(nodes[1]) == Reason.INTERRUPTED
    agrees(store, nodes)
    run_inline(nodes, store)
    assert ds.plan(nodes, store=store).nothing_to_do
    assert [runs_of(log, i) for i in range(3)] == [3, 2, 1]


def test_version_bump_at_the_same_path_is_not_hidden(
    store: ds.Store, log: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = BoundCfg(x=1)
    old, new = bound_v1(cfg, "c", log), bound_v2(cfg, "c", log)
    assert old.paths(store) == new.paths(store)
    run_inline([old], store)
    assert ds.plan(old, store=store).nothing_to_do
    with monkeypatch.context() as mp:
        killed_mid_attempt(mp)
        with pytest.raises(SystemExit):
            run_inline([new], store)
    assert ds.plan(old, store=store).reason(old) == Reason.NO_RECORD  # v2's "running" record
    agrees(store, [old, new])
    Path(log + ".fail").touch()
    run_inline([new], store)  # fails: the path now holds v2's failed record
    assert ds.plan(old, store=store).reason(old) == Reason.NO_RECORD
    assert ds.plan(new, store=store).reason(new) == Reason.FAILED
    Path(log + ".fail").unlink()
    run_inline([new], store)
    assert ds.plan(new, store=store).nothing_to_do
    assert ds.plan(old, store=store).reason(old) == Reason.CHANGED  # back to v1: rerun
    agrees(store, [old, new])


def test_verify_repair_tells_the_index(store: ds.Store, log: str) -> None:
    from dscheduler.store.catalogue.verify import verify

    nodes = [step(i, log) for i in range(2)]
    run_inline(nodes, store)
    record = nodes[0].paths(store).record
    text = json.loads(record.read_text())
    text["output"]["inline"] = '{"x": '  # its value, kept in the record, damaged
    record.write_text(json.dumps(text))
    verify(store, repair=True)
    assert ds.plan(nodes, store=store).reason(nodes[0]) == Reason.DAMAGED
    agrees(store, nodes)


# -- crashes between the truth and the index -------------------------------------------


def test_finished_but_missing_from_the_index_is_not_run_again(
    store: ds.Store, log: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    nodes = [step(i, log) for i in range(3)]
    # Entries lost: a driver (and its workers) that died after the links were made.
    monkeypatch.setattr(Index, "append", lambda self, entries, durable=False: None)
    run_inline(nodes, store)
    monkeypatch.undo()
    view = store.index.load()
    assert not any(view.finished(store.node_id(n.paths(store)), n.key) for n in nodes)
    # Node 1 also lost its link: a crash between its record and its link.
    nodes[1].paths(store).done.unlink()
    p = ds.plan(nodes, store=store)
    assert [n.name for n in p.to_run] == [nodes[1].name]  # records and links say the rest
    # ... and found the lost entries of the finished ones, which the plan leaves to
    # ds.compute to put back (planning writes nothing): the next plan reads the index
    # alone for them.
    assert [paths for paths, _, _ in p.unindexed] == [nodes[0].paths(store),
                                                      nodes[2].paths(store)]
    assert not any(store.index.load().finished(store.node_id(n.paths(store)), n.key)
                   for n in nodes)
    store.index.restore(p.unindexed, store.node_lease)  # as ds.compute does
    view = store.index.load()
    assert [view.finished(store.node_id(n.paths(store)), n.key) for n in nodes] == \
        [True, False, True]
    # Node 1 runs, finds its record under its lease, restores link and entry: "cached".
    assert run_inline(nodes, store) == {nodes[1].name: "cached"}
    assert ds.plan(nodes, store=store).nothing_to_do
    assert all(runs_of(log, i) == 1 for i in range(3))
    assert store.index.load().finished(store.node_id(nodes[1].paths(store)), nodes[1].key)


def test_a_dead_attempts_newer_entry_is_outranked_only_under_the_nodes_lease(
        store: ds.Store, log: str) -> None:
    # A forced rerun killed between its durable "not finished" entry and the removal of
    # the link: record and link still say finished, the index's newest entry does not.
    node = step(0, log)
    run_inline([node], store)
    paths = node.paths(store)
    record = store.read_record(paths.record)
    dead = Entry(store.node_id(paths), record["seq"] + 5, "running", node.key, {})
    store.index.append([dead], durable=True)
    done = store.node_id(paths)
    assert not store.index.load().finished(done, node.key)
    held = store.lease(f"node-{node.key16}", ttl=60)
    assert held.try_acquire()  # an attempt runs: planning must not decide for it
    assert ds.compute([node], store=store).plan.nothing_to_do  # record and link: finished
    assert not store.index.load().finished(done, node.key)
    held.release()
    assert ds.compute([node], store=store).plan.nothing_to_do
    assert store.index.load().finished(done, node.key)  # restored, above the dead entry
    assert runs_of(log, 0) == 1


# -- listing, small graphs, compaction -------------------------------------------------


def test_runs_are_listed_through_the_index(
    store: ds.Store, log: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dscheduler.store.catalogue import runs as runs_mod

    cfgs = [BoundCfg(x=i, label=f"run{i}") for i in range(20)]
    for cfg in cfgs:
        store.write_run(cfg)
    run_inline([bound_v1(cfg, "c", log) for cfg in cfgs[:5]], store)
    walked = runs_mod.runs_frame(runs_mod.node_summary(r, p, store.root)
                                 for p, r in runs_mod.iter_node_records(store))
    # Listing reads the index, not one record per node: with the walk made
    # impossible, it still lists every run, finished or pending.
    monkeypatch.setattr(runs_mod, "read_record", None)
    monkeypatch.setattr(runs_mod, "read_node", None)
    monkeypatch.setattr(runs_mod, "iter_node_records", None)
    frame = store.runs()
    assert sorted(frame["run_id"]) == sorted(c.run_id for c in cfgs)
    assert frame.equals(walked)
    states = dict(zip(frame["label"], frame["state"], strict=True))
    assert states["run0"] == "succeeded" and states["run19"] == "pending"
    nodes = store.runs(by="node")
    assert len(nodes) == 5 and set(nodes["label"]) == {f"run{i}" for i in range(5)}
    # Compactions carry the summaries over, and replace those that changed.
    assert store.index.compact()
    Path(log + ".fail").touch()
    run_inline([bound_v2(cfgs[0], "c", log)], store)
    assert store.index.compact()
    after = store.runs(by="node").set_index("label")
    assert after.loc["run0", "state"] == "failed" and after.loc["run0", "version"] == "2"
    assert (after.drop("run0")["state"] == "succeeded").all() and len(after) == 5
    assert len(store.runs()) == 20


def test_small_graph_in_a_large_index_reads_links(store: ds.Store, log: str) -> None:
    nodes = [step(i, log) for i in range(30)]
    run_inline(nodes, store)
    assert store.index.compact() and store.index.size() == 30
    calls = []
    real = Index.load

    def counting(self: Index, **kw: Any) -> Any:
        calls.append(1)
        return real(self, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Index, "load", counting)
        with dask.config.set({"dscheduler.index.sparse_ratio": 10}):
            assert ds.plan(nodes[:2], store=store).nothing_to_do  # 2 * 10 < 30: links
            assert calls == []
            assert ds.plan(nodes[:4], store=store).nothing_to_do  # 4 * 10 >= 30: index
            assert calls == [1]


def test_compaction_seals_old_segments_and_keeps_everything(store: ds.Store, log: str) -> None:
    nodes = [step(i, log) for i in range(5)]
    run_inline(nodes[:3], store)
    first = segments_mod.writer(store).path
    with dask.config.set({"dscheduler.index.segment_seconds": 0,
                          "dscheduler.index.seal_after": 0}):
        run_inline(nodes[3:], store)  # a new segment per append now
        assert len(segments_mod.names(store)) >= 2
        assert store.index.compact()
    assert first is not None and not first.exists()
    assert segments_mod.names(store) == []  # every segment was old enough: sealed, folded
    header = json.loads(store.index_snapshot.read_bytes().split(b"\n", 1)[0])
    assert header["entries"] == 5 and header["segments"] == {}
    assert ds.plan(nodes, store=store).nothing_to_do
    agrees(store, nodes)


def test_a_segment_sealed_under_its_writer_loses_nothing(
    store: ds.Store, log: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dscheduler.store.index import snapshot

    index = store.index
    writer = segments_mod.writer(store)
    first = Entry("tasks/a/1/.a.done", 1, "succeeded", "ka")
    late = Entry("tasks/b/1/.b.done", 1, "succeeded", "kb")
    index.append([first])
    real_load = snapshot.load

    def load_then_a_stalled_append(layout: Any, **kw: Any) -> Any:
        view = real_load(layout, **kw)
        index.append([late])  # lands in the segment compaction is about to seal
        return view

    monkeypatch.setattr(snapshot, "load", load_then_a_stalled_append)
    with dask.config.set({"dscheduler.index.seal_after": 0}):
        assert index.compact()
    monkeypatch.undo()
    assert segments_mod.names(store) == []  # sealed, folded in and deleted
    assert {"tasks/a/1/.a.done", "tasks/b/1/.b.done"} <= set(load(store).values)
    # The writer still holds the deleted file: an unfinishing entry notices and
    # goes again into a new segment.
    gone = Entry("tasks/a/1/.a.done", 2, "running", "ka")
    index.append([gone], durable=True)
    assert writer.path is not None and writer.path.exists()
    assert load(store).values["tasks/a/1/.a.done"] == "running 2 ka"


def test_a_reader_racing_a_compaction_misses_nothing(
    store: ds.Store, log: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dscheduler.store.index import snapshot

    nodes = [step(i, log) for i in range(4)]
    run_inline(nodes, store)
    segments_mod.writer(store).close()
    real_names = segments_mod.names
    raced = []

    def names_after_a_compaction(layout: Any) -> list[str]:
        if not raced:  # between this reader's snapshot and its listing
            raced.append(1)
            with dask.config.set({"dscheduler.index.seal_after": 0}):
                assert store.index.compact()
        return real_names(layout)

    monkeypatch.setattr(snapshot, "names", names_after_a_compaction)
    assert all(load(store).finished(store.node_id(n.paths(store)), n.key) for n in nodes)
    assert raced


# -- a tiny task writes its record once --------------------------------------------------


def test_tiny_first_attempt_writes_its_record_once_and_a_kill_is_still_listed(
    store: ds.Store, log: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dscheduler.store import atomic

    writes: list[str] = []
    real = atomic.write_bytes

    def counting(path: Path, data: bytes, **kw: Any) -> None:
        writes.append(path.name)
        real(path, data, **kw)

    monkeypatch.setattr(atomic, "write_bytes", counting)
    run_inline([step(0, log)], store)
    # A deferred "running" write waits on execute's one timer thread, which runs its
    # calls in time order: once a marker queued now, running_record_after from now, has
    # run, a deferred write the attempt failed to cancel would have run before it.
    passed = threading.Event()
    execute._later(float(settings.get("task.running_record_after")), passed.set)
    assert passed.wait(60), "the timer thread did not run the marker"
    assert writes.count("step.json") == 1  # once, not "running" then "succeeded"
    # A first attempt killed after its claim became a lease file (docs/design.md §7) and
    # before its "running" record leaves its directory and lease: the next attempt,
    # breaking the lease, lists the killed one.
    node = step(1, log)
    atomic.make_dirs(node.paths(store).dir)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    lease = store.node_lease_path(node.key16)
    lease.parent.mkdir(parents=True, exist_ok=True)
    lease.write_text(json.dumps({"token": "t", "owner": f"{node.name} tcp://10.0.0.1:1",
                                 "host": socket.gethostname(), "pid": int(dead.stdout),
                                 "started": 0.0, "ttl": 60, "heartbeat": time.time()}))
    run_inline([node], store)
    first, second = json.loads(node.paths(store).record.read_text())["attempts"]
    assert first["state"] == "failed" and "interrupted" in first["error"]
    assert first["worker"] == "tcp://10.0.0.1:1" and second["state"] == "succeeded"
