"""SLURM options: the ``dscheduler.slurm`` settings, checked before any job is submitted.

:func:`resolve` is the one place they are read: a key given as an argument wins with its value
(None included: it clears a configured value), every other comes from ``settings.get("slurm.KEY")``
(environment variable > user file > packaged default); all are validated by
:class:`SlurmOptions` (pydantic).  An unknown key, a time limit that is neither SLURM's form nor
a duration (``1h``, ``90min``, ``1h30m``, ``2d``), or a memory without a unit is a
:class:`~dscheduler.errors.ConfigError` naming the value and the fix.  Kinds of job
(:meth:`SlurmOptions.kind`): ``cpu`` (top-level keys), ``gpu`` (``gpu:``) and the named
``kinds:``, whose unset keys are the CPU jobs' (docs/design.md §13.2).

Walltime and lifetime (§13.3): ``--lifetime`` is a kind's walltime minus a margin (a tenth of
it, at least 10 s, at most 10 minutes and half the walltime), ``--lifetime-stagger`` half that.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from ... import settings
from ...errors import ConfigError

_WALLTIME = re.compile(
    r"^(?:(?P<d>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"  # D-H, D-H:M, D-H:M:S
    r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$"  # M, M:S, H:M:S
)
# A duration as people write it: 1h, 90min, 1h30m, 2d, 45s (a unit after every number).
_UNITS = {"d": 86400, "day": 86400, "days": 86400, "h": 3600, "hr": 3600, "hour": 3600,
          "hours": 3600, "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
          "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)\s*")
_MEMORY = re.compile(r"^\s*\d+(\.\d+)?\s*([kmgtp]i?b?)\s*$", re.IGNORECASE)
WALLTIME_FORMS = ("MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (e.g. '01:30:00'), or a "
                  "duration such as '1h', '90min', '1h30m' or '2d'")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$"
DEFAULT_KINDS = ("cpu", "gpu")


def _human_seconds(text: str) -> float | None:
    """Seconds of ``1h30m``-like text, None when it is not one (hand-written: dask's
    ``parse_timedelta`` takes one number and one unit, not ``1h30m``)."""
    pos, total = 0, 0.0
    while pos < len(text):
        part = _PART.match(text, pos)
        if part is None or part.group(2) not in _UNITS:
            return None
        total += float(part.group(1)) * _UNITS[part.group(2)]
        pos = part.end()
    return total if pos else None


def walltime_seconds(text: str) -> int:
    """Seconds in a time limit: SLURM's forms (``-t``) or ``1h``, ``90min``, ``1h30m``,
    ``2d``; a ConfigError naming the forms for anything else or for zero."""
    seconds = _time_seconds(text)
    if seconds is None:
        raise ConfigError(
            f"slurm walltime {text!r} is not a SLURM time limit: write {WALLTIME_FORMS}")
    return seconds


def _time_seconds(text: object) -> int | None:
    if isinstance(text, bool) or not isinstance(text, str | int):
        return None
    clean = str(text).strip().lower()
    match = _WALLTIME.match(clean)
    if match is None:
        human = _human_seconds(clean)
        return None if not human else math.ceil(human)
    g = {k: int(v) for k, v in match.groupdict().items() if v is not None}
    if "d" in g:
        seconds = ((g["d"] * 24 + g["dh"]) * 60 + g.get("dm", 0)) * 60 + g.get("ds", 0)
    elif "c" in g:  # H:M:S
        seconds = (g["a"] * 60 + g["b"]) * 60 + g["c"]
    else:
        seconds = g["a"] * 60 + g.get("b", 0)  # M or M:S
    return seconds or None


def slurm_time(seconds: int) -> str:
    """``seconds`` as SLURM writes a time limit: ``HH:MM:SS``, or ``D-HH:MM:SS``."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    clock = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days}-{clock}" if days else clock


def _check_time(value: object) -> str | None:
    """A time limit in SLURM's own form (``1h30m`` -> ``01:30:00``); null stays null."""
    if value is None:
        return None
    seconds = _time_seconds(value)
    if seconds is None:
        raise PydanticCustomError(
            "slurm_time", "is not a SLURM time limit: write {forms}", {"forms": WALLTIME_FORMS})
    return slurm_time(seconds)


Walltime = Annotated[str | None, BeforeValidator(_check_time)]


def _duration(value: str | float, what: str, zero: bool = False) -> float:
    from dask.utils import parse_timedelta

    try:
        seconds = float(parse_timedelta(value, default="seconds"))
    except (TypeError, ValueError, KeyError):
        raise ConfigError(f"slurm {what} {value!r} is not a duration: write e.g. '50m', "
                          "'3000s' or a number of seconds") from None
    if seconds < 0 or (seconds == 0 and not zero):
        raise ConfigError(f"slurm {what} {value!r} must be positive")
    return seconds


def _check_memory(value: object, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float) \
            or not _MEMORY.match(str(value)):
        raise ValueError(
            "needs a unit: write e.g. '4GB' or '4000MB' (a bare number would be read as bytes)")
    return str(value).strip()


def _check_directives(value: list[str]) -> list[str]:
    for line in value:
        if not str(line).startswith("-"):
            raise ValueError(f"{line!r} is not an sbatch option: write it as on the sbatch "
                             "command line, e.g. '--qos=short'")
    return value


def resource_of(kind: str) -> str:
    """The Dask resource the workers of a ``kind`` job offer: CPU (cpu), GPU (gpu), else
    ``job-{kind}``, so that only the tasks that ask for that kind run there."""
    return {"cpu": "CPU", "gpu": "GPU"}.get(kind, f"job-{kind}")


def _check_kind_names(value: Any) -> Any:
    for name in value if isinstance(value, dict) else ():
        if not isinstance(name, str) or not re.match(_NAME, name):
            raise ValueError(f"the kind name {name!r} is not a name: use letters, digits, "
                             "'-' and '_' (at most 32, no dots), e.g. 'preempt-gpu'")
    return value


@dataclass(frozen=True)
class Kind:
    """One kind of job, resolved: what its jobs ask SLURM for and what its workers offer."""

    name: str
    partition: str | None
    account: str | None
    cores: int
    memory: str
    processes: int
    gpus: int
    walltime: str | None
    max_jobs: int
    min_jobs: int
    directives: tuple[str, ...]  # the extra #SBATCH lines, --qos and --gres included

    @property
    def resource(self) -> str:
        return resource_of(self.name)

    @property
    def threads(self) -> int:
        """Threads of each worker process."""
        return self.cores // self.processes

    @property
    def slots(self) -> int:
        """What one job offers: its GPUs, or without GPUs its threads."""
        return self.gpus or self.cores

    @property
    def per_worker(self) -> int:
        """How much of :attr:`resource` each worker process offers."""
        return self.slots // self.processes


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KindOptions(_Strict):
    """A named kind of job (``kinds: {NAME: {...}}``); unset fields are those of CPU jobs."""

    gpus: int | None = Field(default=None, ge=0)  # null: 0, a CPU kind
    max_jobs: int | None = Field(default=None, ge=0)  # null: as CPU jobs
    min_jobs: int = Field(default=0, ge=0)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    cores: int | None = Field(default=None, ge=1)
    memory: str | None = None
    processes: int | None = Field(default=None, ge=1)
    walltime: Walltime = None
    directives: list[str] = []

    _memory = field_validator("memory", mode="before")(lambda v: _check_memory(v, "memory"))
    _directives = field_validator("directives")(_check_directives)


class GpuOptions(KindOptions):
    """GPU jobs (kind ``gpu``): ``--gres=gpu:{gpus}``; unset fields are those of CPU jobs."""

    gpus: int | None = Field(default=1, ge=1)
    max_jobs: int | None = Field(default=1, ge=0)


class SlurmOptions(_Strict):
    """Validated ``dscheduler.slurm`` settings (the packaged yaml comments each one)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    cores: int = Field(default=1, ge=1)
    memory: str = "2GB"
    processes: int = Field(default=1, ge=1)
    walltime: Walltime = "01:00:00"
    max_jobs: int = Field(default=4, ge=0)
    min_jobs: int = Field(default=0, ge=0)
    gpu: GpuOptions = Field(default_factory=GpuOptions)
    kinds: dict[str, KindOptions] = {}
    directives: list[str] = []
    prologue: list[str] = []
    interface: str | None = None
    dashboard_address: str = "127.0.0.1:0"
    log_directory: str | None = None
    local_directory: str | None = None
    python: str | None = None
    job_name: str = Field(default="dscheduler", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    lifetime: str | float | None = None
    lifetime_stagger: str | float | None = None
    death_timeout: float = Field(default=60, gt=0)
    idle_timeout: float = Field(default=10, ge=0)
    interval: float = Field(default=1, gt=0)

    _memory = field_validator("memory", mode="before")(lambda v: _check_memory(v, "memory"))
    _directives = field_validator("directives")(_check_directives)
    _kinds = field_validator("kinds", mode="before")(lambda v: _check_kind_names(v))

    def model_post_init(self, context: Any) -> None:
        clash = sorted(set(self.kinds) & set(DEFAULT_KINDS))
        if clash:
            raise ConfigError(
                f"slurm kinds {clash}: 'cpu' and 'gpu' are the default kinds, set by the "
                "top-level options and by gpu: {...}; give a named kind another name")
        if self.min_jobs > self.max_jobs:
            raise ConfigError(f"slurm min_jobs {self.min_jobs} exceeds max_jobs "
                              f"{self.max_jobs}: lower min_jobs or raise max_jobs")
        for name in self.kind_names:
            self._check_kind(self.kind(name))

    def _check_kind(self, kind: Kind) -> None:
        where = {"cpu": "", "gpu": "gpu."}.get(kind.name, f"kinds.{kind.name}.")
        if kind.cores % kind.processes:
            raise ConfigError(
                f"slurm {where}cores {kind.cores} cannot be split over {kind.processes} "
                f"worker processes: make {where}processes divide {where}cores")
        if kind.gpus % kind.processes:
            raise ConfigError(
                f"slurm {where}gpus {kind.gpus} cannot be shared by {kind.processes} worker "
                f"processes: make {where}processes divide it")
        if kind.name != "cpu" and kind.min_jobs > kind.max_jobs:
            raise ConfigError(f"slurm {where}min_jobs {kind.min_jobs} exceeds {where}max_jobs "
                              f"{kind.max_jobs}: lower min_jobs or raise max_jobs")
        self.lifetime_seconds(kind.name)

    # -- derived values ---------------------------------------------------------------

    @property
    def kind_names(self) -> tuple[str, ...]:
        """Every kind of job: cpu, gpu, then the named kinds."""
        return (*DEFAULT_KINDS, *self.kinds)

    def kind(self, name: str) -> Kind:
        """The ``name`` kind of job, its unset fields those of CPU jobs; a ConfigError
        naming the known kinds when there is none of that name."""
        if name == "cpu":
            return self._kind("cpu", KindOptions(gpus=0, max_jobs=self.max_jobs,
                                                 min_jobs=self.min_jobs))
        if name == "gpu":
            return self._kind("gpu", self.gpu)
        if name not in self.kinds:
            raise ConfigError(
                f"unknown SLURM job kind {name!r}; known kinds: {', '.join(self.kind_names)} "
                "(named kinds are set in the settings dscheduler.slurm.kinds)")
        return self._kind(name, self.kinds[name])

    def _kind(self, name: str, own: KindOptions) -> Kind:
        def pick(field: str) -> Any:
            value = getattr(own, field)
            return value if value is not None else getattr(self, field)

        gpus = own.gpus or 0
        qos = pick("qos")
        directives = (*self.directives, *own.directives,
                      *([f"--qos={qos}"] if qos else []),
                      *([f"--gres=gpu:{gpus}"] if gpus else []))
        return Kind(name, pick("partition"), pick("account"), pick("cores"), pick("memory"),
                    pick("processes"), gpus, pick("walltime"), pick("max_jobs"),
                    own.min_jobs, directives)

    def lifetime_seconds(self, kind: str = "cpu") -> tuple[float, float] | None:
        """(lifetime, stagger) in seconds of the workers of a ``kind`` job; None without
        walltime or lifetime."""
        walltime = self.kind(kind).walltime
        wall = walltime_seconds(walltime) if walltime is not None else None
        if self.lifetime is not None:
            life = _duration(self.lifetime, "lifetime")
            stagger = (_duration(self.lifetime_stagger, "lifetime_stagger", zero=True)
                       if self.lifetime_stagger is not None else 0.0)
        elif wall is not None:
            margin = min(max(wall / 10, 10.0), 600.0, wall / 2)
            life, stagger = wall - margin, margin / 2
            if self.lifetime_stagger is not None:
                stagger = _duration(self.lifetime_stagger, "lifetime_stagger", zero=True)
        else:
            return None
        if wall is not None and life + stagger >= wall:
            where = "" if kind == "cpu" else f" of {kind} jobs"
            raise ConfigError(
                f"slurm lifetime {life:g} s (+ stagger {stagger:g} s) reaches the walltime "
                f"{walltime!r}{where}: SLURM would kill workers before they retire; shorten "
                "lifetime or leave it null (derived from the walltime)")
        return life, stagger

    @property
    def interpreter(self) -> str:
        """The workers' Python: the setting, else the driver's own interpreter."""
        return self.python or sys.executable


FIELDS = tuple(SlurmOptions.model_fields)


def _unknown(keys: set[str], where: str) -> ConfigError:
    return ConfigError(
        f"unknown slurm option(s) {sorted(keys)} in {where}; valid options: "
        f"{', '.join(FIELDS)} (gpu and each of kinds: {', '.join(KindOptions.model_fields)})")


def _group(name: str, given: Any, configured: Any) -> dict[str, Any]:
    """The ``configured`` group (``gpu``, a kind) updated by the keys ``given``."""
    if isinstance(given, BaseModel):
        given = given.model_dump(exclude_unset=True)
    if given is not None and not isinstance(given, dict):
        raise ConfigError(f"slurm {name}={given!r} must be a mapping such as "
                          "{'gpus': 1, 'max_jobs': 2}")
    merged = {**dict(configured or {}), **(given or {})}
    return {str(k).replace("-", "_"): v for k, v in merged.items()}


def resolve(**overrides: Any) -> SlurmOptions:
    """Options from ``overrides`` over the ``dscheduler.slurm`` settings, validated.

    A key in ``overrides`` wins with its value, even None (``account=None``
    clears a configured account; so does ``-o account=`` on the CLI); keys
    inside ``gpu={...}`` and inside each kind of ``kinds={NAME: {...}}``
    likewise.  ``gpu=None`` (``kinds=None``) leaves the group as configured.

    Raises
    ------
    ConfigError
        An unknown key (listing the valid ones) or a bad value, naming it.
    """
    unknown = set(overrides) - set(FIELDS)
    if unknown:
        raise _unknown(unknown, "the arguments")
    configured = settings.get("slurm") or {}
    unknown = {str(k).replace("-", "_") for k in configured} - set(FIELDS)
    if unknown:
        raise _unknown(unknown, "the settings (dscheduler.slurm)")
    # A key given wins with its value, None included (``account=None``, ``-o walltime=``
    # clear a configured value): ``settings.get`` reads a None override as "not given".
    values = {name: overrides[name] if name in overrides else settings.get(f"slurm.{name}")
              for name in FIELDS}
    values["gpu"] = _group("gpu", overrides.get("gpu"), settings.get("slurm.gpu"))
    kinds = dict(settings.get("slurm.kinds") or {})
    given = overrides.get("kinds") or {}
    if not isinstance(given, dict):
        raise ConfigError(f"slurm kinds={given!r} must map names to kinds, such as "
                          "{'preempt': {'partition': 'preempt', 'walltime': '1h'}}")
    for name in dict.fromkeys([*kinds, *given]):  # in the order written
        kinds[name] = _group(f"kinds.{name}", given.get(name), kinds.get(name))
    values["kinds"] = kinds
    try:
        return SlurmOptions.model_validate(values)
    except ValidationError as err:
        raise ConfigError(_explain(err)) from None


def _explain(err: ValidationError) -> str:
    parts = []
    for problem in err.errors():
        where = ".".join(str(p) for p in problem["loc"])
        if problem["type"] == "extra_forbidden":
            parts.append(str(_unknown({where}, "slurm options")))
            continue
        message = str(problem["msg"]).removeprefix("Value error, ")
        if not where:  # raised by model_post_init: a whole sentence already
            parts.append(message)
        elif problem["type"] == "slurm_time":
            parts.append(f"slurm {where} {problem.get('input')!r} {message}")
        else:
            parts.append(f"slurm {where}={problem.get('input')!r}: {message}")
    return "; ".join(parts)
