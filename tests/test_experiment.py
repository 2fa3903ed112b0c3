"""Experiment files and ``dscheduler ids``: validation errors name file, run and field."""

from __future__ import annotations

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
