"""``dscheduler envs list|show|build|gc``: the store's environments.

The library does the work (:mod:`dscheduler.envs.gc` for inventory and gc,
:func:`dscheduler.graph.recipe.envs_of` for what a target names); this
module parses and prints.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ..envs import Env, build_env, checkpoints
from ..envs.gc import find_env, gc_apply, gc_plan, inventory
from ..errors import DSchedulerError
from ..graph.recipe import envs_of
from ..store import Store
from .common import StoreOption, console, fail, say, show_error, size

app = typer.Typer(no_args_is_help=True, help="List, show, build and gc environments.")


def _ago(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    seconds = max(0.0, time.time() - timestamp)
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


@app.command("list")
def list_envs(
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per env")] = False,
) -> None:
    """List environments: status, size, age, last use and how many runs use each."""
    s = Store(store)
    entries = inventory(s)
    if as_json:
        for e in entries:
            print(json.dumps({
                "env_id": e.env_id, "status": e.status, "kind": (e.record or {}).get("kind"),
                "size": e.size, "image": e.image, "runs": e.runs, "building": e.building,
                "created": (e.record or {}).get("created"), "last_used": e.last_used,
                "checkpoint": _spec(e.record).get("checkpoint"),
            }))
        return
    table = Table(box=None)
    for name in ("env_id", "status", "kind", "python", "requirements", "checkpoint", "size",
                 "age", "last used", "runs"):
        table.add_column(name, no_wrap=name not in ("requirements", "checkpoint"))
    for e in entries:
        spec = _spec(e.record)
        reqs = ", ".join(spec.get("requirements", []))
        table.add_row(
            e.env_id, e.status + (" (building)" if e.building else ""),
            (e.record or {}).get("kind", "-"),
            (e.record or {}).get("python", {}).get("version", "-"),
            escape(reqs if len(reqs) <= 48 else reqs[:45] + "..."),  # "pkg[extra]"
            escape(_origin(spec.get("checkpoint"))),
            size(e.size) if e.record else "-",
            _ago(e.created), _ago(e.last_used), str(e.runs),
        )
    console.print(table)
    say(f"{len(entries)} envs in {s.envs_dir}")


def _spec(record: dict[str, Any] | None) -> dict[str, Any]:
    spec = (record or {}).get("spec")
    return spec if isinstance(spec, dict) else {}


def _origin(source: Any) -> str:
    """Where an env's checkpoint came from: the reference, and what it was pinned to."""
    if not isinstance(source, dict):
        return "-"
    reference, resolved = str(source.get("reference")), str(source.get("resolved"))
    return reference if reference == resolved else f"{reference} -> {resolved}"


@app.command()
def show(
    env_id: Annotated[str, typer.Argument(help="env_id (or a unique prefix)")],
    store: StoreOption = None,
    log: Annotated[bool, typer.Option("--log", help="print the build log")] = False,
) -> None:
    """Show one environment's record (env.json): spec, lock, tools, timings, sizes."""
    s = Store(store)
    try:
        entry = find_env(s, env_id)
    except DSchedulerError as err:
        fail(err)
    if log:
        path = entry.paths.log if entry.record else entry.paths.failed_log
        print(path.read_text() if path.exists() else f"(no {path.name})")
        return
    if entry.record is None:
        say(f"env {entry.env_id}: {entry.status}; "
            f"`dscheduler envs show {entry.env_id} --log` shows why")
        raise typer.Exit(1)
    print(json.dumps({**entry.record, "path": str(entry.dir), "runs": entry.runs,
                      "last_used": entry.last_used}, indent=1, sort_keys=True))


@app.command()
def build(
    target: Annotated[str | None, typer.Argument(
        help="experiment YAML, env spec (.json with ds.Env fields), requirements .txt, "
             "or a checkpoint carrying dscheduler-env.json (a path, an MLflow or Hugging "
             "Face reference)")] = None,
    requirement: Annotated[list[str] | None, typer.Option(
        "--requirement", "-r", help="a requirement (repeatable)")] = None,
    python: Annotated[str | None, typer.Option(help="Python version, e.g. 3.11")] = None,
    image: Annotated[str | None, typer.Option(help="squashfs or dir")] = None,
    find_links: Annotated[list[str] | None, typer.Option("--find-links")] = None,
    index_url: Annotated[str | None, typer.Option("--index-url")] = None,
    extra_index_url: Annotated[list[str] | None, typer.Option("--extra-index-url")] = None,
    offline: Annotated[bool, typer.Option("--offline")] = False,
    model: Annotated[str | None, typer.Option("--model", "-m",
                                              help="RunConfig class for an experiment")] = None,
    store: StoreOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Build environments (each env_id once; published ones are reused)."""
    if not quiet:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("dscheduler.build").setLevel(logging.INFO)
    options = {"python": python, "image": image, "find_links": find_links or [],
               "index_url": index_url, "extra_index_urls": extra_index_url or [],
               "offline": offline or None}
    try:
        envs = _envs(target, requirement or [], options, model)
    except (DSchedulerError, ValueError, OSError) as err:
        fail(err)
    s = Store(store)
    failed = 0
    for env in envs:
        start = time.perf_counter()
        try:
            built = build_env(s, env)
        except DSchedulerError as err:
            failed += 1
            show_error(err)
            continue
        what = "built" if built.built else "reused"
        say(f"{built.env_id} {what} in {time.perf_counter() - start:.2f} s "
            f"({built.kind}: {built.image or built.venv})")
    if failed:
        raise typer.Exit(1)


def _envs(target: str | None, requirements: list[str], options: dict[str, Any],
          model: str | None) -> list[Env]:
    """What ``envs build TARGET`` names: a registry checkpoint's env, else envs_of's."""
    if target is not None and not checkpoints.parse(target).local:
        fields = {k: v for k, v in options.items() if v not in (None, [], ())}
        return [Env.from_checkpoint(target, extra_requirements=requirements, **fields)]
    return envs_of(Path(target) if target is not None else None, requirements, options, model)


@app.command()
def gc(
    store: StoreOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="really delete (default: dry run)")] = False,
) -> None:
    """Remove envs no run record uses, unused images and leftovers (dry run unless --yes)."""
    s = Store(store)
    plan = gc_plan(s)
    verb = "removing" if yes else "would remove"
    for e in plan.envs:
        say(f"{verb} env {e.env_id} ({e.status}, {size(e.size)}, no run records)")
    for p in plan.images:
        say(f"{verb} image {p.name} ({size(p.stat().st_size)}, no env uses it)")
    for p in plan.leftovers:
        say(f"{verb} leftover {p.name} (from an interrupted build)")
    for env_id in plan.kept_building:
        say(f"keeping env {env_id}: its build lease is held")
    if plan.images_held:
        say("keeping all images: a build is running and may reuse one")
    if plan.empty:
        say("nothing to remove")
        return
    if not yes:
        say(f"dry run: about {size(plan.bytes)} would be freed; "
            "run `dscheduler envs gc --yes` to remove")
        return
    removed = gc_apply(s, plan)
    say(f"removed {len(removed)} items")
