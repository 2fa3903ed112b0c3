"""The ``dscheduler`` command line: thin commands that parse, call the library, print.

``run``, ``plan``, ``status`` (:mod:`.graph`), ``verify`` (:mod:`.verify`),
``ids`` (:mod:`.ids`), ``envs list|show|build|gc`` (:mod:`.envs`) and
``runs``, ``show``, ``compare``, ``explain``, ``rerun`` (:mod:`.results`) and
``cluster up|down`` (:mod:`.cluster`).
"""

from __future__ import annotations

import typer

from . import cluster, envs, graph, ids, results, verify

app = typer.Typer(
    help="Content-hashed run graphs on Dask: envs built once, finished runs never rerun.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command()(graph.run)
app.command()(graph.plan)
app.command()(graph.status)
app.command()(verify.verify)
app.command()(ids.ids)
app.add_typer(envs.app, name="envs", help="List, show, build and gc environments.")
# results, tracking and queries (docs/design.md §11)
app.command()(results.runs)
app.command()(results.show)
app.command()(results.compare)
app.command()(results.explain)
app.command()(results.rerun)
app.add_typer(cluster.app, name="cluster", help="Start or stop a long-lived SLURM scheduler "
              "for a store.")
