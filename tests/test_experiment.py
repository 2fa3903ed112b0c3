"""Experiment files and ``dscheduler ids``: validation errors name file, run and field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

import dscheduler as ds
from dscheduler.cli import app

pytestmark = pytest.mark.fast

MODEL = '''
from typing import ClassVar
import dscheduler as ds

class Forecast(ds.RunConfig):
    ENV_FIELDS: ClassVar = ("checkpoint",)
    checkpoint: str
    config: dict[str, object] = {}
    steps: str = "0/120/6"
    label: str = ""
'''


@pytest.fixture
def write(tmp_path: Path):
    (tmp_path / "model.py").write_text(MODEL)

    def _write(body: str) -> Path:
        path = tmp_path / "exp.yaml"
        path.write_text("model: model.py:Forecast\n" + body)
        return path

    return _write


def test_runs_defaults_and_dates(write) -> None:
    path = write(
        "defaults: {steps: 0/24/6}\n"
        "dates: {start: 2020-01-01T00:00, end: 2020-01-02T00:00, frequency: 12h}\n"
        "runs:\n  - {label: a, checkpoint: x}\n  - {label: b, checkpoint: y, steps: 0/6/6}\n"
    )
    exp = ds.load_experiment(path)
    assert [r.steps for r in exp.runs] == ["0/24/6", "0/6/6"]
    assert exp.cases == ["202001010000", "202001011200", "202001020000"]
    assert len(exp.env_ids()) == 2


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ("runs:\n  - {label: a, checkpoint: x, stpes: 1}\n", ["exp.yaml", "run 0 ('a')", "stpes"]),
        ("runs:\n  - {checkpoint: x}\n  - {checkpoint: [1]}\n", ["run 1", "checkpoint"]),
        ("runs:\n  - {checkpoint: x, config: {a: [1, .nan]}}\n", ["run 0", "config.a[1]", "nan"]),
        ("runs:\n  - {checkpoint: x, config: {a: .inf}}\n", ["config.a", "inf"]),
        ("runs: [ {checkpoint: x\n", ["not valid YAML"]),
        ("runs:\n  - {label: a, checkpoint: x}\n  - {label: b, checkpoint: x}\n",
         ["run 1 ('b') is the same run as run 0 ('a')", "label"]),
        ("runs: {a: 1}\n", ["top-level 'runs:' list"]),
        ("rnus: []\nruns: []\n", ["unknown top-level keys ['rnus']"]),
        ("dates: {start: 2020-01-02, end: 2020-01-01}\nruns: []\n", ["give no case"]),
    ],
)
def test_bad_experiments(write, body: str, fragments: list[str]) -> None:
    path = write(body)
    with pytest.raises(ds.ConfigError) as info:
        ds.load_experiment(path)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_yaml_is_loaded_safely(write, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write(f"runs:\n  - !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ds.ConfigError, match="not valid YAML"):
        ds.load_experiment(path)
    assert not marker.exists()


def _cli(*args: str, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> Result:
    """Run the CLI in this process (a subprocess would spend a second importing)."""
    monkeypatch.chdir(cwd)
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_cli_ids(write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write("runs:\n  - {label: a, checkpoint: x}\n  - {label: b, checkpoint: x, steps: s}\n"
                 "  - {label: c, checkpoint: y}\n")
    out = _cli("ids", str(path), cwd=tmp_path, monkeypatch=monkeypatch)
    assert out.exit_code == 0, out.output
    exp = ds.load_experiment(path)
    for cfg in exp.runs:
        line = next(x for x in out.stdout.splitlines() if x.split()[:1] == [cfg.label])
        assert line.split()[1:] == [cfg.env_id, cfg.config_hash, cfg.run_id]
    assert "3 runs need 2 distinct envs" in out.stdout
    assert not (tmp_path / "data").exists()  # ids writes nothing


def test_cli_ids_bad_input_is_a_clear_error(write, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = write("runs:\n  - {label: a, checkpoint: x, stpes: 1}\n")
    out = _cli("ids", str(path), cwd=tmp_path, monkeypatch=monkeypatch)
    assert out.exit_code == 2, out.output
    assert isinstance(out.exception, SystemExit)  # a clean exit, not an exception
    assert "stpes" in out.stderr and "Traceback" not in out.stderr


# -- dates, kinds, settings, duplicates, lines (issue 19 item 4) -------------------------


def _error(path: Path) -> str:
    with pytest.raises(ds.ConfigError) as info:
        ds.load_experiment(path)
    return str(info.value)


@pytest.mark.parametrize("frequency", ["6h", "12h", "1D", "D", "90min", "7D", "30s"])
def test_date_ranges_match_pandas(write, frequency: str) -> None:
    pd = pytest.importorskip("pandas")
    path = write("dates: {start: 2020-02-27T18:00, end: 2020-03-15, "
                 f"frequency: {frequency}}}\nruns: []\n")
    want = [t.strftime("%Y%m%d%H%M") for t in
            pd.date_range("2020-02-27T18:00", "2020-03-15", freq=frequency)]
    assert ds.load_experiment(path).cases == want


def test_dates_range_list_and_exclude(write) -> None:
    path = write(
        "dates:\n"
        "  start: 2020-01-01T00:00\n"
        "  end: 2020-01-02\n"
        "  frequency: 12h\n"
        "  list: [2020-03-01T06:00Z, '202001011200', 2020-02-01 00:00:00]\n"
        "  exclude: [2020-01-01T12:00]\n"
        "runs: []\n")
    assert ds.load_experiment(path).cases == [
        "202001010000", "202001020000", "202002010000", "202003010600"]
    path = write("dates: [2020-01-03, 2020-01-01T00:00+01:00]\nruns: []\n")
    assert ds.load_experiment(path).cases == ["201912312300", "202001030000"]


def test_loading_an_experiment_imports_no_pandas(write) -> None:
    path = write("dates: {start: 2020-01-01, end: 2020-02-01, frequency: 6h}\n"
                 "runs:\n  - {checkpoint: x}\n")
    code = (f"import sys, dscheduler as ds\nexp = ds.load_experiment({str(path)!r})\n"
            "assert len(exp.cases) == 125, exp.cases\nassert 'pandas' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ("dates:\n  start: 2020-01-01\n  end: 2020-01-02\n  frequency: 1M\nruns: []\n",
         ["exp.yaml, line 5:", "frequency '1M'", "months and years"]),
        ("dates:\n  start: 2020-01-01\n  end: 2020-01-02\n  exclude:\n    - 2020-01-03\n"
         "runs: []\n", ["exp.yaml, line 6:", "exclude 2020-01-03T00:00 is not one of the dates"]),
        ("dates:\n  list: [2020-01-01, tomorrow]\nruns: []\n",
         ["line 3:", "'tomorrow' is not a time"]),
        ("dates:\n  start: 2020-01-01\nruns: []\n", ["line 2:", "end is missing"]),
        ("dates:\n  list: [2020-01-01]\n  exclude: [2020-01-01]\nruns: []\n",
         ["dates give no case"]),
        ("dates: {start: 2020-01-01, end: 2030-01-01, frequency: 1s}\nruns: []\n",
         ["at most 1000000"]),
    ],
)
def test_bad_dates_name_their_line(write, body: str, fragments: list[str]) -> None:
    message = _error(write(body))
    for fragment in fragments:
        assert fragment in message, message


def test_errors_name_the_line_of_the_field(write) -> None:
    path = write("defaults:\n  steps: 7\n"
                 "runs:\n"
                 "  - label: a\n    checkpoint: x\n    steps: 0/6/6\n"
                 "  - label: b\n    checkpoint: x\n    stpes: 1\n")
    message = _error(path)
    assert message.startswith(f"{path}: run 1 ('b'): ")
    # steps comes from defaults (line 3), the others from run 1's own lines
    assert "line 3, steps: Input should be a valid string" in message
    assert "line 10, stpes: Extra inputs are not permitted" in message


KINDS_RECIPE = '''
from typing import ClassVar
import pydantic
import dscheduler as ds

class Forecast(ds.RunConfig):
    ENV_FIELDS: ClassVar = ("checkpoint",)
    checkpoint: str
    steps: str = "0/120/6"
    label: str = ""

class Interpolate(ds.RunConfig):
    method: str = "linear"
    points: int = 10
    label: str = ""

class Evaluation(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    truth_seed: int = 7
    scorecards: list[str] = ["rmse"]
    output: str = "scorecards/"

RUN_KINDS = {"forecaster": Forecast, "interpolator": Interpolate}
SETTINGS = Evaluation

def main(experiment):
    return []
'''


@pytest.fixture
def write_kinds(tmp_path: Path):
    (tmp_path / "kinds.py").write_text(KINDS_RECIPE)

    def _write(body: str) -> Path:
        path = tmp_path / "eval.yaml"
        path.write_text("recipe: kinds.py:main\n" + body)
        return path

    return _write


def test_runs_of_several_kinds_and_settings(write_kinds) -> None:
    path = write_kinds(
        "settings: {truth_seed: 11, scorecards: [rmse, bias]}\n"
        "defaults:\n  label: ''\n  forecaster: {steps: 0/24/6}\n  interpolator: {points: 4}\n"
        "runs:\n"
        "  - forecaster: {label: f1, checkpoint: a}\n"
        "  - interpolator: {label: i1, method: cubic}\n"
        "  - forecaster: {label: f2, checkpoint: b, steps: 0/6/6}\n")
    exp = ds.load_experiment(path)
    assert [type(r).__name__ for r in exp.runs] == ["Forecast", "Interpolate", "Forecast"]
    assert exp.kinds == ["forecaster", "interpolator", "forecaster"]
    assert [r.label for r in exp.runs_of("forecaster")] == ["f1", "f2"]
    assert [r.steps for r in exp.runs_of("forecaster")] == ["0/24/6", "0/6/6"]
    assert exp.runs_of("interpolator")[0].points == 4
    assert exp.settings is not None and exp.settings.truth_seed == 11
    assert exp.settings.scorecards == ["rmse", "bias"] and exp.settings.output == "scorecards/"
    assert exp.nodes() == []


def test_model_in_the_file_maps_tags_to_classes(tmp_path: Path) -> None:
    (tmp_path / "kinds.py").write_text(KINDS_RECIPE)
    path = tmp_path / "eval.yaml"
    path.write_text("model: {fc: kinds.py:Forecast, ip: 'kinds.py:Interpolate'}\n"
                    "runs:\n  - fc: {label: f1, checkpoint: a}\n  - ip: {label: i1}\n")
    exp = ds.load_experiment(path)
    assert [type(r).__name__ for r in exp.runs] == ["Forecast", "Interpolate"]
    assert exp.kinds == ["fc", "ip"]


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ("settings:\n  truth_seed: many\nruns: []\n",
         ["eval.yaml: line 3, settings.truth_seed", "valid integer"]),
        ("settings:\n  outptu: x\nruns: []\n", ["line 3, settings.outptu", "Extra inputs"]),
        ("runs:\n  - {label: a, checkpoint: x}\n",
         ["eval.yaml, line 3: run 0: say its kind, one of ['forecaster', 'interpolator']"]),
        ("runs:\n  - forecaster: {label: a, checkpoint: x}\n"
         "  - interpolator:\n      label: b\n      method: 3\n",
         ["run 1 ('b'): line 6, method: Input should be a valid string"]),
        ("defaults: {stpes: 1}\nruns: []\n",
         ["eval.yaml, line 2: defaults: no run kind has a field 'stpes'"]),
    ],
)
def test_bad_kinds_and_settings(write_kinds, body: str, fragments: list[str]) -> None:
    message = _error(write_kinds(body))
    for fragment in fragments:
        assert fragment in message, message


def test_settings_without_a_model_are_refused(write) -> None:
    message = _error(write("settings: {a: 1}\nruns: []\n"))
    assert "exp.yaml, line 2: settings: the recipe declares no SETTINGS model" in message


def test_identical_runs_merge_with_a_note(write) -> None:
    path = write("runs:\n  - {label: a, checkpoint: x}\n  - {label: b, checkpoint: y}\n"
                 "  - {label: a, checkpoint: x}\n")
    with pytest.warns(ds.graph.experiment.ExperimentNote,
                      match=r"line 5: run 2 \('a'\) repeats run 0 \('a'\) \(line 3\) exactly"):
        exp = ds.load_experiment(path)
    assert [r.label for r in exp.runs] == ["a", "b"] and len(exp.notes) == 1


def test_one_label_two_runs_is_an_error_naming_both(write) -> None:
    path = write("runs:\n  - {label: a, checkpoint: x}\n  - {label: b, checkpoint: y}\n"
                 "  - {label: a, checkpoint: x, steps: 0/6/6}\n")
    message = _error(path)
    assert (f"{path}, line 5: run 2 ('a') and run 0 ('a') (line 3) have the label 'a' "
            "but differ in ['steps']") in message


REF_MODEL = '''
from typing import ClassVar
import dscheduler as ds

class Train(ds.RunConfig):
    lr: float
    label: str = ""

class Tune(ds.RunConfig):
    on: Train
    epochs: int = 1
    label: str = ""

RUN_KINDS = {"train": Train, "tune": Tune}

def main(experiment):
    return []
'''


@pytest.fixture
def write_refs(tmp_path: Path):
    (tmp_path / "refs.py").write_text(REF_MODEL)

    def _write(body: str) -> Path:
        path = tmp_path / "refs.yaml"
        path.write_text("recipe: refs.py:main\n" + body)
        return path

    return _write


def test_runs_on_runs_by_label(write_refs) -> None:
    # tune comes first in the file but is built after the run it names
    path = write_refs("runs:\n  - tune: {label: t, on: base}\n"
                      "  - train: {label: base, lr: 0.1}\n  - train: {label: fast, lr: 1.0}\n")
    exp = ds.load_experiment(path)
    tune, base = exp.runs[0], exp.runs[1]
    assert exp.kinds == ["tune", "train", "train"] and tune.on == base


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("runs:\n  - tune: {label: t, on: bsae}\n  - train: {label: base, lr: 1}\n",
         "line 3: run 0 ('t'): on: 'bsae' is not the label of a run in this file; labels "
         "are ['base', 't']"),
        ("runs:\n  - tune: {label: t, on: t}\n", "on: runs t -> t name each other"),
    ],
)
def test_bad_references(write_refs, body: str, fragment: str) -> None:
    assert fragment in _error(write_refs(body))
