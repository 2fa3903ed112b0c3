"""``dscheduler run|plan|status``: run graphs from the command line.

PATH is an experiment YAML (with a ``recipe:``) or a recipe ``.py`` file;
:func:`dscheduler.graph.recipe.load_nodes` says how each becomes nodes.
"""

from __future__ import annotations

import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .. import settings
from ..errors import DSchedulerError, tail
from ..graph import plan as make_plan
from ..graph.recipe import load_nodes, load_recipe
from ..run import compute
from ..run.clusters import close_local, close_slurm, local_running, slurm_running
from ..run.slurm.ledger import cluster_jobs, reap_orphans
from ..store import Store
from ..store.catalogue.status import STATES, Summary, summarize
from ..store.index.snapshot import paused_gc
from .common import (
    ModelOption,
    RecipeOption,
    StoreOption,
    console,
    existing_store,
    exit_on_failures,
    fail,
    say,
    show_error,
    size,
)
from .tables import Col, fit_by, render

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
        with paused_gc():  # the recipe makes many objects, all kept: nothing to collect
            described = load_recipe(path, recipe, model)
        results = compute(described.nodes, store=Store(store), cluster=cluster, force=force,
                          progress=progress)
    except DSchedulerError as err:
        fail(err)
    finally:
        if owned:
            close_local()  # before distributed's own exit hooks, which log lost tasks
        if owned_slurm:
            close_slurm()  # cancels every job it submitted
    say(results.summary())
    try:
        report = described.report(results)
    except DSchedulerError as err:
        show_error(err)
        report = None
    if report:
        say("")
        say(report)
    exit_on_failures(results)


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
    failures: Annotated[int | None, typer.Option(
        help="show this many recent failures (default: setting dashboard.failures; "
        "3 with --watch)")] = None,
    watch: Annotated[bool, typer.Option(
        "--watch", "-w", help="keep the summary on screen, read again every --interval "
        "seconds, until Ctrl-C; needs no running scheduler")] = False,
    interval: Annotated[float | None, typer.Option(
        help="seconds between refreshes (default: setting dashboard.refresh)")] = None,
) -> None:
    """Summarise the store: runs, nodes by state per task and label, envs, the last failures,
    the jobs of its SLURM clusters."""
    st = existing_store(store)
    for info in reap_orphans(st):
        say(f"cancelled SLURM jobs {', '.join(sorted(info.get('jobs') or {})) or 'none'} of "
            f"cluster {info.get('cluster')}, whose owner (pid {info.get('pid')}) is gone")
        if info.get("refused"):
            say(f"  not passed to scancel (not a SLURM job id or a dscheduler job name): "
                f"{', '.join(info['refused'])}")
    if not watch:
        console.print(status_view(summarize(st, failures)))
        _slurm_jobs(st)
        return
    every = float(settings.get("dashboard.refresh", interval))
    # A screen holds less than a scroll-back: 3 failures and 5 lines of each log by default.
    shown = 3 if failures is None else failures
    with Live(console=console, auto_refresh=False) as live:
        try:
            while True:
                view = status_view(summarize(st, shown),
                                   f" · {time.strftime('%H:%M:%S')}, every {every:g} s; "
                                   "Ctrl-C stops", tail_lines=5)
                live.update(view, refresh=True)
                time.sleep(every)
        except KeyboardInterrupt:
            pass


def _counts(first: str, rows: dict[str, Counter[str]], columns: list[str],
            width: int) -> Table:
    """Counts by state, one row per task or label, fitted to ``width``: the name, the total
    and the states in use are kept before states no row has (counts left-aligned, so a
    row reads ``square  1          0       1``)."""
    cols = [Col(first, first, [name or "(no run)" for name in rows], "label")]
    cols += [Col(c, c, [str(counts[c]) for counts in rows.values()], "count")
             for c in columns]
    cols.append(Col("total", "total", [str(sum(c.values())) for c in rows.values()], "count"))
    used = [c for c in columns if any(counts[c] for counts in rows.values())]
    kept, _ = fit_by(cols, [first, "total", *used], width)
    return render(kept)


def status_view(summary: Summary, note: str = "", tail_lines: int | None = None,
                width: int | None = None) -> Group:
    """What ``dscheduler status`` prints: the page's store section, as rich renderables.

    ``tail_lines`` shortens each failure's log tail to its last lines; the count tables fit
    ``width`` (default: the terminal's).
    """
    width = width or console.width
    parts: list[Any] = [
        Text(f"store {summary.root}{note}"),
        Text(f"runs: {summary.runs}; envs built: {summary.envs_built}"),
    ]
    totals = Table("state", "nodes", box=None)
    states = summary.states
    for state in STATES:
        if states[state]:
            totals.add_row(state, str(states[state]))
    columns = summary.columns()
    parts += [totals, Text("\nnodes by task:"),
              _counts("task", summary.by_task(), columns, width),
              Text("\nnodes by run label:"), _counts("label", summary.by_label(), columns, width)]
    if summary.envs:
        parts.append(Text("\nenvironments:"))
        envs = Table("env_id", "state", "kind", "build time", "size", box=None)
        for e in summary.envs:
            envs.add_row(e.env_id, e.state, e.kind or "-",
                         "-" if e.build_seconds is None else f"{e.build_seconds:.1f} s",
                         "-" if e.size_bytes is None else size(e.size_bytes))
        parts.append(envs)
    if summary.damaged:
        parts.append(Text(f"{len(summary.damaged)} damaged record(s), e.g. "
                          f"{summary.damaged[0]}; `dscheduler verify --repair` demotes them"))
    if summary.failures:
        parts.append(Text(f"\nlast {len(summary.failures)} failure(s):"))
        for f in summary.failures:
            parts.append(Text(f"  {f.name}{f' ({f.label})' if f.label else ''} at "
                              f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(f.time))}: "
                              f"{f.error}\n    {f.where}"))
            if f.log_tail:
                log = tail(f.log_tail, tail_lines) if tail_lines else f.log_tail
                parts.append(Text(textwrap.indent(log, "    | "), style="dim"))
    return Group(*parts)


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
