"""``dscheduler runs|show|compare|explain|rerun``: ask questions of stored runs.

REF names stored records: a run_id (``env_id/config_hash`` or a prefix of 8+
characters), a label, a node name (``task-key16``) or a key.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..errors import DSchedulerError, tail
from ..graph.explain import explain_plan, explain_stored
from ..graph.plan import flatten
from ..graph.recipe import load_nodes
from ..run.clusters import close_local, local_running
from ..run.rerun import rerun as rerun_nodes
from ..store import Store
from ..store.runs import find, lineage, node_summary, runs_frame
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

RefArgument = Annotated[str, typer.Argument(help="run_id (or 8+ characters of one), label, "
                                                 "node name or key")]


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _table(frame: Any) -> Table:
    table = Table(*[str(c) for c in frame.columns], box=None)
    for row in frame.itertuples(index=False):
        table.add_row(*[_cell(v) for v in row])
    return table


def runs(
    store: StoreOption = None,
    filter: Annotated[str | None, typer.Option(
        "--filter", "-f", help="e.g. \"metrics.rmse < 1.5 and (params.model = 'linear' or "
        "tags.stage like 'eval%')\"")] = None,
    sort: Annotated[list[str] | None, typer.Option(
        "--sort", help="column [asc|desc]; repeat for more")] = None,
    state: Annotated[list[str] | None, typer.Option(help="only this state; repeatable")] = None,
    by: Annotated[str, typer.Option(help="one row per 'run' or per 'node'")] = "run",
    format: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
    limit: Annotated[int | None, typer.Option(help="at most this many rows")] = None,
) -> None:
    """List runs (or nodes) with their state, params, metrics and tags."""
    if format not in ("table", "csv", "json"):
        fail(DSchedulerError(f"--format {format!r}: use table, csv or json"))
    st = existing_store(store)
    try:
        frame = st.runs(filter=filter, order_by=sort, state=state, by=by)
    except DSchedulerError as err:
        fail(err)
    if limit is not None:
        frame = frame.head(limit)
    if format == "csv":
        print(frame.to_csv(index=False), end="")
    elif format == "json":
        print(frame.to_json(orient="records", indent=1))
    else:
        console.print(_table(frame))
        say(f"{len(frame)} {by}(s)")


def _log_tail(record: dict[str, Any], lines: int) -> str:
    last = (record.get("attempts") or [{}])[-1]
    if last.get("log_tail"):
        return str(last["log_tail"])
    log = last.get("log")
    if not log:
        return ""
    try:
        return tail(Path(log).read_text(errors="replace"), lines)
    except OSError:
        return ""


def _show_record(path: Path, record: dict[str, Any], log_lines: int) -> None:
    say(f"{record.get('name')}  [{record.get('state')}]")
    say(f"  record: {path}")
    for name in ("task", "version", "run_id", "case", "label", "env_id", "key"):
        if record.get(name) not in (None, ""):
            say(f"  {name}: {record[name]}")
    call = record.get("call") or {}
    if call:
        say(f"  function: {call.get('fn')}  (file {call.get('file')})")
    for group in ("config", "params", "metrics", "tags"):
        values = record.get(group) or {}
        if values:
            say(f"  {group}:")
            for k, v in values.items():
                say(f"    {k} = {json.dumps(v)}")
    output = record.get("output") or {}
    outputs = [output.get("path"), output.get("files")]
    if record.get("artifacts"):
        outputs.append(f"{record.get('task')}.artifacts/ "
                       f"({', '.join(a['name'] for a in record['artifacts'])})")
    if any(outputs):
        say("  outputs: " + ", ".join(str(path.parent / o) for o in outputs if o))
    table = Table("attempt", "state", "host", "start", "seconds", "error", box=None)
    for a in record.get("attempts") or []:
        table.add_row(str(a.get("attempt")), str(a.get("state")), str(a.get("host")),
                      str(a.get("start")), _cell(a.get("seconds")),
                      str(a.get("error") or "")[:120])
    console.print(table)
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
                nodes = lineage(st, str(record.get("key")), direction)
                say(f"{record.get('name')}: {len(nodes)} node(s) {direction}stream")
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
    fields = list(dict.fromkeys(k for row in rows for k in row))
    table = Table("field", *refs, box=None)
    shown = 0
    for name in fields:
        cells = [_cell(row.get(name)) for row in rows]
        if all_fields or len(set(cells)) > 1:
            table.add_row(name, *cells)
            shown += 1
    console.print(table)
    say(f"{shown} of {len(fields)} fields shown" + ("" if all_fields else " (those that differ)"))


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
