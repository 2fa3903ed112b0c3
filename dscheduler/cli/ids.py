"""``dscheduler ids``: the ids of every run in an experiment."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import DSchedulerError
from ..graph import load_experiment
from .common import ModelOption, console, fail, say


def ids(
    experiment: Annotated[Path, typer.Argument(help="experiment YAML file")],
    model: ModelOption = None,
) -> None:
    """Print label, env_id, config_hash and run_id of every run in EXPERIMENT."""
    try:
        exp = load_experiment(experiment, model=model)
    except DSchedulerError as err:
        fail(err)
    table = Table("label", "env_id", "config_hash", "run_id", box=None)
    for cfg in exp.runs:
        table.add_row(escape(getattr(cfg, "label", "") or ""), cfg.env_id, cfg.config_hash,
                      cfg.run_id)
    console.print(table)
    envs = Counter(cfg.env_id for cfg in exp.runs)
    say(f"{len(exp.runs)} runs need {len(envs)} distinct envs")
