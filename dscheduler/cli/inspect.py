"""``dscheduler runs|show|compare|explain|rerun``: ask questions of stored runs.

REF names stored records: a run_id (``env_id/config_hash`` or a prefix of 8+
characters), a label, a node name (``task-key16``) or a key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import DSchedulerError, tail
from ..graph.explain import explain_plan, explain_stored
from ..graph.plan import flatten
from ..graph.recipe import load_nodes
from ..run.clusters import close_local, local_running
from ..run.rerun import rerun as rerun_nodes
from ..store import Store
from ..store.catalogue.runs import find, lineage, node_summary, runs_frame
from ..store.record import Record
from .common import (
    ModelOption,
    RecipeOption,
    StoreOption,
    console,
    existing_store,
    exit_on_failures,
    fail,
    say,
)
from .tables import attempts_table, cell, compare_table

RefArgument = Annotated[str, typer.Argument(help="run_id (or 8+ characters of one), label, "
                                                 "node name or key")]


def _log_tail(record: Record, lines: int) -> str:
    last = record.last
    if last.log_tail:
        return str(last.log_tail)
    log = last.log
    if not log:
        return ""
    try:
        return tail(Path(log).read_text(errors="replace"), lines)
    except OSError:
        return ""


def _show_record(path: Path, record: Record, log_lines: int) -> None:
    say(f"{record.name}  [{record.state}]")
    say(f"  record: {path}")
    for name, value in (("task", record.task), ("version", record.version),
                        ("run_id", record.run_id), ("case", record.case),
                        ("label", record.label), ("env_id", record.env_id),
                        ("key", record.key)):
        if value not in (None, ""):
            say(f"  {name}: {value}")
    call = record.call or {}
    if call:
        say(f"  function: {call.get('fn')}  (file {call.get('file')})")
    for group, values in (("config", record.config or {}), ("params", record.params),
                          ("metrics", record.metrics), ("tags", record.tags)):
        if values:
            say(f"  {group}:")
            for k, v in values.items():
                say(f"    {k} = {json.dumps(v)}")
    output = record.output or {}
    outputs = [output.get("path"), output.get("files")]
    if record.artifacts:
        outputs.append(f"{record.task}.artifacts/ "
                       f"({', '.join(a['name'] for a in record.artifacts)})")
    if any(outputs):
        say("  outputs: " + ", ".join(str(path.parent / o) for o in outputs if o))
    console.print(attempts_table(
        [[str(a.attempt), str(a.state), str(a.host), str(a.start), cell(a.seconds),
          str(a.error or "")] for a in record.attempts], console.width))
    text = _log_tail(record, log_lines)
    if text:
        say(f"  log tail:\n{text}")


def show(
    ref: RefArgument,
    store: StoreOption = None,
    upstream: Annotated[bool, typer.Option("--upstream", help="list what it depends on")]
    = False,
    downstream: Annotated[bool, typer.Option("--downstream",
                                             help="list what depends on it")] = False,
    log_lines: Annotated[int, typer.Option(help="lines of the log tail to show")] = 20,
) -> None:
    """Show a run or node: config, state, metrics, attempts, log tail, outputs, lineage."""
    st = existing_store(store)
    try:
        found = find(st, ref)
    except DSchedulerError as err:
        fail(err)
    for path, record in found:
        if upstream or downstream:
            for direction, wanted in (("up", upstream), ("down", downstream)):
                if not wanted:
                    continue
                nodes = lineage(st, str(record.key), direction)
                say(f"{record.name}: {len(nodes)} node(s) {direction}stream")
                for s in nodes:
                    where = s.get("run_id") or ""
                    say(f"  {s.get('name')}  [{s.get('state')}]"
                        f"{'  ' + where if where else ''}"
                        f"{' / ' + s['case'] if s.get('case') else ''}")
            continue
        _show_record(path, record, log_lines)


def compare(
    refs: Annotated[list[str], typer.Argument(help="two or more runs or nodes")],
    store: StoreOption = None,
    all_fields: Annotated[bool, typer.Option("--all", help="show fields that are equal too")]
    = False,
) -> None:
    """Compare runs or nodes side by side: only the fields that differ (unless --all)."""
    if len(refs) < 2:
        fail(DSchedulerError("compare needs two or more runs or nodes"))
    st = existing_store(store)
    rows: list[dict[str, Any]] = []
    try:
        for ref in refs:
            summaries = [node_summary(r, p, st.root) for p, r in find(st, ref)]
            run_ids = {s["run_id"] for s in summaries}
            by = "run" if len(summaries) > 1 and len(run_ids) == 1 and None not in run_ids \
                else "node"
            frame = runs_frame(summaries, by=by)
            if len(frame) != 1:
                fail(DSchedulerError(f"{ref!r} names {len(frame)} runs or nodes; compare "
                                     "names one each"))
            rows.append(frame.iloc[0].to_dict())
    except DSchedulerError as err:
        fail(err)
    table, shown, fields, more = compare_table(refs, rows, all_fields, console.width)
    console.print(table)
    say(f"{shown} of {fields} fields shown" + ("" if all_fields else " (those that differ)"))
    if more:
        say(more)


def _is_recipe(what: str, recipe: str | None, model: str | None) -> bool:
    """Whether ``explain``'s argument is an experiment or recipe file rather than a REF."""
    path = Path(what)
    return bool(recipe or model) or path.is_file() or path.suffix in (".yaml", ".yml", ".py")


def explain(
    what: Annotated[str, typer.Argument(
        metavar="NODE|RUN|PATH", help="a stored run or node (run_id or 8+ characters of "
        "one, label, node name or key), or an experiment YAML or recipe .py")],
    select: Annotated[list[str] | None, typer.Argument(
        help="with a PATH: node names, tasks, labels or run_ids to explain (default: every "
             "node that would run); with a run or node: more runs or nodes")] = None,
    store: StoreOption = None,
    recipe: RecipeOption = None,
    model: ModelOption = None,
    code: Annotated[list[str] | None, typer.Option(
        "--code", help="with a run or node: a Python file or module that defines its task "
        "(and config class), to compare with today's code; repeat for several")] = None,
) -> None:
    """Why nodes would run again: which identity input differs from the stored record.

    A stored run or node is rebuilt from its record with the code you name
    (--code; a record never makes dscheduler import anything), else explained
    from its record alone; a PATH is loaded with today's code and config.
    """
    st = Store(store)
    if not _is_recipe(what, recipe, model):
        try:
            stored = explain_stored([what, *(select or [])], st, code)
        except DSchedulerError as err:
            fail(err)
        for explanation in stored:
            say(explanation.text())
        would = sum(1 for e in stored if e.reason or e.drift)
        say(f"{would} of {len(stored)} node(s) would run or changed code")
        return
    path = Path(what)
    try:
        nodes = flatten([load_nodes(path, recipe, model)])
        every = {n.key: n for root in nodes for n in root.walk()}.values()
        chosen = [n for n in every if not select or any(
            s in (n.name, n.task.name, n.run_id, getattr(n.cfg, "label", None))
            for s in select)]
        if not chosen:
            fail(DSchedulerError(f"no node of {path} matches {select}"))
        found = explain_plan(chosen, st)
    except DSchedulerError as err:
        fail(err)
    for explanation in found:
        say(explanation.text())
    say(f"{len(found)} of {len(chosen)} node(s) would run or changed code")


def rerun(
    ref: RefArgument,
    store: StoreOption = None,
    cluster: Annotated[str, typer.Option("--cluster", "-c", help="local or a scheduler "
                                         "address tcp://host:port")] = "local",
    force: Annotated[bool, typer.Option(
        "--force", help="run today's code even when it is not the recorded call")] = False,
) -> None:
    """Run the recorded calls of a run or node again, into new attempts."""
    st = existing_store(store)
    owned = not local_running()
    try:
        results = rerun_nodes(ref, store=st, cluster=cluster, force=force, progress=False,
                              on_load=lambda file: say(f"rerun: loading your code {file}"))
    except DSchedulerError as err:
        fail(err)
    finally:
        if owned:
            close_local()
    say(repr(results))
    exit_on_failures(results)
