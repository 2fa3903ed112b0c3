"""Runs on runs: a RunConfig field that holds another run (docs/design.md §2, §4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from helpers import run_inline
from pydantic import ValidationError
from typer.testing import CliRunner

import dscheduler as ds
from dscheduler import identity
from dscheduler.cli import app
from dscheduler.graph import experiment
from dscheduler.graph.explain import explain
from dscheduler.graph.runconfig import resolve_run_refs, run_ref_fields

pytestmark = pytest.mark.fast

class Forecast(ds.RunConfig):
    ENV_FIELDS: ClassVar = ("requirements",)
    requirements: list[str] = []
    members: int = 1
    label: str = ""
    resources: dict[str, Any] = {}

    def env(self) -> ds.Env:
        return ds.Env(image="dir", requirements=self.requirements)


class Interp(ds.RunConfig):
    """An interpolator on a forecaster: its env is the forecaster's plus its own."""

    ENV_FIELDS: ClassVar = ("forecaster", "extra_requirements")
    forecaster: Forecast
    extra_requirements: list[str] = []
    method: str = "linear"
    label: str = ""

    def env(self) -> ds.Env:
        base = self.forecaster.env()
        return ds.Env(**{**base.model_dump(),
                         "requirements": [*base.requirements, *self.extra_requirements]})


class Step(ds.RunConfig):
    """One model for every run of an experiment; a run may be on another."""

    on: Step | None = None
    x: int = 0
    label: str = ""


@ds.task(version="1", env=None)
def forecast(cfg: Forecast, case: str) -> list[float]:
    return [float(cfg.members)] * 3


@ds.task(version="1", env=None)
def interpolate(cfg: Interp, case: str, fc: list[float]) -> list[float]:
    return [v / 2 for v in fc]


def nodes(runs: list[ds.RunConfig]) -> list[ds.Node]:
    """A recipe: each interpolator takes its forecaster's node (made again from the
    forecaster's config: one key, so one node with the forecaster's own)."""
    out = [forecast(r, "c0") for r in runs if isinstance(r, Forecast)]
    out += [interpolate(r, "c0", forecast(r.forecaster, "c0")) for r in runs
            if isinstance(r, Interp)]
    return out


def test_identity_includes_the_other_runs_ids() -> None:
    fc = Forecast(requirements=["numpy"], label="fc")
    interp = Interp(forecaster=fc, extra_requirements=["scipy"])
    assert interp.runs_on() == {"forecaster": fc}
    assert run_ref_fields(Interp) == {"forecaster": (Forecast,)}
    # Spelled out: env_id holds the forecaster's env digest only, config_hash its ids.
    tag = {"\u0000config": {"env": fc.env_digest, "run": fc.config_digest}}
    assert interp.env_digest == identity.digest("env.fields", {
        "forecaster": {"\u0000config": {"env": fc.env_digest}},
        "extra_requirements": ["scipy"]})
    assert interp.config_digest == identity.digest("run", {"forecaster": tag,
                                                           "method": "linear"})
    # The forecaster's config moves the interpolator's config_hash, not its env_id ...
    more = Interp(forecaster=fc.model_copy(update={"members": 8}), extra_requirements=["scipy"])
    assert more.env_id == interp.env_id and more.config_hash != interp.config_hash
    # ... its env moves both; its label and resources neither.
    other_env = Interp(forecaster=fc.model_copy(update={"requirements": ["numpy<2"]}),
                       extra_requirements=["scipy"])
    assert other_env.env_id != interp.env_id and other_env.config_hash != interp.config_hash
    renamed = fc.model_copy(update={"label": "x", "resources": {"GPU": 1}})
    assert Interp(forecaster=renamed, extra_requirements=["scipy"]).run_id == interp.run_id


def test_env_is_derived_from_the_other_runs_env() -> None:
    fc = Forecast(requirements=["numpy==1.26.4"])
    interp = Interp(forecaster=fc, extra_requirements=["scipy"])
    env = interp.env()
    assert env.requirements == ("numpy==1.26.4", "scipy")
    assert env.env_id == interp.env_id != fc.env_id  # the env carries the run's env_id


def test_tasks_take_the_other_runs_nodes(tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "data")
    fc = Forecast(members=4, label="fc")
    interp = Interp(forecaster=fc, label="interp")
    made = nodes([fc, interp])
    assert made[1].upstream == (made[0],)  # the forecaster's node, not a second one
    states = run_inline(made, store)
    assert sorted(states.values()) == ["succeeded", "succeeded"]
    assert made[1].paths(store).dir.is_relative_to(store.run(interp.run_id).dir)
    assert store.open_results(made[1]) == {"c0": [2.0, 2.0, 2.0]}
    # A new label on the forecaster: nothing to run; a new member count: both run.
    relabelled = fc.model_copy(update={"label": "renamed"})
    assert not ds.plan(nodes([relabelled, Interp(forecaster=relabelled, label="interp")]),
                       store=store).to_run
    changed = fc.model_copy(update={"members": 2})
    again = nodes([changed, Interp(forecaster=changed, label="interp")])
    assert len(ds.plan(again, store=store).to_run) == 2
    why = explain(again[1], store)
    assert "config.forecaster.members: 4 -> 2" in [str(c) for c in why.changes]
    assert not [c for c in why.changes if "label" in c.field]


def test_labels_resolve_to_runs_listed_before() -> None:
    fc = Forecast(label="fc")
    entry = resolve_run_refs(Interp, {"label": "i", "forecaster": "fc"}, {"fc": fc})
    assert Interp(**entry).forecaster is fc
    with pytest.raises(ds.ConfigError, match=r"forecaster: 'gone' is the label of no run "
                       r"listed before this one; known labels: \['fc'\]"):
        resolve_run_refs(Interp, {"forecaster": "gone"}, {"fc": fc})
    with pytest.raises(ds.ConfigError, match="is a Step; this field takes a Forecast"):
        resolve_run_refs(Interp, {"forecaster": "s"}, {"s": Step()})
    # A self-referencing model (one model: per experiment): Optional is understood.
    assert run_ref_fields(Step) == {"on": (Step,)}
    base = Step(x=1, label="base")
    assert Step(**resolve_run_refs(Step, {"on": "base", "x": 2}, {"base": base})).on is base
    with pytest.raises(ValidationError):
        Interp(forecaster="fc")  # a label means nothing outside an experiment file


def _experiment(tmp_path: Path) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text("runs:\n  - {label: next, x: 2, on: base}\n  - {label: base, x: 1}\n")
    return path


def test_experiment_and_ids_show_the_runs_a_run_is_on(tmp_path: Path) -> None:
    path = _experiment(tmp_path)
    run = {cfg.label: cfg for cfg in experiment.load_experiment(path, model=Step).runs}
    assert run["next"].on is run["base"]
    out = CliRunner().invoke(app, ["ids", str(path), "--model", "test_runs_on_runs:Step"])
    assert out.exit_code == 0, out.output
    rows = [line.split() for line in out.output.splitlines()[:3]]
    assert rows[0] == ["label", "env_id", "config_hash", "run_id", "on"]
    # (the run_id column may be cut to the terminal's width)
    assert rows[1][:3] == ["next", *run["next"].run_id.split("/")] and rows[1][-1] == "on=base"
    assert rows[2][:3] == ["base", *run["base"].run_id.split("/")] and len(rows[2]) == 4
