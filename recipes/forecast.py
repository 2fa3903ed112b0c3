"""The example recipe: a toy "forecast" over checkpoints and init times.

::

    dscheduler run recipes/forecast.yaml      # envs built once, runs skipped when done
    dscheduler plan recipes/forecast.yaml     # what would run, and why

Each checkpoint under ``checkpoints/`` carries its environment in a sidecar
``<checkpoint>.dscheduler-env.json`` (Python version and requirements).  The
``forecast`` task runs inside that environment (numpy and xarray installed
there, not taken from the driver) and returns a small xarray Dataset, stored
as Zarr under ``runs/{env_id}/{config_hash}/{init_time}/forecast.zarr``; the
``summary`` task runs in the driver's environment over all forecasts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import dscheduler as ds

HERE = Path(__file__).resolve().parent


class Forecast(ds.RunConfig):
    ENV_FIELDS: ClassVar = ("checkpoint", "extra_requirements")
    HASH_EXCLUDE: ClassVar = ("label", "resources")

    checkpoint: str
    extra_requirements: list[str] = []
    config: dict[str, object] = {}
    steps: str = "0/120/6"
    label: str = ""
    resources: dict[str, object] = {}

    def env(self) -> ds.Env:
        # The checkpoint path is part of env_id as written; a relative one is
        # looked up from the working directory, then beside this recipe, so the
        # experiment runs from anywhere without changing its ids.
        path = Path(self.checkpoint)
        if not path.is_absolute() and not path.exists():
            path = HERE / path
        return ds.Env.from_checkpoint(path, extra_requirements=self.extra_requirements)


@ds.task(version="1")
def forecast(cfg: Forecast, init_time: str) -> Any:
    """A fake forecast: a random walk of 2 m temperature per member and lead step."""
    import hashlib

    import numpy as np
    import xarray as xr

    start, stop, step = (int(x) for x in cfg.steps.split("/"))
    steps = np.arange(start, stop + 1, step)
    members = int(cfg.config.get("members", 1))
    seed = int(hashlib.sha256(f"{cfg.run_id}/{init_time}".encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    t2m = 280.0 + np.cumsum(rng.normal(0.0, 0.5, (members, steps.size)), axis=1)
    return xr.Dataset(
        {"t2m": (("member", "step"), t2m, {"units": "K"})},
        coords={"member": np.arange(members), "step": steps},
        attrs={"init_time": init_time, "checkpoint": cfg.checkpoint, "label": cfg.label},
    )


@ds.task(version="1", env=None)
def summary(forecasts: list[Any], labels: list[str]) -> dict[str, float]:
    """Mean final temperature per run and init time (runs in the driver's environment)."""
    return {
        label: round(float(fc["t2m"].isel(step=-1).mean()), 3)
        for label, fc in zip(labels, forecasts, strict=True)
    }


def main(experiment: ds.Experiment) -> list[ds.Node]:
    """The recipe: one forecast per run and init time, and a summary of them all."""
    nodes = [forecast(cfg, case) for cfg in experiment.runs for case in experiment.cases]
    labels = [f"{n.cfg.label}/{n.case}" for n in nodes if n.cfg is not None]
    return [*nodes, summary(nodes, labels)]
