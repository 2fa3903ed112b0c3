"""The filter language and ``store.runs()`` over records written by the real writer
(no cluster): and, or, not, parentheses, like, in, null, ordering, bad filters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import dscheduler as ds
from dscheduler.store.records import write_record

pytestmark = pytest.mark.fast

RUNS = [
    # label, model, rmse, stage, state
    ("base-linear", "linear", 1.2, "eval", "succeeded"),
    ("base-ridge", "ridge", 0.9, "eval", "succeeded"),
    ("wide-linear", "linear", 2.5, "train", "succeeded"),
    ("broken", "linear", None, None, "failed"),
]


def _record(i: int, label: str, model: str, rmse: float | None, stage: str | None,
            state: str) -> dict[str, Any]:
    env_id, config_hash = f"{i:016x}", f"{i + 100:016x}"
    record: dict[str, Any] = {
        "task": "fit", "version": "1", "key": f"{i:064x}", "name": f"fit-{i:016x}",
        "env_id": env_id, "run_id": f"{env_id}/{config_hash}", "case": "c0",
        "upstream": [], "state": state, "label": label, "config": {"alpha": i / 10},
        "attempts": [{"attempt": 1, "state": state, "host": "h", "start": f"2026-01-0{i + 1}",
                      "end": f"2026-01-0{i + 1}T01", "seconds": 1.0 + i}],
        "params": {"model": model, "lr": str(0.1 * (i + 1))},
    }
    if rmse is not None:
        record["metrics"] = {"rmse": rmse}
    if stage is not None:
        record["tags"] = {"stage": stage}
    return record


@pytest.fixture
def store(tmp_path: Path) -> ds.Store:
    st = ds.Store(tmp_path / "data")
    for i, row in enumerate(RUNS):
        record = _record(i, *row)
        write_record(st.run(record["run_id"]).node("c0", "fit"), record)
    return st


def labels(frame: Any) -> list[str]:
    return list(frame["label"])


@pytest.mark.parametrize(("text", "expected"), [
    ("metrics.rmse < 1.5 and params.model = 'linear' and tags.stage = 'eval'", ["base-linear"]),
    ("metrics.rmse < 1 or params.model = 'linear'",
     ["base-linear", "base-ridge", "wide-linear", "broken"]),
    ("not params.model = 'linear'", ["base-ridge"]),
    ("not metrics.rmse < 1.5", ["wide-linear"]),  # no rmse: unknown, in neither
    ("(metrics.rmse > 2 or tags.stage = 'eval') and not label like '%ridge'",
     ["base-linear", "wide-linear"]),
    ("label like 'base-%'", ["base-linear", "base-ridge"]),
    ("label ilike 'BASE-L%'", ["base-linear"]),
    ("label not like 'base%'", ["wide-linear", "broken"]),
    ("params.model in ('ridge', 'lasso')", ["base-ridge"]),
    ("params.model not in ('ridge')", ["base-linear", "wide-linear", "broken"]),
    ("tags.stage is null", ["broken"]),
    ("tags.stage is not null and state != 'failed'", ["base-linear", "base-ridge",
                                                      "wide-linear"]),
    ("params.lr >= 0.3", ["wide-linear", "broken"]),  # params stored as strings compare as numbers
    ("config.alpha = 0.1 or metric.`rmse` = 0.9", ["base-ridge"]),
    ("state = 'failed' OR (Metrics.rmse >= 2.5)", ["wide-linear", "broken"]),
])
def test_filters(store: ds.Store, text: str, expected: list[str]) -> None:
    assert labels(store.runs(filter=text)) == expected


def test_ordering_state_and_by_node(store: ds.Store) -> None:
    assert labels(store.runs(order_by=["metrics.rmse desc"])) == [
        "wide-linear", "base-linear", "base-ridge", "broken"]  # missing last
    assert labels(store.runs(order_by=["params.model", "label DESC"])) == [
        "wide-linear", "broken", "base-linear", "base-ridge"]
    assert labels(store.runs(state="failed")) == ["broken"]
    nodes = store.runs(by="node", filter="metrics.rmse < 1")
    assert list(nodes["name"]) == ["fit-0000000000000001"] and nodes["seconds"][0] == 2.0
    frame = store.runs()
    assert list(frame.columns[:8]) == ["run_id", "env_id", "config_hash", "label", "state",
                                       "nodes", "start", "end"]
    assert {"config.alpha", "params.model", "metrics.rmse", "tags.stage"} <= set(frame.columns)


@pytest.mark.parametrize(("text", "message", "column"), [
    ("metrics.rmse < ", "unexpected end", 16),
    ("metrics.rmse << 1", "unexpected '<'", 15),
    ("state = 'a' and and x", "unexpected 'and'", 17),
    ("params.model in ('a' 'b')", "unexpected \"'b'\"; expected ')', ',', and, or", 22),
    ("(metrics.rmse < 1", "unexpected end", 18),
    ("colour = 'red'", "unknown column 'colour'", 1),
])
def test_bad_filters_show_the_position(store: ds.Store, text: str, message: str,
                                       column: int) -> None:
    with pytest.raises(ds.ConfigError) as info:
        store.runs(filter=text)
    lines = str(info.value).splitlines()
    assert message in lines[0] and f"at column {column}" in lines[0]
    assert lines[1] == f"  {text}" and lines[2] == "  " + " " * (column - 1) + "^"


def test_bad_order_and_by(store: ds.Store) -> None:
    with pytest.raises(ds.ConfigError, match="unexpected 'sideways'"):
        store.runs(order_by=["metrics.rmse sideways"])
    with pytest.raises(ds.ConfigError, match="by='x': list by 'run' or by 'node'"):
        store.runs(by="x")


def test_a_run_without_node_records_is_pending(tmp_path: Path) -> None:
    from typing import ClassVar

    class Cfg(ds.RunConfig):
        ENV_FIELDS: ClassVar = ("ck",)
        ck: str
        label: str = ""

    st = ds.Store(tmp_path)
    cfg = Cfg(ck="a", label="waiting")
    st.write_run(cfg)
    frame = st.runs()
    assert list(frame["run_id"]) == [cfg.run_id] and list(frame["state"]) == ["pending"]
    assert list(frame["label"]) == ["waiting"] and len(st.runs(by="node")) == 0
