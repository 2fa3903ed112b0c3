"""The example recipe: a toy "forecast" over checkpoints and init times."""

from __future__ import annotations

from typing import ClassVar

import dscheduler as ds


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
        return ds.Env.from_checkpoint(self.checkpoint, extra_requirements=self.extra_requirements)
