"""``dscheduler ids``: the ids of every run in an experiment."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import DSchedulerError
from ..graph import RunConfig, load_experiment
from .common import ModelOption, console, fail, say


def on_runs(cfg: RunConfig) -> str:
    """The runs ``cfg`` is on, as ``field=label`` (its run_id when it has no label)."""
    return ", ".join(f"{name}={getattr(run, 'label', '') or run.run_id}"
                     for name, run in cfg.runs_on().items())


def ids(
    experiment: Annotated[Path, typer.Argument(help="experiment YAML file")],
    model: ModelOption = None,
) -> None:
    """Print label, env_id, config_hash, run_id (and runs it is on) of each run."""
    try:
        exp = load_experiment(experiment, model=model)
    except DSchedulerError as err:
        fail(err)
    table = Table("label", "env_id", "config_hash", "run_id", box=None)
    on = [on_runs(cfg) for cfg in exp.runs]
    if any(on):
        table.add_column("on")
    for cfg, others in zip(exp.runs, on, strict=True):
        table.add_row(escape(getattr(cfg, "label", "") or ""), cfg.env_id, cfg.config_hash,
                      cfg.run_id, *([escape(others)] if any(on) else []))
    console.print(table)
    envs = Counter(cfg.env_id for cfg in exp.runs)
    say(f"{len(exp.runs)} runs need {len(envs)} distinct envs")
