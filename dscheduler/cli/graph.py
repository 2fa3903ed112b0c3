"""``dscheduler run|plan|status``: run graphs from the command line.

PATH is an experiment YAML (with a ``recipe:``) or a recipe ``.py`` file;
:func:`dscheduler.graph.recipe.load_nodes` says how each becomes nodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import DSchedulerError, StoreError
from ..graph import plan as make_plan
from ..graph.recipe import load_nodes
from ..run import compute
from ..run.clusters import close_local, close_slurm, local_running, slurm_running
from ..run.slurm.ledger import cluster_jobs, reap_orphans
from ..store import Store
from ..store.status import summarize
from .common import ModelOption, RecipeOption, StoreOption, console, errors, fail, say

PathArgument = Annotated[Path, typer.Argument(help="experiment YAML or recipe .py")]


def run(
    path: PathArgument,
    cluster: Annotated[str, typer.Option("--cluster", "-c", help="local (an embedded cluster), "
                                         "slurm (SLURM jobs for this run, settings "
                                         "dscheduler.slurm), store (the cluster `dscheduler "
                                         "cluster up` started for the store) or a scheduler "
                                         "address tcp://host:port")] = "local",
    store: StoreOption = None,
    recipe: RecipeOption = None,
    model: ModelOption = None,
    force: Annotated[bool, typer.Option("--force", help="rerun every node")] = False,
    progress: Annotated[bool | None, typer.Option(
        "--progress/--no-progress",
        help="show a progress bar (default: setting compute.progress, 'auto': "
             "when the output is a terminal)")] = None,
) -> None:
    """Run what PATH describes; finished nodes are skipped, envs built once."""
    owned = not local_running()  # close only a cluster this command starts
    owned_slurm = not slurm_running()
    try:
        nodes = load_nodes(path, recipe, model)
        results = compute(nodes, store=Store(store), cluster=cluster, force=force,
                          progress=progress)
    except DSchedulerError as err:
        fail(err)
    finally:
        if owned:
            close_local()  # before distributed's own exit hooks, which log lost tasks
        if owned_slurm:
            close_slurm()  # cancels every job it submitted
    say(repr(results))
    say(f"store: {results.store.root}")
    try:
        results.raise_for_status()
    except DSchedulerError as err:
        errors.print(str(err), highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(1) from None


def plan(
    path: PathArgument,
    store: StoreOption = None,
    recipe: RecipeOption = None,
    model: ModelOption = None,
    force: Annotated[bool, typer.Option("--force", help="plan as if every node must rerun")]
    = False,
    limit: Annotated[int, typer.Option(help="list at most this many nodes")] = 50,
) -> None:
    """Print what `run` would do and why, without building or running anything."""
    try:
        p = make_plan(load_nodes(path, recipe, model), store=Store(store), force=force)
    except DSchedulerError as err:
        fail(err)
    say(p.explain(limit=limit))


def status(
    store: StoreOption = None,
    failures: Annotated[int, typer.Option(help="show this many recent failures")] = 5,
) -> None:
    """Summarise the store: runs, nodes by state, envs, the last failures, SLURM jobs."""
    st = Store(store)
    if not st.root.is_dir():
        fail(StoreError(f"no store at {st.root}; run something first or pass --store"))
    for info in reap_orphans(st):
        say(f"cancelled SLURM jobs {', '.join(sorted(info.get('jobs') or {})) or 'none'} of "
            f"cluster {info.get('cluster')}, whose owner (pid {info.get('pid')}) is gone")
    summary = summarize(st)
    say(f"store {summary.root}")
    say(f"runs: {summary.runs}; envs built: {summary.envs}")
    table = Table("state", "nodes", box=None)
    for state, n in sorted(summary.states.items()):
        table.add_row(state, str(n))
    console.print(table)
    if summary.damaged:
        say(f"{len(summary.damaged)} damaged record(s), e.g. {summary.damaged[0]}; "
            "`dscheduler verify --repair` demotes them")
    shown = summary.failures[:failures]
    if shown:
        say(f"last {len(shown)} failure(s):")
        for failure in shown:
            say(f"  {failure.name} ({failure.path.parent}): {failure.last_attempt.get('error')}")
    _slurm_jobs(st)


def _slurm_jobs(st: Store) -> None:
    """The store's live SLURM clusters and their jobs, as squeue sees them."""
    for info in cluster_jobs(st):
        say(f"SLURM cluster {info.get('cluster')} ({info.get('kind')}, pid {info.get('pid')} "
            f"on {info.get('host')}, scheduler {info.get('address')}): "
            f"{len(info['queue'])} job(s)")
        table = Table("job", "kind", "state", "node or reason", box=None)
        for job, entry in sorted(info["queue"].items()):
            kind = str((info.get("jobs") or {}).get(job, {}).get("kind", ""))
            state, where = (entry["state"], entry["where"]) if entry else ("gone", "")
            table.add_row(job, kind, state, where)
        if info["queue"]:
            console.print(table)
