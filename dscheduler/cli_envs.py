"""``dscheduler envs list|show|build|gc``: the store's environments.

``gc`` removes envs that no run record (``runs/{env_id}/*/run.json``) names,
images that no remaining env uses, and temporary leftovers of killed
builders.  It is a dry run unless ``--yes`` is given; an env whose build
lease is held is never touched (gc takes that lease itself while deleting),
and no image is removed while any build is running (it may be about to
reuse one).  Removal renames first, then deletes: readers see an env either
whole or gone.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import atomic
from .build import build_env
from .builtenv import FAILED_LOG, LAST_USED
from .env import Env
from .errors import ConfigError, DSchedulerError
from .lease import is_stale, read_lease
from .store import Store

app = typer.Typer(no_args_is_help=True)
console = Console()

StoreOption = Annotated[
    Path | None, typer.Option("--store", help="store root (default: the setting 'store')")
]


def _fail(err: Exception) -> typer.Exit:
    # escape: messages quote values such as "[dstest]" that rich would take as markup
    Console(stderr=True).print(f"[bold red]error:[/] {escape(str(err))}", highlight=False,
                               soft_wrap=True)
    return typer.Exit(2)


# -- what is in the store --------------------------------------------------------------


@dataclass
class EnvEntry:
    env_id: str
    dir: Path
    record: dict[str, Any] | None
    runs: int
    building: bool
    last_used: float | None
    status: str = field(init=False)

    def __post_init__(self) -> None:
        if self.record is not None:
            self.status = "published"
        elif (self.dir / FAILED_LOG).exists():
            self.status = "failed"
        else:
            self.status = "incomplete"

    @property
    def size(self) -> int:
        sizes = (self.record or {}).get("sizes", {})
        if (self.record or {}).get("kind") == "squashfs":
            return int(sizes.get("image_bytes", 0))
        return int(sizes.get("venv_bytes", 0))

    @property
    def image(self) -> str | None:
        return (self.record or {}).get("image")


def lease_held(store: Store, env_id: str) -> bool:
    info = read_lease(store.locks_dir / f"env-{env_id}.lease")
    return info is not None and not is_stale(info)


def run_counts(store: Store) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in store.runs_dir.glob("*/*/run.json"):
        env_id = record.parent.parent.name
        counts[env_id] = counts.get(env_id, 0) + 1
    return counts


def inventory(store: Store) -> list[EnvEntry]:
    """Every env directory of the store (temporary names left out), by env_id."""
    counts = run_counts(store)
    entries = []
    for d in sorted(store.envs_dir.iterdir()) if store.envs_dir.is_dir() else []:
        if d.name.startswith(".") or not d.is_dir():
            continue
        try:
            record = atomic.read_json(d / "env.json")
        except ValueError:
            record = None
        try:
            last_used: float | None = (d / LAST_USED).stat().st_mtime
        except OSError:
            last_used = None
        entries.append(EnvEntry(d.name, d, record, counts.get(d.name, 0),
                                lease_held(store, d.name), last_used))
    return entries


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _ago(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    seconds = max(0.0, time.time() - timestamp)
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _created(record: dict[str, Any] | None) -> float | None:
    if not record or "created" not in record:
        return None
    return dt.datetime.fromisoformat(record["created"]).timestamp()


def find_env(store: Store, env_id: str) -> EnvEntry:
    """The env with this id or unique id prefix; ConfigError listing candidates otherwise."""
    entries = inventory(store)
    matches = [e for e in entries if e.env_id == env_id] or [
        e for e in entries if e.env_id.startswith(env_id)
    ]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ConfigError(
            f"no env {env_id!r} in {store.envs_dir}; `dscheduler envs list` shows the env_ids"
        )
    raise ConfigError(
        f"{env_id!r} matches {len(matches)} envs ({', '.join(e.env_id for e in matches)}); "
        "give more characters"
    )


# -- commands ---------------------------------------------------------------------------


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
            }))
        return
    table = Table(box=None)
    for name in ("env_id", "status", "kind", "python", "requirements", "size", "age",
                 "last used", "runs"):
        table.add_column(name, no_wrap=name != "requirements")
    for e in entries:
        spec = (e.record or {}).get("spec", {})
        reqs = ", ".join(spec.get("requirements", []))
        table.add_row(
            e.env_id, e.status + (" (building)" if e.building else ""),
            (e.record or {}).get("kind", "-"),
            (e.record or {}).get("python", {}).get("version", "-"),
            escape(reqs if len(reqs) <= 48 else reqs[:45] + "..."),  # "pkg[extra]"
            _size(e.size) if e.record else "-",
            _ago(_created(e.record)), _ago(e.last_used), str(e.runs),
        )
    console.print(table)
    console.print(f"{len(entries)} envs in {s.envs_dir}", highlight=False)


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
        raise _fail(err) from None
    if log:
        path = entry.dir / ("build.log" if entry.record else FAILED_LOG)
        print(path.read_text() if path.exists() else f"(no {path.name})")
        return
    if entry.record is None:
        console.print(f"env {entry.env_id}: {entry.status}; "
                      f"`dscheduler envs show {entry.env_id} --log` shows why", highlight=False)
        raise typer.Exit(1)
    print(json.dumps({**entry.record, "path": str(entry.dir), "runs": entry.runs,
                      "last_used": entry.last_used}, indent=1, sort_keys=True))


def _read_requirements(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def envs_to_build(
    target: Path | None, requirements: list[str], options: dict[str, Any], model: str | None
) -> list[Env]:
    """The envs named by an experiment, an Env JSON, a requirements file or a checkpoint."""
    fields = {k: v for k, v in options.items() if v not in (None, [], ())}
    if target is None:
        if not requirements:
            raise ConfigError("give an experiment YAML, an env spec file or -r REQUIREMENT")
        return [Env(requirements=tuple(requirements), **fields)]
    if not target.exists():
        raise ConfigError(f"{target} does not exist")
    suffix = target.suffix.lower()
    if suffix in (".yaml", ".yml"):
        from .experiment import load_experiment

        content = sorted(set(fields) - {"image"}) + (["-r"] if requirements else [])
        if content:
            raise ConfigError(
                f"{target} names its envs through its RunConfig's env(); options "
                f"{content} would change them without changing their env_id. "
                "Only --image may be given with an experiment."
            )
        exp = load_experiment(target, model=model)
        envs: dict[str, Env] = {}
        for cfg in exp.runs:
            if cfg.env_id not in envs:
                env = cfg.env()  # carries cfg.env_id (RunConfig wraps env())
                envs[cfg.env_id] = env.model_copy(update=fields) if fields else env
        return list(envs.values())
    if suffix == ".json":
        spec = json.loads(target.read_text())
        spec["requirements"] = [*spec.get("requirements", []), *requirements]
        return [Env(**{**spec, **fields})]
    if suffix == ".txt":
        return [Env(requirements=(*_read_requirements(target), *requirements), **fields)]
    return [Env.from_checkpoint(target, extra_requirements=requirements, **fields)]


@app.command()
def build(
    target: Annotated[Path | None, typer.Argument(
        help="experiment YAML, env spec (.json with ds.Env fields), requirements .txt, "
             "or a checkpoint carrying dscheduler-env.json")] = None,
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
        envs = envs_to_build(target, requirement or [], options, model)
    except (DSchedulerError, ValueError, OSError) as err:
        raise _fail(err) from None
    s = Store(store)
    failed = 0
    for env in envs:
        start = time.perf_counter()
        try:
            built = build_env(s, env)
        except DSchedulerError as err:
            failed += 1
            Console(stderr=True).print(f"[bold red]error:[/] {escape(str(err))}",
                                       highlight=False, soft_wrap=True)
            continue
        what = "built" if built.built else "reused"
        console.print(f"{built.env_id} {what} in {time.perf_counter() - start:.2f} s "
                      f"({built.kind}: {built.image or built.venv})", highlight=False,
                      soft_wrap=True)
    if failed:
        raise typer.Exit(1)


# -- gc ---------------------------------------------------------------------------------


@dataclass
class GcPlan:
    envs: list[EnvEntry]
    images: list[Path]
    leftovers: list[Path]
    kept_building: list[str]
    images_held: bool  # a build is running: no image is removed this time

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self.envs if e.image is None) + sum(
            p.stat().st_size for p in self.images if p.exists()
        )


def gc_plan(store: Store) -> GcPlan:
    """What gc would remove now."""
    entries = inventory(store)
    doomed = [e for e in entries if e.runs == 0 and not e.building]
    building = [e.env_id for e in entries if e.runs == 0 and e.building]
    gone = {e.env_id for e in doomed}
    used = {e.image for e in entries if e.env_id not in gone and e.image}
    any_build = any(lease_held(store, p.name.removeprefix("env-").removesuffix(".lease"))
                    for p in store.locks_dir.glob("env-*.lease"))
    images = [] if any_build else [
        p for p in sorted(store.images_dir.glob("*.sqsh"))
        if p.relative_to(store.root).as_posix() not in used
    ]
    leftovers = [
        p for p in sorted(store.envs_dir.glob(".*"))
        if not lease_held(store, p.name.split(".")[1])
    ]
    if not any_build:  # temporary names of sidecars and deletions in images/
        leftovers += sorted(store.images_dir.glob(".*"))
    return GcPlan(doomed, images, leftovers, building, any_build)


def _remove(path: Path) -> None:
    aside = atomic.temp_sibling(path, ".deleting")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def gc_apply(store: Store, plan: GcPlan) -> list[str]:
    """Remove what ``plan`` names; returns what was removed."""
    removed = []
    for entry in plan.envs:
        lease = store.lease(f"env-{entry.env_id}")
        if not lease.try_acquire():
            continue  # a build started since the plan was made
        try:
            if run_counts(store).get(entry.env_id):
                continue  # a run started using it meanwhile
            _remove(entry.dir)
            removed.append(f"env {entry.env_id}")
        finally:
            lease.release()
    # Envs skipped above still use their images: decide on images again, now.
    still_unused = set(gc_plan(store).images)
    for image in (i for i in plan.images if i in still_unused):
        _remove(image)
        _remove(image.with_suffix(".json"))
        removed.append(f"image {image.name}")
    for leftover in plan.leftovers:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(f"leftover {leftover.name}")
    return removed


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
        console.print(f"{verb} env {e.env_id} ({e.status}, {_size(e.size)}, no run records)",
                      highlight=False)
    for p in plan.images:
        console.print(f"{verb} image {p.name} ({_size(p.stat().st_size)}, no env uses it)",
                      highlight=False)
    for p in plan.leftovers:
        console.print(f"{verb} leftover {p.name} (from an interrupted build)", highlight=False)
    for env_id in plan.kept_building:
        console.print(f"keeping env {env_id}: its build lease is held", highlight=False)
    if plan.images_held:
        console.print("keeping all images: a build is running and may reuse one",
                      highlight=False)
    if not (plan.envs or plan.images or plan.leftovers):
        console.print("nothing to remove", highlight=False)
        return
    if not yes:
        console.print(f"dry run: about {_size(plan.bytes)} would be freed; "
                      "run `dscheduler envs gc --yes` to remove", highlight=False)
        return
    removed = gc_apply(s, plan)
    console.print(f"removed {len(removed)} items", highlight=False)
