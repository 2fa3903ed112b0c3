"""Evaluate weather-model checkpoints from an MLflow registry, with a run on a run.

    .venv/bin/python recipes/multi_model/make_registry.py
    .venv/bin/dscheduler run recipes/multi_model/experiment.yaml
    DASK_CONFIG=recipes/multi_model/dask .venv/bin/dscheduler run ... --cluster slurm

Run kinds (``RUN_KINDS``): a ``forecaster`` is a registered model version
(``models:/NAME/VERSION``) and its inference config file; an ``interpolator`` is a
run on a forecaster (its ``forecaster:`` field names it by label) that fills in
the lead times between the forecaster's steps.  The graph, per init time:

``truth``            a travelling two-wave field on a small periodic grid, 6-hourly
``analysis``         the truth at each init time (what a forecast starts from)
``fetch_checkpoint`` per model version, in the driver's env: its local copy in the store
``forecast``         per forecaster and init time, in the model's env (its metadata)
``interpolate``      per interpolator and init time, on the forecaster's forecasts,
                     in the forecaster's env
``verify``           per run: RMSE and bias against the truth (tracked: metrics, params)
``scorecard``        every run's mean RMSE, best first

The registry is ``MLFLOW_TRACKING_URI``, by default the SQLite one make_registry.py
makes beside this file (no server).  Ids hold the reference, not the registry's URI.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

import dscheduler as ds

if TYPE_CHECKING:
    import numpy as np
    import xarray as xr

HERE = Path(__file__).resolve().parent
# The registry: set before any worker starts, so that env builds (which fetch the
# checkpoints) see the same one as planning does.
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{HERE / 'registry' / 'mlflow.db'}")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

TRUTH_STEP_HOURS = 6
SPEEDS = (0.25, 0.4)  # grid points per hour of the truth's two waves
MEAN = 1.0  # the field's mean: a model that damps its state drifts below it


class Evaluation(BaseModel):
    """The experiment's ``settings:``: the truth's grid."""

    nx: int = 32
    ny: int = 16


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    found = yaml.safe_load(path.read_text()) or {}
    if not isinstance(found, dict):
        raise ds.ConfigError(f"{path}: an inference config is a mapping, got {found!r}")
    return found


class Forecast(ds.RunConfig):
    """A forecaster: a registered model version and its inference config file."""

    ENV_FIELDS: ClassVar = ("checkpoint",)
    HASH_EXCLUDE: ClassVar = ("label", "resources")

    checkpoint: str  # models:/NAME/VERSION (pinned: no registry call to plan)
    inference: ds.File  # YAML: lead_hours, step_hours
    label: str = ""
    resources: dict[str, str | float] = {}

    def env(self) -> ds.Env:
        return ds.Env.from_checkpoint(self.checkpoint)

    def settings(self) -> dict[str, int]:
        cfg = read_yaml(self.inference)
        lead, step = int(cfg.get("lead_hours", 48)), int(cfg.get("step_hours", 12))
        if step <= 0 or lead % step or step % TRUTH_STEP_HOURS:
            raise ds.ConfigError(f"{self.inference}: lead_hours {lead} must be a multiple of "
                                 f"step_hours {step}, itself a multiple of {TRUTH_STEP_HOURS}")
        return {"lead_hours": lead, "step_hours": step}

    def lead_hours(self) -> list[int]:
        s = self.settings()
        return list(range(0, s["lead_hours"] + 1, s["step_hours"]))


class Interpolate(ds.RunConfig):
    """An interpolator on a forecaster: its forecasts, at finer lead times."""

    ENV_FIELDS: ClassVar = ("forecaster",)  # runs in its forecaster's env
    HASH_EXCLUDE: ClassVar = ("label", "resources")

    forecaster: Forecast  # the run it is on: its ids count, its label does not
    inference: ds.File  # YAML: step_hours, method (linear or cubic)
    label: str = ""
    resources: dict[str, str | float] = {}

    def env(self) -> ds.Env:
        return self.forecaster.env()

    def settings(self) -> dict[str, Any]:
        cfg = read_yaml(self.inference)
        step, method = int(cfg.get("step_hours", 6)), str(cfg.get("method", "linear"))
        if method not in ("linear", "cubic") or step <= 0 or step % TRUTH_STEP_HOURS:
            raise ds.ConfigError(f"{self.inference}: method must be linear or cubic (got "
                                 f"{method!r}), step_hours a multiple of {TRUTH_STEP_HOURS}")
        return {"step_hours": step, "method": method}

    def lead_hours(self) -> list[int]:
        last = self.forecaster.lead_hours()[-1]
        return list(range(0, last + 1, self.settings()["step_hours"]))


RUN_KINDS = {"forecaster": Forecast, "interpolator": Interpolate}
SETTINGS = Evaluation


# -- tasks -----------------------------------------------------------------------------


@ds.task(version="1", env=None)
def truth(start: str, hours: int, nx: int, ny: int) -> xr.Dataset:
    """The field from ``start`` for ``hours``, every six hours: two waves travelling east
    at different speeds, so that a model with one speed drifts away from it."""
    import numpy as np
    import pandas as pd
    import xarray as xr

    times = pd.date_range(start, periods=hours // TRUTH_STEP_HOURS + 1,
                          freq=f"{TRUTH_STEP_HOURS}h")
    t = np.arange(len(times))[:, None, None] * TRUTH_STEP_HOURS
    x = np.arange(nx)[None, None, :]
    y = np.linspace(0, np.pi, ny)[None, :, None]
    field = (MEAN + np.sin(2 * np.pi * (x - SPEEDS[0] * t) / nx) * np.sin(y)
             + 0.5 * np.sin(4 * np.pi * (x - SPEEDS[1] * t) / nx) * np.sin(2 * y))
    return xr.Dataset({"u": (("time", "y", "x"), field)},
                      coords={"time": times, "y": np.arange(ny), "x": np.arange(nx)})


@ds.task(version="1", env=None)
def analysis(reference: xr.Dataset, init_time: str) -> list[list[float]]:
    """The field at ``init_time``: plain numbers, so any numpy in an env reads them."""
    import pandas as pd

    return reference["u"].sel(time=pd.Timestamp(init_time)).values.tolist()  # type: ignore[no-any-return]


@ds.task(version="1", env=None)
def fetch_checkpoint(reference: str) -> str:
    """The local copy of a registry checkpoint (fetched into the store once; the env
    build has usually fetched it already): what the model's env reads its weights from."""
    return str(ds.checkpoint(reference))  # into the store this task writes to


@ds.task(version="1", case="init_time")
def forecast(cfg: Forecast, init_time: str, state: list[list[float]], weights: str,
             settings: dict[str, int]) -> np.ndarray:
    """Roll the model out from ``state``: (lead, y, x).  Runs in the checkpoint's env:
    the field is shifted east by the learnt speed (spectrally) and damped."""
    import numpy as np

    with np.load(f"{weights}/weights.npz") as w:
        speed, damping = float(w["speed"]), float(w["damping"])
    u0 = np.asarray(state)
    k = np.fft.fftfreq(u0.shape[-1])  # cycles per grid point
    spectrum = np.fft.fft(u0, axis=-1)
    out = []
    for hour in range(0, settings["lead_hours"] + 1, settings["step_hours"]):
        shifted = np.fft.ifft(spectrum * np.exp(-2j * np.pi * k * speed * hour), axis=-1).real
        out.append(shifted * np.exp(-damping * hour))
    return np.stack(out)


@ds.task(version="1", case="init_time")
def interpolate(cfg: Interpolate, init_time: str, coarse: np.ndarray,
                settings: dict[str, Any], coarse_hours: list[int]) -> np.ndarray:
    """The forecaster's fields at every ``step_hours``, interpolated in time (linear, or
    cubic Hermite with finite-difference slopes): (lead, y, x)."""
    import numpy as np

    coarse = np.asarray(coarse)
    hours = np.asarray(coarse_hours, dtype=float)
    fine = np.arange(0, hours[-1] + 1, settings["step_hours"], dtype=float)
    i = np.clip(np.searchsorted(hours, fine, side="right") - 1, 0, len(hours) - 2)
    h = hours[i + 1] - hours[i]
    s = ((fine - hours[i]) / h)[:, None, None]
    a, b = coarse[i], coarse[i + 1]
    if settings["method"] == "linear":
        return (1 - s) * a + s * b  # type: ignore[no-any-return]
    slope = np.gradient(coarse, hours, axis=0)
    ma, mb = slope[i] * h[:, None, None], slope[i + 1] * h[:, None, None]
    return ((2 * s**3 - 3 * s**2 + 1) * a + (s**3 - 2 * s**2 + s) * ma  # type: ignore[no-any-return]
            + (-2 * s**3 + 3 * s**2) * b + (s**3 - s**2) * mb)


@ds.task(version="1", env=None)
def verify(cfg: Forecast | Interpolate, fields: list[np.ndarray], reference: xr.Dataset,
           init_times: list[str], leads: list[int]) -> xr.Dataset:
    """RMSE and bias against the truth per lead time; tracked as the run's scores, so that
    ``dscheduler runs --sort "metrics.rmse asc"`` ranks the runs: metrics ``rmse`` and
    ``bias`` (means over lead times), params ``kind``, ``checkpoint``, ``config``."""
    import numpy as np
    import pandas as pd
    import xarray as xr

    errors = []
    for fc, init in zip(fields, init_times, strict=True):
        valid = pd.Timestamp(init) + pd.to_timedelta(leads, unit="h")
        errors.append(np.asarray(fc) - reference["u"].sel(time=valid).values)
    err = np.stack(errors)  # (init, lead, y, x)
    scores = xr.Dataset({"rmse": ("lead_hours", np.sqrt((err**2).mean(axis=(0, 2, 3)))),
                         "bias": ("lead_hours", err.mean(axis=(0, 2, 3)))},
                        coords={"lead_hours": leads}, attrs={"label": cfg.label})
    model = cfg.forecaster if isinstance(cfg, Interpolate) else cfg
    ds.log_param("kind", type(cfg).__name__.lower())
    ds.log_param("checkpoint", model.checkpoint)
    ds.log_param("config", Path(cfg.inference).name)
    ds.log_metric("rmse", float(scores["rmse"].mean()))
    ds.log_metric("bias", float(scores["bias"].mean()))
    return scores


@ds.task(version="1", env=None)
def scorecard(scores: list[xr.Dataset], labels: list[str]) -> dict[str, Any]:
    """Every run's mean RMSE and bias, best first, as a markdown table."""
    mean = {label: (float(s["rmse"].mean()), float(s["bias"].mean()))
            for label, s in zip(labels, scores, strict=True)}
    ranked = sorted(mean, key=lambda label: mean[label][0])
    rows = ["| run | mean RMSE | bias |", "| --- | ---: | ---: |"]
    rows += [f"| {label} | {mean[label][0]:.4f} | {mean[label][1]:+.4f} |" for label in ranked]
    return {"ranked": ranked, "table": "\n".join(rows)}


# -- the graph ---------------------------------------------------------------------------


def main(experiment: ds.Experiment) -> list[ds.Node]:
    """Nodes for every run and init time of ``experiment``, and the scorecard."""
    if not experiment.cases:
        raise ds.ConfigError(f"{experiment.path}: needs dates: the init times")
    grid = experiment.settings if isinstance(experiment.settings, Evaluation) else Evaluation()
    forecasters = [c for c in experiment.runs_of("forecaster") if isinstance(c, Forecast)]
    interpolators = [c for c in experiment.runs_of("interpolator")
                     if isinstance(c, Interpolate)]
    cases = experiment.cases
    c = cases[0]  # plain text: planning a finished graph loads no pandas
    first = f"{c[:4]}-{c[4:6]}-{c[6:8]}T{c[8:10]}:{c[10:12]}"
    span = _hours_between(cases[0], cases[-1]) + max(
        c.lead_hours()[-1] for c in [*forecasters, *(i.forecaster for i in interpolators)])
    reference = truth(first, span, grid.nx, grid.ny)
    states = {case: analysis(reference, case) for case in cases}

    def forecasts(cfg: Forecast) -> list[ds.Node]:
        # The same nodes (same keys) whether made for the forecaster or for a run on it.
        weights = fetch_checkpoint(cfg.checkpoint)
        task = forecast.options(resources=cfg.resources or None)
        return [task(cfg, case, states[case], weights, cfg.settings()) for case in cases]

    scores, labels = [], []
    for cfg in forecasters:
        scores.append(verify(cfg, forecasts(cfg), reference, cases, cfg.lead_hours()))
        labels.append(cfg.label or cfg.run_id)
    for icfg in interpolators:
        task = interpolate.options(resources=icfg.resources or None)
        fine = [task(icfg, case, fc, icfg.settings(), icfg.forecaster.lead_hours())
                for case, fc in zip(cases, forecasts(icfg.forecaster), strict=True)]
        scores.append(verify(icfg, fine, reference, cases, icfg.lead_hours()))
        labels.append(icfg.label or icfg.run_id)
    return [*scores, scorecard(scores, labels)]


def _hours_between(a: str, b: str) -> int:
    from datetime import datetime

    fmt = "%Y%m%d%H%M"
    return int((datetime.strptime(b, fmt) - datetime.strptime(a, fmt)).total_seconds() // 3600)


def report(results: ds.Results) -> str:
    """What `dscheduler run` prints after the summary: the runs, best first."""
    card = next((n for n in results.plan.targets if n.task.name == "scorecard"), None)
    if card is None or results.state(card) not in ("succeeded", "cached"):
        return "scorecard: not made (see the failures above)"
    value = results.value(card)
    return f"best run by mean RMSE: {value['ranked'][0]}\n\n{value['table']}"
