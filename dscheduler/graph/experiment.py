"""``ds.load_experiment``: a YAML file of runs, validated into RunConfigs.

Keys: ``model`` (a RunConfig class, or a mapping of run kinds to classes, as
``module:Name``), ``recipe`` (``file.py:main``), ``defaults`` (merged under each
run; a kind's own under its tag), ``dates`` (the cases: dates.py), ``settings``
(the experiment's settings, validated by the recipe's ``SETTINGS`` pydantic
model), ``runs``.  Without ``model`` the recipe module's ``RUN_KINDS`` (tag ->
class) says the kinds; runs of several kinds are tagged: ``- forecaster: {...}``.
A run repeated exactly is merged (a note); two runs with one label and different
fields are an error naming both.  A run field (typed as a RunConfig) given a label
names another run of the file (runs on runs: :func:`reference_order`); a relative
``ds.File`` path names a file beside the experiment file.  Every error names the
file, the line and the field.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from .dates import CASE_FORMAT as CASE_FORMAT
from .dates import cases as dates_cases
from .files import FILES_BASE
from .imports import call, file_function, import_object, load_file, split_spec
from .runconfig import RunConfig, resolve_run_refs, run_ref_fields
from .source import Source, read

TOP_KEYS = ("model", "recipe", "defaults", "dates", "settings", "runs")
#: Fields whose value names another run of the same file by its label (runs on runs).


class ExperimentNote(UserWarning):
    """Something in an experiment file worth a line but no error (a run merged)."""


@dataclass
class Experiment:
    """Runs, cases and settings read from one experiment file."""

    path: Path
    model: type[RunConfig]
    runs: list[RunConfig]
    cases: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    #: run kind (tag) -> RunConfig class; ``{"": model}`` for a file of one class.
    models: dict[str, type[RunConfig]] = field(default_factory=dict)
    #: the kind of each run, in the order of ``runs``
    kinds: list[str] = field(default_factory=list)
    #: the file's ``settings:``, validated by the recipe's SETTINGS model (None: none)
    settings: BaseModel | None = None
    notes: list[str] = field(default_factory=list)
    recipe_spec: str | None = None

    def env_ids(self) -> list[str]:
        return sorted({r.env_id for r in self.runs})

    def runs_of(self, kind: str) -> list[RunConfig]:
        """The runs of one kind (tag), in file order."""
        if kind not in self.models:
            raise ConfigError(f"{self.path}: no run kind {kind!r}; kinds are "
                              f"{sorted(self.models)}")
        return [r for r, k in zip(self.runs, self.kinds, strict=True) if k == kind]

    def by_label(self) -> dict[str, RunConfig]:
        """Runs that have a label, by label."""
        labels = [getattr(r, "label", "") for r in self.runs]
        return {str(label): r for label, r in zip(labels, self.runs, strict=True) if label}

    def recipe(self, spec: str | None = None) -> Callable[..., Any]:
        """The recipe function: ``spec`` or the file's ``recipe:`` (``file.py:main``)."""
        spec = spec or self.recipe_spec or self.raw.get("recipe")
        if not spec:
            raise ConfigError(
                f"{self.path}: no recipe says how runs become tasks: add 'recipe: file.py:main' "
                "to the file or pass --recipe file.py:main (main(experiment) returns nodes)"
            )
        file, name = split_spec(str(spec))
        if file.suffix != ".py":
            fn: Callable[..., Any] = import_object(str(spec), base=self.path.parent)
            return fn
        return file_function(_recipe_file(self.path, file), (name or "main",))  # type: ignore[no-any-return]

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


def _recipe_file(path: Path, file: Path) -> Path:
    if not file.is_absolute() and (path.parent / file).exists():
        file = path.parent / file
    if not file.exists():
        raise ConfigError(f"{path}: recipe file {file} does not exist")
    return file


def _recipe_module(src: Source, spec: str | None) -> Any:
    """The module of the recipe ``spec`` (None: none named), where RUN_KINDS and
    SETTINGS are declared."""
    if not spec:
        return None
    file, _ = split_spec(str(spec))
    if file.suffix == ".py":
        return load_file(_recipe_file(src.path, file))
    name = str(spec).partition(":")[0]
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise src.at("recipe")(f"recipe {spec!r}: cannot import {name!r} ({err})") from None


# -- runs ------------------------------------------------------------------------------


@dataclass
class Entry:
    """One run as the file gives it, before validation: its kind, its fields with the
    defaults merged in, where it is (``("runs", i)`` or ``("runs", i, tag)``)."""

    index: int
    kind: str
    fields: dict[str, Any]
    where: tuple[Any, ...]
    from_defaults: dict[str, tuple[Any, ...]]  # field -> where its default is

    @property
    def label(self) -> str:
        label = self.fields.get("label")
        return label if isinstance(label, str) else ""

    @property
    def name(self) -> str:
        return f"run {self.index}" + (f" ({self.label!r})" if self.label else "")


def _models(src: Source, model: Any, module: Any) -> dict[str, type[RunConfig]]:
    """Kind -> class, from ``model`` (argument or ``model:``), else RUN_KINDS."""
    where = src.at("model")
    if model is None and module is not None:
        model = getattr(module, "RUN_KINDS", None)
    if model is None:
        raise where("say which RunConfig to use: 'model: module:Class' (or model=), or "
                    "declare RUN_KINDS = {'tag': Class} in the recipe")
    if isinstance(model, str):
        model = import_object(model, base=src.path.parent)
    kinds = model if isinstance(model, dict) else {"": model}
    kinds = {tag: import_object(cls, base=src.path.parent) if isinstance(cls, str) else cls
             for tag, cls in kinds.items()}  # model: {tag: module:Class} in the file
    for tag, cls in kinds.items():
        if not (isinstance(cls, type) and issubclass(cls, RunConfig)):
            raise where(f"model {cls!r}{f' (kind {tag!r})' if tag else ''} is not a "
                        "ds.RunConfig subclass")
    return {str(tag): cls for tag, cls in kinds.items()}


def _defaults(src: Source, models: dict[str, type[RunConfig]]
              ) -> dict[str, dict[str, tuple[Any, tuple[Any, ...]]]]:
    """Per kind: field -> (default value, where).  A key of ``defaults:`` that is a kind's
    tag holds that kind's own; other keys go to every kind that has the field."""
    raw = src.data.get("defaults") or {}
    if not isinstance(raw, dict):
        raise src.at("defaults")(f"defaults must be a mapping, got {type(raw).__name__}")
    out: dict[str, dict[str, tuple[Any, tuple[Any, ...]]]] = {k: {} for k in models}
    for key, value in raw.items():
        if key in models and key and isinstance(value, dict):
            continue
        takers = [k for k, cls in models.items() if key in cls.model_fields or len(models) == 1]
        if not takers:
            raise src.at("defaults", key)(f"defaults: no run kind has a field {key!r}")
        for kind in takers:
            out[kind][key] = (value, ("defaults", key))
    for kind in models:
        own = raw.get(kind) if kind else None
        for key, value in (own or {}).items():
            out[kind][key] = (value, ("defaults", kind, key))
    return out


def _entry(src: Source, i: int, raw: Any, models: dict[str, type[RunConfig]],
           defaults: dict[str, dict[str, tuple[Any, tuple[Any, ...]]]]) -> Entry:
    where: tuple[Any, ...] = ("runs", i)
    if not isinstance(raw, dict):
        raise src.at(*where)(f"run {i} must be a mapping, got {raw!r}")
    tags = [k for k in models if k]
    if len(raw) == 1 and next(iter(raw)) in tags:
        kind = next(iter(raw))
        raw = raw[kind]
        where = (*where, kind)
        if not isinstance(raw, dict):
            raise src.at(*where)(f"run {i} ({kind}) must be a mapping of fields, got {raw!r}")
    elif len(models) == 1:
        kind = next(iter(models))
    else:
        raise src.at(*where)(f"run {i}: say its kind, one of {tags}: '- {tags[0]}: {{...}}'")
    base = {k: v for k, (v, _) in defaults[kind].items()}
    spots = {k: w for k, (_, w) in defaults[kind].items() if k not in raw}
    return Entry(i, kind, {**base, **raw}, where, spots)


def _validation_error(src: Source, entry: Entry, err: ValidationError) -> ConfigError:
    """One line naming the file, the run and, for each problem, its line and field."""
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        top = loc[0] if loc else None
        base = entry.from_defaults.get(str(top), entry.where)
        if base is not entry.where:
            loc = loc[1:]
        line = src.line(*base, *loc)
        problems.append(f"line {line}, {_field_path(tuple(e['loc']))}: {e['msg']} "
                        f"(got {e.get('input')!r:.60})")
    return ConfigError(f"{src.path}: {entry.name}: " + "; ".join(problems))


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(run)"


def _build(src: Source, entry: Entry, model: type[RunConfig]) -> RunConfig:
    try:
        # a relative ds.File path names a file beside the experiment file
        return model.model_validate(entry.fields, context={FILES_BASE: src.path.parent})
    except ValidationError as err:
        raise _validation_error(src, entry, err) from None
    except ConfigError as err:
        raise src.at(*entry.where)(f"{entry.name}: {err}") from None


def _reference_fields(entry: Entry, models: dict[str, type[RunConfig]]) -> list[str]:
    """The fields of ``entry``'s class that hold another run (typed as a RunConfig)."""
    return list(run_ref_fields(models[entry.kind]))


def reference_order(src: Source, entries: list[Entry],
                    models: dict[str, type[RunConfig]]) -> list[Entry]:
    """``entries`` ordered so that a run named by another's run field (a field typed as a
    RunConfig, given a label) comes first; a label no run has, or runs that name each
    other round, are errors naming the line.  A run written out as a mapping is left to
    pydantic."""
    labelled = {e.label: e for e in entries if e.label}
    done: dict[int, Entry] = {}

    def visit(entry: Entry, path: list[str]) -> None:
        if entry.index in done:
            return
        for name in _reference_fields(entry, models):
            ref = entry.fields.get(name)
            if not isinstance(ref, str):
                continue
            at = src.at(*entry.where, name)
            if ref not in labelled:
                raise at(f"{entry.name}: {name}: {ref!r} is not the label of a run in this "
                         f"file; labels are {sorted(labelled)}")
            if ref in path:
                raise at(f"{entry.name}: {name}: runs {' -> '.join([*path, ref])} name each "
                         "other in a circle")
            visit(labelled[ref], [*path, ref])
        done[entry.index] = entry

    for entry in entries:
        visit(entry, [entry.label or entry.name])
    return list(done.values())


def _runs(src: Source, models: dict[str, type[RunConfig]]
          ) -> tuple[list[RunConfig], list[str], list[str]]:
    """The runs (file order), their kinds and the notes of runs merged."""
    defaults = _defaults(src, models)
    entries = [_entry(src, i, raw, models, defaults) for i, raw in enumerate(src.data["runs"])]
    built: dict[int, RunConfig] = {}
    by_label: dict[str, RunConfig] = {}
    for entry in reference_order(src, entries, models):
        try:
            entry.fields = resolve_run_refs(models[entry.kind], entry.fields, by_label)
        except ConfigError as err:
            raise src.at(*entry.where)(f"{entry.name}: {err}") from None
        cfg = _build(src, entry, models[entry.kind])
        built[entry.index] = cfg
        if entry.label:
            by_label.setdefault(entry.label, cfg)
    return _merge(src, entries, built)


def _merge(src: Source, entries: list[Entry], built: dict[int, RunConfig]
           ) -> tuple[list[RunConfig], list[str], list[str]]:
    """Runs in file order, a run repeated exactly given once (with a note); an error for
    two runs of one run_id or one label that differ."""
    runs: list[RunConfig] = []
    kinds: list[str] = []
    notes: list[str] = []
    first_id: dict[str, Entry] = {}
    first_label: dict[str, Entry] = {}
    for entry in entries:
        cfg = built[entry.index]
        other = first_id.get(cfg.run_id) or first_label.get(entry.label)
        if other is None:
            first_id[cfg.run_id] = entry
            if entry.label:
                first_label[entry.label] = entry
            runs.append(cfg)
            kinds.append(entry.kind)
            continue
        _same_or_conflict(src, entry, cfg, other, built[other.index])
        notes.append(f"{src.path}, line {src.line(*entry.where)}: {entry.name} repeats "
                     f"{other.name} (line {src.line(*other.where)}) exactly; run once")
    return runs, kinds, notes


def _same_or_conflict(src: Source, entry: Entry, cfg: RunConfig, other: Entry,
                      first: RunConfig) -> None:
    """Nothing if ``cfg`` is ``first`` again, field for field; else the error."""
    mine, theirs = cfg.model_dump(), first.model_dump()
    if type(cfg) is type(first) and mine == theirs:
        return
    differ = sorted(k for k in {*mine, *theirs} if mine.get(k) != theirs.get(k))
    here = f"{entry.name} and {other.name} (line {src.line(*other.where)})"
    if cfg.run_id == first.run_id:
        raise src.at(*entry.where)(
            f"{entry.name} is the same run as {other.name} (run_id {cfg.run_id}, line "
            f"{src.line(*other.where)}); they differ only in {differ}, and fields in "
            f"{list(type(cfg).HASH_EXCLUDE)} do not make runs different; "
            "remove the duplicate or change a field")
    raise src.at(*entry.where)(
        f"{here} have the label {entry.label!r} but differ in {differ}; give each its own "
        "label (or make them the same run)")


# -- the file --------------------------------------------------------------------------


def _settings(src: Source, module: Any) -> BaseModel | None:
    """The ``settings:`` section validated by the recipe module's SETTINGS model."""
    declared = getattr(module, "SETTINGS", None)
    section = src.data.get("settings")
    if declared is None:
        if section is not None:
            raise src.at("settings")(
                "settings: the recipe declares no SETTINGS model to read them with; "
                "add 'SETTINGS = YourModel' (a pydantic model) to the recipe, or remove them")
        return None
    if not (isinstance(declared, type) and issubclass(declared, BaseModel)):
        raise src.at("recipe")(f"the recipe's SETTINGS {declared!r} is not a pydantic model")
    try:
        return declared.model_validate(section or {})
    except ValidationError as err:
        problems = [f"line {src.line('settings', *e['loc'])}, "
                    f"settings.{_field_path(tuple(e['loc']))}: {e['msg']} "
                    f"(got {e.get('input')!r:.60})" for e in err.errors()]
        raise ConfigError(f"{src.path}: " + "; ".join(problems)) from None


def load_experiment(path: str | Path, model: type[RunConfig] | dict[str, type[RunConfig]]
                    | str | None = None, recipe: str | None = None) -> Experiment:
    """Read and validate an experiment file; errors name the file, line, run and field.

    ``model`` and ``recipe`` override the file's ``model:`` and ``recipe:``."""
    src = read(Path(path))
    raw = src.data
    if not isinstance(raw, dict) or not isinstance(raw.get("runs"), list):
        raise src.at("runs")("an experiment is a mapping with a top-level 'runs:' list")
    unknown = sorted(set(map(str, raw)) - set(TOP_KEYS))
    if unknown:
        raise src.at(unknown[0])(f"unknown top-level keys {unknown}; use {', '.join(TOP_KEYS)}")
    spec = recipe or raw.get("recipe")
    module = _recipe_module(src, spec)
    models = _models(src, model or raw.get("model"), module)
    runs, kinds, notes = _runs(src, models)
    for note in notes:
        warnings.warn(note, ExperimentNote, stacklevel=2)
    cases = dates_cases(raw["dates"], src.at) if raw.get("dates") is not None else []
    return Experiment(path=src.path, model=next(iter(models.values())), runs=runs,
                      cases=cases, raw=raw, models=models, kinds=kinds,
                      settings=_settings(src, module), notes=notes, recipe_spec=recipe)
