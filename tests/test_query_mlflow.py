"""``store.runs(filter=, order_by=)`` gives MLflow's answers to MLflow's own filters.

The filter strings, orderings and expected outcomes come from MLflow's docs (Search Runs)
and from MLflow's tests of its search utilities (``test_search_utils``: correct filtering,
correct sorting, NaN/inf/None ordering, errors); MLflow's ``status`` is our ``state``.
Records are written by the real writer and listed through the store index.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import dscheduler as ds
from dscheduler.store.catalogue.query import apply_order
from dscheduler.store.records import write_record

pytestmark = pytest.mark.fast


def _write(store: ds.Store, i: int, *, state: str = "succeeded", start: str = "2026-01-01",
           end: str = "2026-01-02", **groups: dict[str, Any]) -> None:
    env_id, config_hash = f"{i:016x}", f"{i + 1000:016x}"
    record: dict[str, Any] = {
        "task": "fit", "version": "1", "key": f"{i:064x}", "name": f"fit-{i:016x}",
        "env_id": env_id, "run_id": f"{env_id}/{config_hash}", "case": "c0", "upstream": [],
        "state": state, "label": f"r{i}", "config": {},
        "attempts": [{"attempt": 1, "state": state, "host": "h", "start": start, "end": end,
                      "seconds": 1.0}],
        **{group: values for group, values in groups.items() if values},
    }
    write_record(store.run(record["run_id"]).node("c0", "fit"), record)


def labels(frame: pd.DataFrame) -> list[str]:
    return list(frame["label"])


# -- MLflow's docs, Search Runs: params logged as numbers, compared as MLflow's strings ----


@pytest.fixture
def docs_store(tmp_path: Path) -> ds.Store:
    """Runs as the docs' examples assume them; ds.log_param keeps 10 and 0.001 as numbers."""
    st = ds.Store(tmp_path / "docs")
    _write(st, 0, params={"model": "CNN", "layers": 10, "alpha": 0.3, "lambda": 0.001,
                          "flag": True},
           metrics={"prediction accuracy": 0.95, "error": 0.04, "f1 score": 0.7, "rmse": 0.8,
                    "accuracy": 0.93},
           tags={"mlflow.user": "john@mlflow.com", "model": "sklearn-lr",
                 "type": "LogisticRegression", "production": "true"})
    _write(st, 1, params={"model": "CNN", "layers": 8, "alpha": 0.3, "lambda": 0.01},
           metrics={"prediction accuracy": 0.97, "error": 0.2, "f1 score": 0.4, "rmse": 1.2},
           tags={"mlflow.user": "ann@mlflow.com", "model": "torch", "production": "true"})
    _write(st, 2, params={"model": "Inception", "alpha": 0.5},  # no layers: ints and a gap
           metrics={"prediction accuracy": 0.99, "error": 0.01},
           tags={"type": "tree"})
    return st


@pytest.mark.parametrize(("text", "expected"), [
    # MLflow's docs, Search Runs (Python and R examples, example expressions)
    ("params.model = 'CNN' and params.layers = '10' and metrics.`prediction accuracy` >= 0.945",
     ["r0"]),
    ('params.alpha = "0.3" and params.lambda = "0.001" and metrics.error <= 0.05', ["r0"]),
    ("params.model = 'Inception'", ["r2"]),
    ("metrics.rmse < 0.9 and tags.production = 'true'", ["r0"]),
    ("metrics.accuracy > 0.92", ["r0"]),
    ("metrics.`f1 score` > 0.5", ["r0"]),
    ("tags.`mlflow.user` = 'john@mlflow.com'", ["r0"]),
    ('tags."mlflow.user" = \'ann@mlflow.com\'', ["r1"]),
    ("tags.`model` LIKE 'sklearn%'", ["r0"]),
    ("tags.`type` ILIKE '%Logistic%'", ["r0"]),
    # a param is the string of its logged value, as MLflow stores it: str(value)
    ("params.layers = '8'", ["r1"]),
    ("params.layers != '10'", ["r1"]),  # r2 has no layers: unknown, not listed
    ("params.layers in ('10', '12')", ["r0"]),
    ("params.lambda like '0.00%'", ["r0"]),
    ("params.flag = 'True'", ["r0"]),
    ("params.layers = '10.0'", []),  # MLflow's string of 10 is "10"
    # beyond MLflow (which refuses an unquoted value for a param): numbers compare as numbers
    ("params.layers > 8", ["r0"]),
    ("params.layers = 10 or params.alpha >= 0.5", ["r0", "r2"]),
])
def test_mlflow_docs_filters(docs_store: ds.Store, text: str, expected: list[str]) -> None:
    assert labels(docs_store.runs(filter=text)) == expected


def test_params_keep_their_logged_values(docs_store: ds.Store) -> None:
    frame = docs_store.runs()
    assert list(frame["params.layers"])[:2] == [10, 8]  # not 10.0: ints among a gap
    assert isinstance(frame["params.layers"][0], int)


# -- MLflow's tests of its search utilities: filtering, sorting -----------------------


@pytest.fixture
def three(tmp_path: Path) -> ds.Store:
    """MLflow's three runs of its filtering and sorting tests.  Their default order is
    start_time DESC, then run_id: 2, 1, 0; ours is by end, so the ends make it so."""
    st = ds.Store(tmp_path / "three")
    _write(st, 0, state="failed", start="2026-01-01T00", end="2026-01-03",
           metrics={"key1": 121}, params={"my_param": "A"})
    _write(st, 1, state="succeeded", start="2026-01-01T01", end="2026-01-02",
           metrics={"key1": 123}, params={"my_param": "A"}, tags={"tag1": "C"})
    _write(st, 2, state="failed", start="2026-01-01T01", end="2026-01-01",
           metrics={"key1": 125}, params={"my_param": "B"}, tags={"tag1": "D"})
    return st


def _indices(frame: pd.DataFrame) -> list[int]:
    return [int(label[1:]) for label in frame["label"]]


@pytest.mark.parametrize(("text", "expected"), [
    ("attributes.state = 'failed'", [2, 0]),
    ("metrics.key1 = 123", [1]),
    ("metrics.key1 != 123", [2, 0]),
    ("metrics.key1 >= 123", [2, 1]),
    ("params.my_param = 'A'", [1, 0]),
    ("tags.tag1 = 'D'", [2]),
    ("tags.tag1 != 'D'", [1]),
    ("params.my_param = 'A' AND attributes.state = 'failed'", [0]),
    ("`metric`.key1 >= 123", [2, 1]),  # backquoted prefixes
    ("`params`.my_param = 'A'", [1, 0]),
    ("`tags`.tag1 = 'C'", [1]),
    ("`attribute`.state = 'succeeded' and run.state != 'failed'", [1]),
    ('params."my_param" != "B"', [1, 0]),
])
def test_mlflow_correct_filtering(three: ds.Store, text: str, expected: list[int]) -> None:
    assert _indices(three.runs(filter=text)) == expected


def test_backquoted_prefixes_of_mlflow(tmp_path: Path) -> None:
    st = ds.Store(tmp_path)
    _write(st, 0, metrics={"a": 0.5}, params={"model": "LR"}, tags={"source_name": "a notebook"})
    _write(st, 1, metrics={"a": 0.05}, params={"model": "RF"}, tags={"source_name": "a job"})
    assert labels(st.runs(filter="`metric`.a >= 0.1")) == ["r0"]
    assert labels(st.runs(filter="`params`.model = 'LR'")) == ["r0"]
    assert labels(st.runs(filter="`tags`.source_name = 'a notebook'")) == ["r0"]
    assert labels(st.runs(order_by="`metrics`.a")) == ["r1", "r0"]


@pytest.mark.parametrize(("order_by", "expected"), [
    (None, [2, 1, 0]),
    (["tags.noSuchTag"], [2, 1, 0]),
    (["attributes.state"], [2, 0, 1]),
    (["attributes.start"], [0, 2, 1]),
    (["metrics.key1 asc"], [0, 1, 2]),
    (['metrics."key1"  desc'], [2, 1, 0]),
    (["params.my_param"], [1, 0, 2]),
    (["params.my_param aSc", "attributes.state  ASC"], [0, 1, 2]),
    (["params.my_param", "attributes.state DESC"], [1, 0, 2]),
    (["params.my_param DESC", "attributes.state   DESC"], [2, 1, 0]),
    (["params.`my_param` DESC", "attributes.state DESC"], [2, 1, 0]),
    (["tags.tag1"], [1, 2, 0]),  # missing last
    (["tags.tag1    DESC"], [2, 1, 0]),  # missing last in DESC too
])
def test_mlflow_correct_sorting(three: ds.Store, order_by: list[str] | None,
                                expected: list[int]) -> None:
    assert _indices(three.runs(order_by=order_by)) == expected


def test_missing_strings_sort_last_either_way(tmp_path: Path) -> None:
    """A missing tag is last whatever pandas makes of it (NaN in pandas 3's strings), also
    when a value sorts after the text 'nan'."""
    st = ds.Store(tmp_path)
    _write(st, 0, tags={"animal": "zebra"}, params={"p": "x"})
    _write(st, 1, params={"p": "y"})
    _write(st, 2, tags={"animal": "ant"})
    _write(st, 3, tags={"animal": "owl"}, params={"p": "x"})
    assert labels(st.runs(order_by="tags.animal")) == ["r2", "r3", "r0", "r1"]
    assert labels(st.runs(order_by="tags.animal desc")) == ["r0", "r3", "r2", "r1"]
    assert labels(st.runs(order_by=["params.p DESC", "attributes.label DESC"])) == [
        "r1", "r3", "r0", "r2"]


NANS = ["nan", "inf", "-inf", "-1000", "0", "1000", "None"]
# MLflow's test of ordering metrics with NaN, inf and None
NANS_ASC = ["-inf", "-1000", "0", "1000", "inf", "nan", "None"]
NANS_DESC = ["inf", "1000", "0", "-1000", "-inf", "nan", "None"]


def test_nan_metrics_sort_before_missing_ones(tmp_path: Path) -> None:
    st = ds.Store(tmp_path)
    for i, x in enumerate(reversed(NANS)):  # listed None first: the order must move it
        _write(st, i, metrics={} if x == "None" else {"x": float(x)}, tags={"x": x})
    frame = st.runs()
    assert frame["metrics.x"].dtype == float
    assert sum(math.isnan(v) for v in frame["metrics.x"]) == 2  # NaN stored, None missing
    assert list(st.runs(order_by="metrics.x asc")["tags.x"]) == NANS_ASC
    assert list(st.runs(order_by="metrics.x desc")["tags.x"]) == NANS_DESC
    # by node too, and a filter in between keeps the rows' NaN apart from missing
    nodes = st.runs(by="node", order_by="metrics.x desc")
    assert list(nodes["tags.x"]) == NANS_DESC
    kept = st.runs(filter="tags.x != '0'", order_by="metrics.x")
    assert list(kept["tags.x"]) == [x for x in NANS_ASC if x != "0"]


@pytest.mark.parametrize("dtype", [object, "str"])
def test_order_of_a_dataframe_with_nan_and_missing(dtype: Any) -> None:
    """Without the store: an object column tells a NaN from a missing value (None);
    strings sort with missing last under any pandas string dtype."""
    numbers = pd.DataFrame({"label": NANS[::-1], "metrics.x": pd.Series(
        [None if x == "None" else float(x) for x in NANS[::-1]], dtype=object)})
    assert list(apply_order(numbers, ["metrics.x"], {"label"})["label"]) == NANS_ASC
    assert list(apply_order(numbers, ["metrics.x DESC"], {"label"})["label"]) == NANS_DESC
    words = pd.DataFrame({"label": ["a", "b", "c"],
                          "tags.t": pd.Series(["zebra", None, "ant"], dtype=dtype)})
    assert list(apply_order(words, ["tags.t"], {"label"})["label"]) == ["c", "a", "b"]
    assert list(apply_order(words, ["tags.t desc"], {"label"})["label"]) == ["a", "c", "b"]


# -- comparisons that can never match are errors, as in MLflow ------------------------


@pytest.mark.parametrize(("text", "says"), [
    ("metrics.model = 'LR'", "metrics.model is a number; compare it with a number "
                             "(metrics.model = 0.5)"),
    ("metric.model = '5'", "metric.model is a number"),
    ("metrics.key1 = true", "metrics.key1 is a number"),
    ("metrics.key1 in (1, 'a')", "(metrics.key1 in (0.5, 1))"),
    ("metrics.key1 like '1%'", "like matches strings, and metrics.key1 is a number"),
    ("attribute.run_id != 1", "attribute.run_id is a string; quote the value "
                              "(attribute.run_id != '1')"),
    ("attribute.state = true", "attribute.state is a string"),
    ("nodes = 'two'", "nodes is a number"),
    ("params.my_param >= 'LR'", ">= compares numbers, and params and tags are strings"),
    ("tags.tag1 < 'D'", "use = != like or in (tags.tag1 like 'D%')"),
    ("params.my_param <= '0.5'", "write the number unquoted (params.my_param <= 0.5)"),
])
def test_comparisons_that_never_match_are_refused(three: ds.Store, tmp_path: Path,
                                                   text: str, says: str) -> None:
    with pytest.raises(ds.ConfigError, match="can never match") as info:
        three.runs(filter=text)
    assert says in str(info.value)
    with pytest.raises(ds.ConfigError, match="can never match"):  # an empty store too
        ds.Store(tmp_path / "empty").runs(filter=text)
