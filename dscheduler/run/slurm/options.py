"""SLURM options: the ``dscheduler.slurm`` settings, checked before any job is submitted.

:func:`resolve` is the one place they are read: a key given as an argument wins with its value
(None included: it clears a configured value), every other comes from ``settings.get("slurm.KEY")``
(environment variable > user file > packaged default); all are validated by
:class:`SlurmOptions` (pydantic).  An unknown key, a walltime SLURM would refuse or a memory
without a unit is a :class:`~dscheduler.errors.ConfigError` naming the value and the fix.

Walltime and lifetime (docs/design.md §13.3): ``--lifetime`` is the walltime minus a margin (a
tenth of the walltime, at least 10 s, at most 10 minutes and half the walltime) and
``--lifetime-stagger`` half that margin.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ... import settings
from ...errors import ConfigError

_WALLTIME = re.compile(
    r"^(?:(?P<d>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"  # D-H, D-H:M, D-H:M:S
    r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$"  # M, M:S, H:M:S
)
_MEMORY = re.compile(r"^\s*\d+(\.\d+)?\s*([kmgtp]i?b?)\s*$", re.IGNORECASE)
WALLTIME_FORMS = "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (e.g. '01:30:00')"


def walltime_seconds(text: str) -> int:
    """Seconds in a SLURM time limit (``-t``); a ConfigError for anything SLURM refuses."""
    match = _WALLTIME.match(str(text).strip())
    if match is None:
        raise ConfigError(
            f"slurm walltime {text!r} is not a SLURM time limit: write {WALLTIME_FORMS}")
    g = {k: int(v) for k, v in match.groupdict().items() if v is not None}
    if "d" in g:
        return ((g["d"] * 24 + g["dh"]) * 60 + g.get("dm", 0)) * 60 + g.get("ds", 0)
    if "c" in g:  # H:M:S
        return (g["a"] * 60 + g["b"]) * 60 + g["c"]
    return g["a"] * 60 + g.get("b", 0)  # M or M:S


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


@dataclass(frozen=True)
class JobShape:
    """What one job of a kind asks for."""

    partition: str | None
    cores: int
    memory: str
    processes: int
    directives: tuple[str, ...]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GpuOptions(_Strict):
    """GPU jobs: ``--gres=gpu:{gpus}``; unset fields are those of CPU jobs."""

    gpus: int = Field(default=1, ge=1)
    max_jobs: int = Field(default=1, ge=0)
    partition: str | None = None
    cores: int | None = Field(default=None, ge=1)
    memory: str | None = None
    processes: int | None = Field(default=None, ge=1)
    directives: list[str] = []

    _memory = field_validator("memory", mode="before")(
        lambda v: _check_memory(v, "gpu.memory"))
    _directives = field_validator("directives")(_check_directives)


class SlurmOptions(_Strict):
    """Validated ``dscheduler.slurm`` settings (the packaged yaml comments each one)."""

    partition: str | None = None
    account: str | None = None
    cores: int = Field(default=1, ge=1)
    memory: str = "2GB"
    processes: int = Field(default=1, ge=1)
    walltime: str | None = "01:00:00"
    max_jobs: int = Field(default=4, ge=0)
    min_jobs: int = Field(default=0, ge=0)
    gpu: GpuOptions = Field(default_factory=GpuOptions)
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

    def model_post_init(self, context: Any) -> None:
        if self.walltime is not None:
            walltime_seconds(self.walltime)
        if self.min_jobs > self.max_jobs:
            raise ConfigError(f"slurm min_jobs {self.min_jobs} exceeds max_jobs "
                              f"{self.max_jobs}: lower min_jobs or raise max_jobs")
        for kind in ("cpu", "gpu"):
            self.threads(kind)  # raises when cores do not split over processes
        if self.gpu.gpus % self.job("gpu").processes:
            raise ConfigError(
                f"slurm gpu.gpus {self.gpu.gpus} cannot be shared by "
                f"{self.job('gpu').processes} worker processes: make gpu.processes divide it")
        self.lifetime_seconds()

    # -- derived values ---------------------------------------------------------------

    def job(self, kind: str) -> JobShape:
        """Partition, cores, memory, processes and directives of a ``kind`` job."""
        if kind != "gpu":
            return JobShape(self.partition, self.cores, self.memory, self.processes,
                            tuple(self.directives))
        gpu = self.gpu
        return JobShape(
            gpu.partition if gpu.partition is not None else self.partition,
            gpu.cores if gpu.cores is not None else self.cores,
            gpu.memory if gpu.memory is not None else self.memory,
            gpu.processes if gpu.processes is not None else self.processes,
            (*self.directives, *gpu.directives, f"--gres=gpu:{gpu.gpus}"),
        )

    def threads(self, kind: str) -> int:
        """Threads of each worker process of a ``kind`` job."""
        job = self.job(kind)
        if job.cores % job.processes:
            where = "gpu." if kind == "gpu" else ""
            raise ConfigError(
                f"slurm {where}cores {job.cores} cannot be split over {job.processes} "
                f"worker processes: make {where}processes divide {where}cores")
        return job.cores // job.processes

    def slots(self, kind: str) -> int:
        """What one ``kind`` job offers: threads (CPU) or GPUs."""
        return self.gpu.gpus if kind == "gpu" else self.cores

    def max_for(self, kind: str) -> int:
        return self.gpu.max_jobs if kind == "gpu" else self.max_jobs

    def lifetime_seconds(self) -> tuple[float, float] | None:
        """(lifetime, stagger) of workers in seconds; None without walltime or lifetime."""
        wall = walltime_seconds(self.walltime) if self.walltime is not None else None
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
            raise ConfigError(
                f"slurm lifetime {life:g} s (+ stagger {stagger:g} s) reaches the walltime "
                f"{self.walltime!r}: SLURM would kill workers before they retire; shorten "
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
        f"{', '.join(FIELDS)} (gpu: {', '.join(GpuOptions.model_fields)})")


def resolve(**overrides: Any) -> SlurmOptions:
    """Options from ``overrides`` over the ``dscheduler.slurm`` settings, validated.

    A key in ``overrides`` wins with its value, even None (``account=None``
    clears a configured account; so does ``-o account=`` on the CLI); keys
    inside ``gpu={...}`` likewise.  ``gpu=None`` leaves the ``gpu`` group as
    configured.

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
    gpu_settings = dict(settings.get("slurm.gpu") or {})
    gpu_override = overrides.get("gpu")
    if isinstance(gpu_override, GpuOptions):
        gpu_override = gpu_override.model_dump(exclude_unset=True)
    if gpu_override is not None:
        if not isinstance(gpu_override, dict):
            raise ConfigError(f"slurm gpu={gpu_override!r} must be a mapping such as "
                              "{'gpus': 1, 'max_jobs': 2}")
        gpu_settings.update(gpu_override)
    values["gpu"] = {str(k).replace("-", "_"): v for k, v in gpu_settings.items()}
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
            continue
        parts.append(f"slurm {where}={problem.get('input')!r}: {message}")
    return "; ".join(parts)
