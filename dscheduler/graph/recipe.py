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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..envs import Env
from ..errors import ConfigError
from .experiment import Experiment, load_experiment
from .imports import call, file_function, split_spec


@dataclass
class Recipe:
    """What PATH describes: its nodes, and what to print after running them."""

    nodes: Any
    experiment: Experiment | None = None
    recipe: str | None = None

    def report(self, results: Any) -> str | None:
        """The recipe module's ``report(results)``, for an experiment whose recipe has one."""
        return self.experiment.report(results, self.recipe) if self.experiment else None


def load_recipe(path: Path, recipe: str | None = None, model: str | None = None) -> Recipe:
    """The nodes that ``path`` (an experiment YAML or a recipe .py) describes.

    ``recipe`` (``file.py:function`` or, for a .py path, a function name)
    and ``model`` (``module:Class``) override what the file says.
    """
    if path.suffix in (".yaml", ".yml"):
        exp = load_experiment(path, model=model, recipe=recipe)
        return Recipe(exp.nodes(recipe), exp, recipe)
    file, name = split_spec(str(path))
    if file.suffix != ".py":
        raise ConfigError(f"{path}: expected an experiment .yaml or a recipe .py file")
    if not file.exists():
        raise ConfigError(f"{file}: no such file")
    name = name or recipe
    fn = file_function(file, (name,) if name else ("main", "nodes"))
    return Recipe(call(fn, str(file)))


def load_nodes(path: Path, recipe: str | None = None, model: str | None = None) -> Any:
    """The nodes of :func:`load_recipe`."""
    return load_recipe(path, recipe, model).nodes


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
