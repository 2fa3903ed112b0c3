"""Tables for people (issue 20.2, 20.4): ``runs``, ``status``, ``show`` and ``compare`` fit
80 and 200 columns with readable cells; CSV and JSON stay complete; the run summary says in
one plain sentence what the local cluster did with a resource ask, without a Python warning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import dscheduler as ds
from dscheduler.cli import app
from dscheduler.cli.common import console
from dscheduler.cli.tables import clip, unique_prefixes
from dscheduler.store import atomic
from dscheduler.store.catalogue.listing import listing
from dscheduler.store.catalogue.runs import node_summaries
from dscheduler.store.layout import RUN_RECORD
from dscheduler.store.records import write_record

LONG = "stencil-with-a-rather-long-label"
LABELS = ["linear", "mlp", "mlp-ensemble", LONG]
RMSE = [2.768419, 2.647071, 2.557998, 0.179198]


def _write(store: ds.Store, i: int, label: str, task: str = "verify", state: str = "succeeded",
           case: str = "c0", **groups: Any) -> str:
    env_id, config_hash = f"{i:04x}" + "a1b2c3d4e5f6", f"{i:04x}" + "0f1e2d3c4b5a"
    run_id = f"{env_id}/{config_hash}"
    record: dict[str, Any] = {
        "task": task, "version": "1", "key": f"{i:04x}{task:0>8}{case:0>8}".ljust(64, "7"),
        "name": f"{task}-{i:04x}{case:0>12}", "env_id": env_id, "run_id": run_id,
        "case": case, "upstream": [], "state": state, "label": label,
        "config": {"checkpoint": f"checkpoints/{label}.npz", "steps": "0/120/6",
                   "label": label},
        "attempts": [{"attempt": 1, "state": state, "host": "node-17", "seconds": 1.25,
                      "start": "2026-01-01T00:00:00.000+00:00",
                      "end": "2026-01-01T00:00:01.250+00:00",
                      "error": None if state != "failed" else
                      "ValueError: " + "a long explanation of what went wrong " * 4}],
        **groups,
    }
    write_record(store.run(run_id).node(case, task), record)
    atomic.write_json(store.run(run_id).dir / RUN_RECORD, {"run_id": run_id, "label": label})
    return run_id


@pytest.fixture
def runs_store(tmp_path: Path) -> ds.Store:
    """Four runs (the main job's shape): rmse and bias vary, ``const`` and ``steps`` do
    not; ``members`` is a param that varies, ``checkpoint`` a long one."""
    store = ds.Store(tmp_path / "data")
    for i, (label, rmse) in enumerate(zip(LABELS, RMSE, strict=True)):
        _write(store, i, label, metrics={"rmse": rmse, "bias": 0.01 * (i - 1.5),
                                         "const": 3.0},
               params={"checkpoint": f"checkpoints/{label}.npz",
                       "members": 8 if label == "mlp-ensemble" else 1, "steps": "0/120/6"},
               tags={"stage": "eval"})
        for c in range(2):
            _write(store, i, label, task="forecast", case=f"2020010{c}0000")
    return store


@pytest.fixture
def width(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Set the terminal's width for the CLI's console (rich reads COLUMNS only once)."""
    def set_width(columns: int) -> None:
        monkeypatch.setattr(console, "width", columns)
    yield set_width


def cli(*args: str) -> Any:
    out = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return out


def lines_fit(text: str, columns: int) -> list[str]:
    lines = text.splitlines()
    too_long = [line for line in lines if len(line.rstrip()) > columns]
    assert not too_long, f"lines wider than {columns}:\n" + "\n".join(too_long)
    return lines


def header_and_rows(text: str) -> tuple[list[str], list[list[str]]]:
    lines = text.splitlines()
    return lines[0].split(), [line.split() for line in lines[1:5]]


# -- dscheduler runs ---------------------------------------------------------------------------


@pytest.mark.fast
def test_runs_at_80_columns_shows_what_runs_are_compared_by(runs_store: ds.Store,
                                                            width: Any) -> None:
    width(80)
    out = cli("runs", "--store", runs_store.root, "--sort", "metrics.rmse asc")
    assert out.exit_code == 0, out.output
    lines_fit(out.output, 80)
    head, rows = header_and_rows(out.output)
    # Label, state, nodes, then the metrics that vary, then the params that vary.
    assert head[:3] == ["label", "state", "nodes"] and {"rmse", "bias", "members"} <= set(head)
    assert "const" not in head and "steps" not in head and "stage" not in head
    assert [r[0] for r in rows] == [LONG, "mlp-ensemble", "mlp", "linear"]  # whole labels
    assert all(r[1] == "succeeded" and r[2] == "3" for r in rows)
    rmse = [r[head.index("rmse")] for r in rows]
    assert rmse == ["0.1792", "2.558", "2.647", "2.768"]  # four significant digits
    assert not any("…" in cell for r in rows for cell in r[:3])  # no 4-character columns
    footer = out.output.splitlines()[-1]
    assert footer.startswith("+") and "--wide or --columns" in footer


@pytest.mark.fast
def test_runs_at_200_columns_adds_params_and_short_ids(runs_store: ds.Store,
                                                       width: Any) -> None:
    width(200)
    out = cli("runs", "--store", runs_store.root)
    assert out.exit_code == 0, out.output
    lines_fit(out.output, 200)
    head, rows = header_and_rows(out.output)
    assert {"label", "state", "nodes", "rmse", "bias", "checkpoint", "members",
            "run_id"} <= set(head)
    assert "const" not in head and "env_id" not in head
    checkpoint = head.index("checkpoint")
    assert {r[checkpoint] for r in rows} == {f"checkpoints/{x}.npz" for x in LABELS}
    ids = [r[head.index("run_id")] for r in rows]
    assert all(len(i) == 8 for i in ids) and len(set(ids)) == 4  # 8 characters, unique
    frame = runs_store.runs()
    assert all(any(run_id.startswith(i) for run_id in frame["run_id"]) for i in ids)
    shown = cli("show", ids[0], "--store", runs_store.root)  # a short id names its run
    assert shown.exit_code == 0 and "rmse = " in shown.output


@pytest.mark.fast
def test_runs_columns_globs_and_wide(runs_store: ds.Store, width: Any) -> None:
    width(80)
    out = cli("runs", "--store", runs_store.root, "--columns", "label,metrics.*")
    assert out.exit_code == 0, out.output
    head, rows = header_and_rows(out.output)
    assert head == ["label", "bias", "const", "rmse"] and rows[0][2] == "3"
    out = cli("runs", "--store", runs_store.root, "--columns", "params.members",
              "--columns", "label")
    assert header_and_rows(out.output)[0] == ["members", "label"]
    out = cli("runs", "--store", runs_store.root, "--columns", "metrics.rsme")
    assert out.exit_code == 2 and "--columns 'metrics.rsme' names no column" in out.output
    assert "metrics.rmse" in out.output

    wide = cli("runs", "--store", runs_store.root, "--wide")
    assert wide.exit_code == 0, wide.output
    head = wide.output.splitlines()[0].split()
    frame = runs_store.runs()
    assert len(head) == len(frame.columns)  # every column, none squeezed
    assert all(run_id in wide.output for run_id in frame["run_id"])  # ids whole
    assert f"checkpoints/{LONG}.npz" in wide.output


@pytest.mark.fast
def test_csv_and_json_stay_complete(runs_store: ds.Store, width: Any) -> None:
    width(80)
    frame = runs_store.runs()
    out = cli("runs", "--store", runs_store.root, "--format", "csv")
    assert out.exit_code == 0
    assert out.output.splitlines()[0].split(",") == list(frame.columns)
    assert all(run_id in out.output for run_id in frame["run_id"])
    rows = json.loads(cli("runs", "--store", runs_store.root, "--format", "json").output)
    assert sorted(r["metrics.rmse"] for r in rows) == sorted(RMSE)  # every digit
    assert {r["metrics.const"] for r in rows} == {3.0} and len(rows[0]) == len(frame.columns)


@pytest.mark.fast
def test_runs_by_node_fits(runs_store: ds.Store, width: Any) -> None:
    for columns in (80, 200):
        width(columns)
        out = cli("runs", "--store", runs_store.root, "--by", "node")
        assert out.exit_code == 0, out.output
        lines_fit(out.output, columns)
        head, rows = header_and_rows(out.output)
        assert head[:3] == ["name", "label", "state"]
        assert rows[0][0].startswith(("verify-", "forecast-")) and "…" not in rows[0][0]


# -- runs without pandas (issue 20 item 5) ------------------------------------------------------


def _mixed_store(store: ds.Store) -> ds.Store:
    """Beside the four runs: a failed node, a running one, a run with no node yet, a NaN
    metric logged, a run without a label, a metric only some nodes have, a param that is
    an int in one run and missing in others, a tag that differs."""
    _write(store, 5, "broken", state="failed", metrics={"rmse": 9.5})
    _write(store, 5, "broken", task="forecast", metrics={"rmse": 0.5, "skill": 1.0})
    running = {"attempts": [{"attempt": 1, "state": "running", "host": "node-2",
                             "seconds": None, "start": "2026-01-02T00:00:00.000+00:00",
                             "end": None, "error": None}]}
    _write(store, 6, "busy", state="running", **running)
    _write(store, 6, "busy", task="forecast", params={"members": 3}, tags={"stage": "x"})
    _write(store, 7, "logged", metrics={"rmse": float("nan")})
    _write(store, 8, "", metrics={"bias": -1.0})
    atomic.write_json(store.run("00aa" + "1" * 12 + "/" + "00bb" + "2" * 12).dir / RUN_RECORD,
                      {"run_id": "00aa" + "1" * 12 + "/" + "00bb" + "2" * 12, "label": "new"})
    return store


def _plain(values: list[Any]) -> list[Any]:
    return [None if v is None or (isinstance(v, float) and v != v) or
            type(v).__name__ == "NaTType" else v for v in values]


@pytest.mark.fast
@pytest.mark.parametrize("by", ["run", "node"])
@pytest.mark.parametrize("state", [None, ["succeeded"], ["failed", "running"], ["pending"]])
def test_listing_without_pandas_equals_the_frame(runs_store: ds.Store, by: str,
                                                 state: list[str] | None) -> None:
    if by == "node" and state == ["pending"]:
        state = ["cancelled"]
    store = _mixed_store(runs_store)
    frame = store.runs(state=state, by=by)
    rows = listing(node_summaries(store), state=state, by=by)
    assert rows.columns == list(frame.columns)
    assert len(rows) == len(frame) and (len(rows) > 0 or state in (["pending"], ["cancelled"]))
    for name in rows.columns:
        want = _plain(frame[name].tolist())
        got = _plain(rows.column(name))
        if name.startswith("metrics."):
            assert [g is None for g in got] == [w is None for w in want], name
            got, want = [g for g in got if g is not None], [w for w in want if w is not None]
            assert got == pytest.approx(want, rel=1e-12), name
        else:
            assert got == want, name


@pytest.mark.fast
def test_runs_lists_without_pandas_or_dask(runs_store: ds.Store) -> None:
    """``dscheduler runs`` (table, CSV, JSON) in a new interpreter: no pandas, no dask;
    the same CSV and JSON as through the DataFrame (--sort, which needs pandas)."""
    store = _mixed_store(runs_store)
    outputs = {}
    for fmt in ("table", "csv", "json"):
        for sort in ([], ["--sort", "run_id asc"]):
            args = ["runs", "--store", str(store.root), "--format", fmt, *sort]
            code = ("import sys\nfrom dscheduler.cli import app\ntry:\n"
                    f"    app({args!r})\nexcept SystemExit:\n    pass\n"
                    "print('loaded:', [m for m in ('pandas', 'dask', 'numpy') "
                    "if m in sys.modules])")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 timeout=300, check=False, env={**os.environ, "COLUMNS": "200"})
            assert out.returncode == 0, out.stderr[-2000:]
            text, _, loaded = out.stdout.rpartition("loaded: ")
            assert (loaded.strip() == "[]") == (not sort), (fmt, sort, loaded)
            outputs[fmt, bool(sort)] = text
    unsorted = json.loads(outputs["json", False])
    assert sorted(unsorted, key=lambda r: r["run_id"]) == json.loads(outputs["json", True])
    lines = outputs["csv", False].splitlines()
    assert lines[0] == outputs["csv", True].splitlines()[0]
    assert sorted(lines[1:]) == sorted(outputs["csv", True].splitlines()[1:])
    assert len(lines) == 1 + 9 and "nan" not in outputs["csv", False].lower()


# -- status, show, compare ---------------------------------------------------------------------


@pytest.mark.fast
def test_status_fits_with_long_labels(tmp_path: Path, width: Any) -> None:
    store = ds.Store(tmp_path / "data")
    labels = ["a-label-that-is-much-too-long-for-a-table-of-eighty-columns-" + "x" * 20,
              "short"]
    states = ["succeeded", "failed", "cancelled", "running"]
    for i, label in enumerate(labels):
        for j, state in enumerate(states):
            _write(store, i, label, task=f"task{j}", state=state)
    for columns in (80, 200):
        width(columns)
        out = cli("status", "--store", store.root)
        assert out.exit_code == 0, out.output
        text = out.output.split("last ")[0]  # failures are prose: they wrap
        lines = lines_fit(text, columns)
        by_label = lines[lines.index("nodes by run label:") + 1:]
        head = by_label[0].split()
        assert head[0] == "label" and "total" in head and "succeeded" in head
        short = next(line.split() for line in by_label if line.startswith("short "))
        assert short[head.index("total")] == "4"
        if columns == 200:
            assert labels[0] in text
        else:
            assert labels[0][:30] in text and "…" in text  # cut at its end, still readable


@pytest.mark.fast
def test_compare_fits_and_shows_only_what_differs(runs_store: ds.Store, width: Any) -> None:
    for columns in (80, 200):
        width(columns)
        out = cli("compare", *LABELS, "--store", runs_store.root)
        assert out.exit_code == 0, out.output
        lines = lines_fit(out.output, columns)
        head = lines[0].split()
        assert head[:4] == ["field", *LABELS[:3]] and head[4].startswith("stencil-with")
        assert columns == 80 or head[4] == LONG
        rows = {line.split()[0]: line.split()[1:] for line in lines[1:-1]}
        assert rows["metrics.rmse"] == ["2.76842", "2.64707", "2.558", "0.179198"]
        assert "metrics.const" not in rows and "params.steps" not in rows
        assert lines[-1] == f"{len(rows)} of 18 fields shown (those that differ)"


@pytest.mark.fast
def test_show_fits(runs_store: ds.Store, width: Any) -> None:
    _write(runs_store, 9, "broken", state="failed")
    for columns in (80, 200):
        width(columns)
        out = cli("show", "broken", "--store", runs_store.root)
        assert out.exit_code == 0, out.output
        lines = out.output.splitlines()
        table = lines[next(i for i, line in enumerate(lines) if line.startswith("attempt")):]
        table = table[:2]
        lines_fit("\n".join(table), columns)
        assert table[0].split() == ["attempt", "state", "host", "start", "seconds", "error"]
        assert table[1].split()[:5] == ["1", "failed", "node-17",
                                         "2026-01-01T00:00:00.000+00:00", "1.25"]
        assert "ValueError: a" in table[1] and table[1].rstrip().endswith("…")  # cut, not
        assert columns == 80 or "what went wrong a long explanation" in table[1]  # wrapped


@pytest.mark.fast
def test_clip_and_unique_prefixes() -> None:
    assert clip("abcdefghij", 5) == "abcd…" and clip("abcdefghij", 5, middle=True) == "ab…ij"
    assert clip("abc", 5) == "abc"
    assert unique_prefixes(["aaaaaaaa11", "aaaaaaaa12", "bbbbbbbbbb"]) == [
        "aaaaaaaa11", "aaaaaaaa12", "bbbbbbbb"]


# -- item 4: a resource the local cluster cannot honour ----------------------------------------

RECIPE = '''
import dscheduler as ds

@ds.task(version="1")
def square(x: int) -> int:
    return x * x

def main():
    gpu = square.options(resources={"GPU": 1})
    return [gpu(1), gpu(2), square(3)]
'''


def test_a_resource_ask_on_the_local_cluster_is_one_plain_note(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.py"
    recipe.write_text(RECIPE)
    ran = subprocess.run(
        [sys.executable, "-c", "from dscheduler.cli import app; app()", "run", str(recipe),
         "--store", str(tmp_path / "data"), "--no-progress"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "default"})
    assert ran.returncode == 0, ran.stdout + ran.stderr
    note = ("note: the local cluster runs every task on its CPUs (2 square nodes asked for "
            "GPU: 1); a SLURM cluster honours resources (--cluster slurm)")
    assert ran.stdout.count(note) == 1, ran.stdout
    both = ran.stdout + ran.stderr
    assert "UserWarning" not in both and "resource requests" not in both
    assert "warnings.warn" not in both and "handle = submit(" not in both, both


@pytest.mark.fast
def test_the_command_line_prints_a_warning_as_one_plain_line() -> None:
    text = warnings.formatwarning(UserWarning("bump the version"), UserWarning,
                                  "/x/dscheduler/graph/explain.py", 174, "p = plan(nodes)")
    assert text == "warning: bump the version\n"
