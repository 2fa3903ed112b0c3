"""The ``dscheduler`` command line.

Subcommands live beside the code they drive: ``cli_envs`` (envs list, show,
build, gc) and ``cli_graph`` (run, plan, status); this module holds the app
and the commands about ids.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import DSchedulerError
from .experiment import load_experiment

app = typer.Typer(
    help="Content-hashed run graphs on Dask: envs built once, finished runs never rerun.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()

ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="RunConfig class as module:Class or file.py:Class "
                 "(default: the experiment's 'model:' key)"),
]


def fail(err: Exception) -> typer.Exit:
    """Print a dscheduler error without a traceback; exit code 2."""
    Console(stderr=True).print(
        f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True
    )
    return typer.Exit(2)


@app.command()
def ids(
    experiment: Annotated[Path, typer.Argument(help="experiment YAML file")],
    model: ModelOption = None,
) -> None:
    """Print label, env_id, config_hash and run_id of every run in EXPERIMENT."""
    try:
        exp = load_experiment(experiment, model=model)
    except DSchedulerError as err:
        raise fail(err) from None
    table = Table("label", "env_id", "config_hash", "run_id", box=None)
    for cfg in exp.runs:
        table.add_row(getattr(cfg, "label", "") or "", cfg.env_id, cfg.config_hash, cfg.run_id)
    console.print(table)
    envs = Counter(cfg.env_id for cfg in exp.runs)
    console.print(f"{len(exp.runs)} runs need {len(envs)} distinct envs", highlight=False)


def _register() -> None:
    from . import cli_envs, cli_graph

    app.add_typer(cli_envs.app, name="envs", help="List, show, build and gc environments.")
    cli_graph.register(app)


_register()
