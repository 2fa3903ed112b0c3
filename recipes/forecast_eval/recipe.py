"""Evaluate ML forecast checkpoints on Lorenz-96: the main job.

    dscheduler run recipes/forecast_eval/experiment.yaml [--cluster slurm]

The graph, for the runs and init times of ``experiment.yaml``:

``truth``        one reference trajectory (Lorenz-96, RK4), 6-hourly, stored as Zarr
``analysis``     the truth's state at each init time (what a forecast starts from)
``forecast``     per run and init time, inside the run's checkpoint env: the emulator
                 rolled out over the lead times, an ensemble when the config asks
``verify``       per run, in the driver's env: RMSE and bias of the ensemble mean
                 against the truth, per lead time, over all init times
``scorecard``    RMSE against lead time of every run, as a PNG plot and a markdown
                 table in the store (``scorecard.files/``), and the best run

Each checkpoint names its environment (``checkpoints/*.dscheduler-env.json``);
runs that share a checkpoint and its extra requirements share an env, built
once; changing a run's inference ``config`` reruns only its forecasts, its
verification and the scorecard.
"""

from __future__ import annotations

import hashlib
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import dscheduler as ds

if TYPE_CHECKING:
    import numpy as np
    import xarray as xr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import emulators  # noqa: E402
import lorenz96  # noqa: E402

TRUTH_SEED = 7


class Forecast(ds.RunConfig):
    """One evaluated configuration: a checkpoint and how to run it."""

    ENV_FIELDS: ClassVar = ("checkpoint", "extra_requirements")
    HASH_EXCLUDE: ClassVar = ("label", "resources")

    checkpoint: str
    extra_requirements: list[str] = []
    config: dict[str, Any] = {}  # inference: members, perturbation
    steps: str = "0/120/6"  # lead hours: first/last/step
    label: str = ""
    resources: dict[str, float] = {}

    def checkpoint_path(self) -> Path:
        # As written it is part of env_id; a relative one is looked up from the
        # working directory, then beside this recipe, so the experiment runs
        # from anywhere without changing its ids.
        path = Path(self.checkpoint)
        return path if path.is_absolute() or path.exists() else HERE / path

    def env(self) -> ds.Env:
        return ds.Env.from_checkpoint(self.checkpoint_path(),
                                      extra_requirements=self.extra_requirements)

    def lead_hours(self) -> list[int]:
        first, last, step = (int(v) for v in self.steps.split("/"))
        if step % lorenz96.STEP_HOURS or first % lorenz96.STEP_HOURS:
            raise ds.ConfigError(f"steps {self.steps!r}: lead times must be multiples of "
                                 f"{lorenz96.STEP_HOURS} h")
        return list(range(first, last + 1, step))


# -- tasks -----------------------------------------------------------------------------


@ds.task(version="1", env=None)
def truth(start: str, end: str, seed: int) -> xr.Dataset:
    """The reference trajectory from ``start`` to ``end``, every six hours."""
    import numpy as np  # tasks import what they use: planning needs none of it
    import pandas as pd
    import xarray as xr

    times = pd.date_range(start, end, freq=f"{lorenz96.STEP_HOURS}h")
    states = lorenz96.advance(lorenz96.spun_up(seed), len(times) - 1)
    return xr.Dataset({"x": (("time", "k"), states)},
                      coords={"time": times, "k": np.arange(lorenz96.K)},
                      attrs={"system": "Lorenz-96", "F": lorenz96.F, "seed": seed})


@ds.task(version="1", env=None)
def analysis(reference: xr.Dataset, init_time: str) -> list[float]:
    """The state at ``init_time``: plain numbers, so any numpy in an env reads them."""
    import pandas as pd

    return [float(v) for v in reference["x"].sel(time=pd.Timestamp(init_time)).values]


@ds.task(version="1", case="init_time")
def forecast(cfg: Forecast, init_time: str, state: list[float], checkpoint: Path
             ) -> np.ndarray:
    """Roll the checkpoint's emulator out from ``state``: (lead, member, k).

    Runs in the checkpoint's env, with its numpy (and scipy for the stencil).
    Ensemble members start from ``state`` plus Gaussian noise of std
    ``config.perturbation``, seeded by the run and the init time.
    """
    import numpy as np

    weights = emulators.load(checkpoint)
    members = int(cfg.config.get("members", 1))
    spread = float(cfg.config.get("perturbation", 0.0))
    first, last, step = (int(v) for v in cfg.steps.split("/"))
    seed = int(hashlib.sha256(f"{cfg.run_id}/{init_time}".encode()).hexdigest()[:8], 16)
    x = np.asarray(state)[None, :] + np.random.default_rng(seed).normal(
        0.0, spread, (members, len(state))) * (members > 1)
    out = []
    for hour in range(0, last + 1, lorenz96.STEP_HOURS):
        if hour:
            x = emulators.step(weights, x)
        if hour >= first and (hour - first) % step == 0:
            out.append(x)
    return np.stack(out)


@ds.task(version="2", env=None)
def verify(cfg: Forecast, forecasts: list[np.ndarray], reference: xr.Dataset,
           init_times: list[str]) -> xr.Dataset:
    """RMSE and bias of the ensemble mean against the truth, per lead time (the stored
    value: the lead-time curve); tracked as the run's scores, so that
    ``dscheduler runs --sort "metrics.rmse asc"`` ranks the runs as the scorecard does:
    metrics ``rmse`` and ``bias`` (means over lead times), params ``checkpoint`` and
    ``members``."""
    import numpy as np
    import pandas as pd
    import xarray as xr

    leads = cfg.lead_hours()
    errors = []
    for fc, init in zip(forecasts, init_times, strict=True):
        valid = pd.Timestamp(init) + pd.to_timedelta(leads, unit="h")
        observed = reference["x"].sel(time=valid).values  # (lead, k)
        errors.append(np.asarray(fc).mean(axis=1) - observed)
    err = np.stack(errors)  # (init, lead, k)
    scores = xr.Dataset(
        {"rmse": ("lead_hours", np.sqrt((err**2).mean(axis=(0, 2)))),
         "bias": ("lead_hours", err.mean(axis=(0, 2)))},
        coords={"lead_hours": leads}, attrs={"label": cfg.label, "init_times": len(init_times)})
    ds.log_param("checkpoint", cfg.checkpoint)
    ds.log_param("members", int(cfg.config.get("members", 1)))
    ds.log_metric("rmse", float(scores["rmse"].mean()))  # what the scorecard ranks by
    ds.log_metric("bias", float(scores["bias"].mean()))
    return scores


@ds.task(version="1", env=None)
def scorecard(scores: list[xr.Dataset], labels: list[str]) -> dict[str, Any]:
    """The plot and the table of every run's scores; the best run by mean RMSE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = ds.output("dir")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, score in zip(labels, scores, strict=True):
        ax.plot(score["lead_hours"], score["rmse"], marker="o", markersize=3, label=label)
    ax.set_xlabel("lead time (hours)")
    ax.set_ylabel("RMSE of the ensemble mean")
    ax.set_title("Lorenz-96 emulators: RMSE against lead time")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "scorecard.png", dpi=100)
    plt.close(fig)

    mean_rmse = {label: float(s["rmse"].mean()) for label, s in zip(labels, scores, strict=True)}
    leads = [int(h) for h in scores[0]["lead_hours"].values]
    shown = [h for h in (24, 72, 120) if h in leads]
    rows = ["| run | " + " | ".join(f"RMSE {h} h" for h in shown) + " | mean RMSE | bias |",
            "| --- |" + " ---: |" * (len(shown) + 2)]
    for label in sorted(mean_rmse, key=mean_rmse.__getitem__):
        score = scores[labels.index(label)]
        cells = [f"{float(score['rmse'].sel(lead_hours=h)):.3f}" for h in shown]
        rows.append(f"| {label} | " + " | ".join(cells) +
                    f" | {mean_rmse[label]:.3f} | {float(score['bias'].mean()):+.3f} |")
    (out / "scorecard.md").write_text("\n".join(rows) + "\n")
    best = min(mean_rmse, key=mean_rmse.__getitem__)
    return {"best": best, "mean_rmse": mean_rmse, "table": "\n".join(rows)}


# -- the graph ---------------------------------------------------------------------------


def main(experiment: ds.Experiment) -> list[ds.Node]:
    """Nodes for every run and init time of ``experiment``, and the scorecard."""
    if not experiment.cases:
        raise ds.ConfigError(f"{experiment.path}: needs dates (start, end, frequency) for "
                             "the init times")
    configs = [cfg for cfg in experiment.runs if isinstance(cfg, Forecast)]
    last_lead = max(max(cfg.lead_hours()) for cfg in configs)
    # plain datetime: planning a finished graph loads no pandas (a quarter of a second)
    first, last = (datetime.strptime(c, "%Y%m%d%H%M")
                   for c in (experiment.cases[0], experiment.cases[-1]))
    end = last + timedelta(hours=last_lead)
    reference = truth(first.isoformat(), end.isoformat(), TRUTH_SEED)
    states = {case: analysis(reference, case) for case in experiment.cases}
    scores, labels = [], []
    for cfg in configs:
        runs = [forecast.options(resources=cfg.resources or None)(
                    cfg, case, states[case], cfg.checkpoint_path())
                for case in experiment.cases]
        scores.append(verify(cfg, runs, reference, experiment.cases))
        labels.append(cfg.label or cfg.run_id)
    return [*scores, scorecard(scores, labels)]


def report(results: ds.Results) -> str:
    """What `dscheduler run` prints after the summary: the best run, the scorecard."""
    card = next((n for n in results.plan.targets if n.task.name == "scorecard"), None)
    if card is None or results.state(card) not in ("succeeded", "cached"):
        return "scorecard: not made (see the failures above)"
    value = results.value(card)
    where = card.paths(results.store).files
    best = value["best"]
    return (f"best run by mean RMSE: {best} ({value['mean_rmse'][best]:.3f})\n"
            f"scorecard: {where / 'scorecard.png'} and {where / 'scorecard.md'}\n\n"
            f"{value['table']}")
