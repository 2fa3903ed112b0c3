"""What a command-line PATH describes: the nodes of a recipe, the envs of a target.

PATH is either

* an experiment YAML: its runs are loaded (:func:`load_experiment`) and its
  recipe, ``recipe: file.py:function`` in the file or given separately,
  turns the Experiment into nodes: ``function(experiment) -> nodes``; or
* a Python recipe file with a function that takes no argument and returns
  nodes: ``PATH.py:NAME``, or ``main``, else ``nodes``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..envs import Env
from ..errors import ConfigError, DSchedulerError
from .experiment import load_experiment
from .imports import import_object, load_file


def _split(spec: str) -> tuple[Path, str | None]:
    file, sep, name = spec.rpartition(":") if spec.count(":") == 1 else (spec, "", "")
    if not sep:
        return Path(spec), None
    return Path(file), name


def _call(fn: Any, where: str, *args: Any) -> Any:
    """Call a recipe function; its own failure becomes a ConfigError naming it."""
    try:
        return fn(*args)
    except DSchedulerError:
        raise
    except Exception as err:
        raise ConfigError(f"{where}: {getattr(fn, '__name__', 'recipe')}() raised "
                          f"{type(err).__name__}: {err}") from err


def _function(file: Path, names: tuple[str, ...]) -> Any:
    module = load_file(file)
    for name in names:
        fn = getattr(module, name, None)
        if callable(fn):
            return fn
    if len(names) == 1:
        raise ConfigError(f"{file} has no function {names[0]}()")
    raise ConfigError(f"{file} has neither {'() nor '.join(names)}(); name one with --recipe")


def load_nodes(path: Path, recipe: str | None = None, model: str | None = None) -> Any:
    """The nodes that ``path`` (an experiment YAML or a recipe .py) describes.

    ``recipe`` (``file.py:function`` or, for a .py path, a function name)
    and ``model`` (``module:Class``) override what the file says.
    """
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
            if not file.exists():
                raise ConfigError(f"{path}: recipe file {file} does not exist")
            fn = _function(file, (name or "main",))
        else:
            fn = import_object(str(spec), base=path.parent)
        return _call(fn, str(spec), exp)
    file, name = _split(str(path))
    if file.suffix != ".py":
        raise ConfigError(f"{path}: expected an experiment .yaml or a recipe .py file")
    if not file.exists():
        raise ConfigError(f"{file}: no such file")
    name = name or recipe
    return _call(_function(file, (name,) if name else ("main", "nodes")), str(file))


def _read_requirements(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def envs_of(
    target: Path | None, requirements: list[str], options: dict[str, Any], model: str | None
) -> list[Env]:
    """The envs named by an experiment, an Env JSON, a requirements file or a checkpoint.

    ``options`` are Env fields given besides (python, image, index options);
    for an experiment only ``image`` may be given, since other fields would
    change an env without changing its run's env_id.
    """
    fields = {k: v for k, v in options.items() if v not in (None, [], ())}
    if target is None:
        if not requirements:
            raise ConfigError("give an experiment YAML, an env spec file or -r REQUIREMENT")
        return [Env(requirements=tuple(requirements), **fields)]
    if not target.exists():
        raise ConfigError(f"{target} does not exist")
    suffix = target.suffix.lower()
    if suffix in (".yaml", ".yml"):
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
        try:
            spec = json.loads(target.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{target}: not valid JSON ({err})") from None
        spec["requirements"] = [*spec.get("requirements", []), *requirements]
        return [Env(**{**spec, **fields})]
    if suffix == ".txt":
        return [Env(requirements=(*_read_requirements(target), *requirements), **fields)]
    return [Env.from_checkpoint(target, extra_requirements=requirements, **fields)]
