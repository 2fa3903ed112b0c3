"""``dscheduler run|plan|status``: run graphs from the command line.

PATH is either

* an experiment YAML: its runs are loaded (``ds.load_experiment``) and its
  recipe, ``recipe: file.py:function`` in the file or ``--recipe``, turns the
  Experiment into nodes: ``function(experiment) -> nodes``; or
* a Python recipe file exposing a function that takes no argument and returns
  nodes: ``--recipe NAME`` or ``PATH.py:NAME``, default ``main`` then ``nodes``.

``status`` reads the store without parsing finished records: a node whose
``.done`` link exists is succeeded; only the others' records are read.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from . import atomic
from .errors import ConfigError, DSchedulerError, StoreError
from .experiment import import_object, load_experiment
from .store import Store

console = Console()

StoreOption = Annotated[
    str | None, typer.Option("--store", "-s", help="store root (default: setting 'store', data/)")
]
RecipeOption = Annotated[
    str | None,
    typer.Option("--recipe", "-r", help="file.py:function (or NAME in a .py PATH) that "
                 "returns the nodes"),
]
ModelOption = Annotated[
    str | None, typer.Option("--model", "-m", help="RunConfig class as module:Class or "
                             "file.py:Class (default: the experiment's 'model:')"),
]


def _load_file_function(path: Path, name: str) -> Any:
    """``name`` from the Python file ``path``, reusing the module if already loaded.

    An experiment's ``model:`` and ``recipe:`` often name the same file; loading
    it twice would make two copies of its RunConfig class.
    """
    resolved = path.resolve()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve() == resolved and hasattr(module, name):
            return getattr(module, name)
    return import_object(f"{path}:{name}")


def _split(spec: str) -> tuple[Path, str | None]:
    file, sep, name = spec.rpartition(":") if spec.count(":") == 1 else (spec, "", "")
    if not sep:
        return Path(spec), None
    return Path(file), name


def load_nodes(path: Path, recipe: str | None = None, model: str | None = None) -> Any:
    """The nodes that PATH (an experiment YAML or a recipe .py) describes."""
    if path.suffix in (".yaml", ".yml"):
        exp = load_experiment(path, model=model)
        spec = recipe or exp.raw.get("recipe")
        if not spec:
            raise ConfigError(
                f"{path}: no recipe says how runs become tasks: add 'recipe: file.py:main' to "
                "the file or pass --recipe file.py:main (main(experiment) returns nodes)"
            )
        file, name = _split(str(spec))
        if file.suffix == ".py":
            if not file.is_absolute() and (path.parent / file).exists():
                file = path.parent / file
            fn = _load_file_function(file, name or "main")
        else:
            fn = import_object(str(spec), base=path.parent)
        return fn(exp)
    file, name = _split(str(path))
    if file.suffix != ".py":
        raise ConfigError(f"{path}: expected an experiment .yaml or a recipe .py file")
    name = name or recipe
    if not file.exists():
        raise ConfigError(f"{file}: no such file")
    if name is None:
        for candidate in ("main", "nodes"):
            try:
                fn = _load_file_function(file, candidate)
                break
            except ConfigError:
                continue
        else:
            raise ConfigError(f"{file} has neither main() nor nodes(); name one with --recipe")
    else:
        fn = _load_file_function(file, name)
    return fn()


def _fail(err: Exception) -> typer.Exit:
    Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def run(
    path: Annotated[Path, typer.Argument(help="experiment YAML or recipe .py")],
    cluster: Annotated[str, typer.Option("--cluster", "-c", help="local or a scheduler "
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
    from .cluster import close_local, local_running
    from .compute import compute

    owned = not local_running()  # close only a cluster this command starts
    try:
        nodes = load_nodes(path, recipe, model)
        results = compute(nodes, store=Store(store), cluster=cluster, force=force,
                          progress=progress)
    except DSchedulerError as err:
        raise _fail(err) from None
    finally:
        if owned:
            close_local()  # before distributed's own exit hooks, which log lost tasks
    console.print(repr(results), highlight=False)
    console.print(f"store: {Store(store).root}", highlight=False, markup=False)
    try:
        results.raise_for_status()
    except DSchedulerError as err:
        Console(stderr=True).print(str(err), highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(1) from None


def plan(
    path: Annotated[Path, typer.Argument(help="experiment YAML or recipe .py")],
    store: StoreOption = None,
    recipe: RecipeOption = None,
    model: ModelOption = None,
    force: Annotated[bool, typer.Option("--force", help="plan as if every node must rerun")]
    = False,
    limit: Annotated[int, typer.Option(help="list at most this many nodes")] = 50,
) -> None:
    """Print what `run` would do and why, without building or running anything."""
    from .plan import plan as make_plan

    try:
        p = make_plan(load_nodes(path, recipe, model), store=Store(store), force=force)
    except DSchedulerError as err:
        raise _fail(err) from None
    console.print(p.explain(limit=limit), highlight=False, markup=False)


def _records(store: Store) -> tuple[Counter[str], list[tuple[float, Path, dict[str, Any]]]]:
    """State counts of every node record, and the failed records with their mtimes."""
    states: Counter[str] = Counter()
    failures: list[tuple[float, Path, dict[str, Any]]] = []
    dirs: list[tuple[Path, list[str]]] = []
    for root in (store.runs_dir, store.tasks_dir):
        if root.is_dir():
            for dirpath, _dirnames, filenames in os.walk(root):
                if any(f.endswith(".json") for f in filenames):
                    dirs.append((Path(dirpath), filenames))
    for folder, filenames in dirs:
        names = set(filenames)
        for name in filenames:
            if not name.endswith(".json") or name.endswith(".value.json") or name == "run.json":
                continue
            task = name[:-5]
            if f".{task}.done" in names:
                states["succeeded"] += 1  # the index: no need to parse the record
                continue
            record = atomic.read_json(folder / name)
            if not isinstance(record, dict) or "attempts" not in record:
                continue
            state = str(record.get("state"))
            states[state] += 1
            if state == "failed":
                failures.append(((folder / name).stat().st_mtime, folder / name, record))
    failures.sort(key=lambda f: f[0], reverse=True)
    return states, failures


def status(
    store: StoreOption = None,
    failures: Annotated[int, typer.Option(help="show this many recent failures")] = 5,
) -> None:
    """Summarise the store: runs, nodes by state, envs, the last failures."""
    st = Store(store)
    if not st.root.is_dir():
        raise _fail(StoreError(f"no store at {st.root}; run something first or pass --store"))
    runs = list(st.runs_dir.glob("*/*/run.json")) if st.runs_dir.is_dir() else []
    envs = sorted(p.parent.name for p in st.envs_dir.glob("*/env.json"))
    states, failed = _records(st)
    console.print(f"store {st.root}", highlight=False)
    console.print(f"runs: {len(runs)}; envs built: {len(envs)}", highlight=False)
    table = Table("state", "nodes", box=None)
    for state, n in sorted(states.items()):
        table.add_row(state, str(n))
    console.print(table)
    if failed:
        console.print(f"last {min(failures, len(failed))} failure(s):", highlight=False)
        for _, path, record in failed[:failures]:
            last = (record.get("attempts") or [{}])[-1]
            console.print(f"  {record.get('name')} ({path.parent}): {last.get('error')}",
                          highlight=False, markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the graph commands to ``app``."""
    app.command()(run)
    app.command()(plan)
    app.command()(status)
