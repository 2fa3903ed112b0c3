"""Several processes write node records while another lists them and compacts the index:
never a torn record, and the listing converges to what was written."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import dscheduler as ds
from dscheduler.store.index import columns
from dscheduler.store.records import read_record

pytestmark = pytest.mark.slow

WRITER = r"""
import sys
from dscheduler.store import Store
from dscheduler.store.records import write_record

root, writer, nodes, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
store = Store(root)
for r in range(rounds):
    for n in range(nodes):
        env_id, config_hash = f"{writer:016x}", f"{n:016x}"
        final = r == rounds - 1
        record = {
            "task": "fit", "version": "1", "key": f"{writer:032x}{n:032x}",
            "name": f"fit-{writer:08x}{n:08x}", "env_id": env_id,
            "run_id": f"{env_id}/{config_hash}", "case": "c0", "upstream": [],
            "state": "succeeded" if final else "running", "label": f"w{writer}-n{n}",
            "attempts": [{"attempt": 1, "state": "running", "start": "x"}] * (r + 1),
            "metrics": {"round": r},
            "params": {"writer": writer, "pad": "x" * 400000},  # bigger than one write block
        }
        write_record(store.run(record["run_id"]).node("c0", "fit"), record)
"""

WRITERS, NODES, ROUNDS = 3, 10, 30


def test_listing_while_processes_write_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(columns, "ROWS", 7)  # summaries in several blocks, some rewritten
    store = ds.Store(tmp_path / "data")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(store.root), str(w),
                               str(NODES), str(ROUNDS)]) for w in range(WRITERS)]
    listings = records_read = 0
    try:
        while any(p.poll() is None for p in procs):
            frame = store.runs(by="node")
            listings += 1
            if listings % 2:
                store.index.compact()
            # Every record read is whole: parsed, never "damaged", its fields consistent.
            assert "damaged" not in set(frame["state"])
            for row in frame.to_dict("records"):
                assert row["attempts"] == row["metrics.round"] + 1
                assert len(row["params.pad"]) == 400000
            # The listing reads the index; the records themselves must be whole too.
            for path in store.runs_dir.glob("*/*/c0/fit.json"):
                record = read_record(path)  # a StoreError when torn
                assert record is not None and record["name"].startswith("fit-")
                assert len(record["attempts"]) == record["metrics"]["round"] + 1
                assert len(record["params"]["pad"]) == 400000
                records_read += 1
            time.sleep(0.01)
    finally:
        for p in procs:
            p.wait(timeout=120)
    assert all(p.returncode == 0 for p in procs)
    assert listings >= 3 and records_read > 0
    final = store.runs(by="node")
    assert len(final) == WRITERS * NODES
    assert set(final["state"]) == {"succeeded"} and set(final["metrics.round"]) == {ROUNDS - 1}
    by_run = store.runs(filter="params.writer = 1 and metrics.round = 29")
    assert len(by_run) == NODES and set(by_run["state"]) == {"succeeded"}
