"""``ds.load_experiment``: a YAML file of runs, validated into RunConfigs.

::

    model: recipes.forecast:Forecast     # optional when model= is given
    defaults:                            # merged under each run
      steps: "0/120/6"
    dates:                               # optional: the cases (init times)
      start: 2020-01-01T00:00
      end: 2020-01-02T00:00
      frequency: 12h
    runs:
      - {label: base, checkpoint: ckpt/a.pt}
      - {label: big, checkpoint: ckpt/b.pt, config: {members: 10}}
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from .imports import call, file_function, import_object, split_spec
from .runconfig import RunConfig

CASE_FORMAT = "%Y%m%d%H%M"


@dataclass
class Experiment:
    """Runs and cases read from one experiment file."""

    path: Path
    model: type[RunConfig]
    runs: list[RunConfig]
    cases: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def env_ids(self) -> list[str]:
        return sorted({r.env_id for r in self.runs})

    def recipe(self, spec: str | None = None) -> Callable[..., Any]:
        """The recipe function: ``spec`` or the file's ``recipe:`` (``file.py:main``)."""
        spec = spec or self.raw.get("recipe")
        if not spec:
            raise ConfigError(
                f"{self.path}: no recipe says how runs become tasks: add 'recipe: file.py:main' "
                "to the file or pass --recipe file.py:main (main(experiment) returns nodes)"
            )
        file, name = split_spec(str(spec))
        if file.suffix != ".py":
            fn: Callable[..., Any] = import_object(str(spec), base=self.path.parent)
            return fn
        if not file.is_absolute() and (self.path.parent / file).exists():
            file = self.path.parent / file
        if not file.exists():
            raise ConfigError(f"{self.path}: recipe file {file} does not exist")
        return file_function(file, (name or "main",))  # type: ignore[no-any-return]

    def nodes(self, recipe: str | None = None) -> Any:
        """The nodes the recipe makes of this experiment: ``recipe(experiment)``."""
        fn = self.recipe(recipe)
        return call(fn, f"{self.path}: recipe", self)

    def report(self, results: Any, recipe: str | None = None) -> str | None:
        """What the recipe's module says of ``results`` (its ``report(results)``), if it
        defines one: the lines a person wants after a run, e.g. the best run."""
        module = sys.modules.get(self.recipe(recipe).__module__)
        fn = getattr(module, "report", None)
        return str(call(fn, f"{self.path}: report", results)) if callable(fn) else None


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(run)"


def _cases(dates: Any, where: str) -> list[str]:
    import pandas as pd

    if not isinstance(dates, dict) or not {"start", "end"} <= set(dates):
        raise ConfigError(f"{where}: dates needs start and end (and frequency, default 1D)")
    unknown = sorted(set(dates) - {"start", "end", "frequency"})
    if unknown:
        raise ConfigError(f"{where}: dates has unknown keys {unknown}; use start, end, frequency")
    try:
        index = pd.date_range(dates["start"], dates["end"], freq=dates.get("frequency", "1D"))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: dates {dates!r} are not valid ({err})") from None
    if len(index) == 0:
        raise ConfigError(f"{where}: dates from {dates['start']} to {dates['end']} give no case")
    return [t.strftime(CASE_FORMAT) for t in index]


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(f"line {line}: key {key!r} appears twice (first on line {first}); "
                         "YAML would keep only the last one: merge the two into one")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error: PyYAML
    keeps the last silently, so a second ``runs:`` would drop the first list.  (Keys a
    ``<<`` merge brings in may be overridden, as YAML intends.)"""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, line, seen[key])
                seen[key] = line
            except TypeError:
                continue  # an unhashable key: the base class says why it is refused
        return super().construct_mapping(node, deep)  # type: ignore[no-any-return]


def _read_yaml(path: Path) -> Any:
    """The YAML of ``path``: UTF-8 text, no key twice in a mapping (ConfigErrors say where)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read experiment {path}: {err.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(
            f"{path}: not UTF-8 text: byte {err.start} (line {line}) is "
            f"0x{data[err.start]:02x}; save the file as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no object tags
    except _DuplicateKey as err:
        raise ConfigError(f"{path}, {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None


def load_experiment(path: str | Path, model: type[RunConfig] | str | None = None) -> Experiment:
    """Read and validate an experiment file; errors name the file, run and field."""
    path = Path(path)
    raw = _read_yaml(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("runs"), list):
        raise ConfigError(f"{path}: an experiment is a mapping with a top-level 'runs:' list")
    unknown = sorted(set(raw) - {"model", "defaults", "dates", "runs", "recipe"})
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level keys {unknown}; use model, defaults, dates, runs, recipe"
        )
    model = model or raw.get("model")
    if model is None:
        raise ConfigError(f"{path}: say which RunConfig to use: 'model: module:Class' or model=")
    if isinstance(model, str):
        model = import_object(model, base=path.parent)
    if not (isinstance(model, type) and issubclass(model, RunConfig)):
        raise ConfigError(f"{path}: model {model!r} is not a ds.RunConfig subclass")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}: defaults must be a mapping, got {type(defaults).__name__}")

    runs: list[RunConfig] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(raw["runs"]):
        name = f"run {i}"
        if isinstance(entry, dict) and entry.get("label"):
            name += f" ({entry['label']!r})"
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: {name} must be a mapping, got {entry!r}")
        try:
            cfg = model(**{**defaults, **entry})
        except ValidationError as err:
            problems = "; ".join(
                f"{_field_path(e['loc'])}: {e['msg']} (got {e.get('input')!r:.60})"
                for e in err.errors()
            )
            raise ConfigError(f"{path}: {name}: {problems}") from None
        except ConfigError as err:
            raise ConfigError(f"{path}: {name}: {err}") from None
        if cfg.run_id in seen:
            raise ConfigError(
                f"{path}: {name} is the same run as {seen[cfg.run_id]} (run_id {cfg.run_id}); "
                f"fields in {list(model.HASH_EXCLUDE)} do not make runs different; "
                "remove the duplicate or change a field"
            )
        seen[cfg.run_id] = name
        runs.append(cfg)
    cases = _cases(raw["dates"], str(path)) if raw.get("dates") is not None else []
    return Experiment(path=path, model=model, runs=runs, cases=cases, raw=raw)
