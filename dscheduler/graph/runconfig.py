"""``ds.RunConfig``: a run's configuration and its two ids.

A subclass names the fields that decide the environment (``ENV_FIELDS``) and those
that never move outputs (``HASH_EXCLUDE``, e.g. ``label``, ``resources``)::

    env_id      = short(digest("env.fields", {f: value for f in ENV_FIELDS}))
    config_hash = short(digest("run", {f: value for the other fields}))
    run_id      = f"{env_id}/{config_hash}"

A RunConfig in a field (a run this run is on, :meth:`RunConfig.runs_on`) counts by
its ids, ``{"\\u0000config": {"env", "run"}}``, as a task argument does; in
ENV_FIELDS it counts in env_id by its env digest alone, and in config_hash by its
ids.  Ids are made once, at construction, with no I/O but ``ds.File`` contents; a
value without a canonical form fails there, naming the field.  Frozen: use
``cfg.model_copy(update={...})`` for a variant.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self, get_args

from pydantic import BaseModel, ConfigDict

from .. import identity
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..envs import Env


_BAD_LABEL = re.compile(r"[/\\\x00-\x1f]")

#: The tag of a RunConfig's identity, in fields and task arguments alike.
CONFIG_TAG = "\u0000config"


class RunConfig(BaseModel):
    """Base class of run configurations (pydantic, ``extra="forbid"``, frozen)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    ENV_FIELDS: ClassVar[tuple[str, ...]] = ()
    HASH_EXCLUDE: ClassVar[tuple[str, ...]] = ("label", "resources")


    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        fields = set(cls.model_fields)
        env_fields = tuple(cls.ENV_FIELDS)
        excluded = tuple(cls.HASH_EXCLUDE)
        # HASH_EXCLUDE's defaults name fields a subclass may not have: only
        # names that the subclass itself declares must exist.
        own_exclude = cls.__dict__.get("HASH_EXCLUDE")
        for name, declared in (("ENV_FIELDS", env_fields), ("HASH_EXCLUDE", own_exclude or ())):
            unknown = [f for f in declared if f not in fields]
            if unknown:
                raise ConfigError(
                    f"{cls.__name__}.{name} names {unknown}, which are not fields of "
                    f"{cls.__name__}; its fields are {sorted(fields)}"
                )
        both = sorted(set(env_fields) & set(excluded))
        if both:
            raise ConfigError(
                f"{cls.__name__}: {both} are in both ENV_FIELDS and HASH_EXCLUDE; "
                "a field either decides the environment or is left out of every hash"
            )
        cls.ENV_FIELDS = env_fields
        cls.HASH_EXCLUDE = excluded
        cls._run_fields = tuple(
            f for f in cls.model_fields if f not in env_fields and f not in excluded
        )
        # cfg.env() is written by the subclass; wrap it so the Env it returns
        # carries this config's env_id (docs/design.md §2: one meaning of env_id).
        own_env = cls.__dict__.get("env")
        if own_env is not None and not getattr(own_env, "_ds_wrapped", False):

            @functools.wraps(own_env)
            def env(self: RunConfig) -> Env:
                made = own_env(self)
                return made.with_identity(self.env_id, self.env_digest)

            env._ds_wrapped = True  # type: ignore[attr-defined]
            cls.env = env  # type: ignore[method-assign]

    _run_fields: ClassVar[tuple[str, ...]] = ()

    def model_post_init(self, context: Any, /) -> None:
        # The digests live in pydantic's private slot, set directly: declared
        # PrivateAttrs cost a deepcopy of their defaults per instance, a large
        # part of the time of making 100,000 configs (docs/benchmarks.md).
        values = self.__dict__
        label = values.get("label")
        if isinstance(label, str) and (label in (".", "..") or _BAD_LABEL.search(label)):
            raise ConfigError(
                f"label {label!r} looks like a path; a label names a run for people: use "
                "letters, digits, spaces and punctuation other than '/' and '\\'"
            )
        env_values = {f: values[f] for f in self.ENV_FIELDS}
        run_values = {f: values[f] for f in self._run_fields}
        for name, value in env_values.items():
            if isinstance(value, RunConfig):  # an env derived from another run's env
                env_values[name] = {CONFIG_TAG: {"env": value.env_digest}}
                run_values[name] = value
        env = identity.digest("env.fields", env_values, "")
        run = identity.digest("run", run_values, "")
        object.__setattr__(self, "__pydantic_private__", {"env": env, "run": run})

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; with ``update`` the result is validated and hashed again."""
        if not update:
            return super().model_copy(deep=deep)
        return self.model_validate({**self.__dict__, **update})

    @property
    def env_digest(self) -> str:
        return self.__pydantic_private__["env"]  # type: ignore[index]

    @property
    def config_digest(self) -> str:
        return self.__pydantic_private__["run"]  # type: ignore[index]

    @property
    def env_id(self) -> str:
        """Id of the environment this run needs (its ENV_FIELDS only)."""
        return self.env_digest[: identity.SHORT]

    @property
    def config_hash(self) -> str:
        """Id of every other field except HASH_EXCLUDE."""
        return self.config_digest[: identity.SHORT]

    @property
    def run_id(self) -> str:
        return f"{self.env_id}/{self.config_hash}"

    def env(self) -> Env:
        """The environment this run needs; subclasses define it."""
        raise ConfigError(
            f"{type(self).__name__} does not say how to make its environment: define "
            "`def env(self): return ds.Env.from_checkpoint(self.checkpoint)` "
            "(or ds.Env(requirements=[...])) on the class, or pass env= to the task"
        )

    def identity_fields(self) -> dict[str, Any]:
        """What identifies this config in a node key: its two digests."""
        return {"env": self.env_digest, "run": self.config_digest}

    def __ds_identity__(self) -> dict[str, Any]:
        """How this config counts wherever it is hashed: in another config's field
        and as a task argument alike."""
        return {CONFIG_TAG: self.identity_fields()}

    def runs_on(self) -> dict[str, RunConfig]:
        """The runs this run is on: its fields that hold another RunConfig, by name."""
        return {name: value for name, value in self.__dict__.items()
                if isinstance(value, RunConfig)}


def run_ref_fields(model: type[RunConfig]) -> dict[str, tuple[type[RunConfig], ...]]:
    """The fields of ``model`` that may hold another run, with the RunConfig classes
    they accept (from the annotation: ``Forecast``, ``Forecast | None``, ``A | B``)."""
    out: dict[str, tuple[type[RunConfig], ...]] = {}
    for name, info in model.model_fields.items():
        kinds = _run_classes(info.annotation)
        if kinds:
            out[name] = kinds
    return out


def _run_classes(annotation: Any) -> tuple[type[RunConfig], ...]:
    if isinstance(annotation, type):
        return (annotation,) if issubclass(annotation, RunConfig) else ()
    return tuple(k for arg in get_args(annotation) if not isinstance(arg, str)
                 for k in _run_classes(arg))


def resolve_run_refs(model: type[RunConfig], entry: Mapping[str, Any],
                     by_label: Mapping[str, RunConfig]) -> dict[str, Any]:
    """``entry`` (one run of an experiment file) with each run field given as a label
    replaced by the run of that label among ``by_label`` (the runs listed before it)."""
    out = dict(entry)
    for name, kinds in run_ref_fields(model).items():
        label = out.get(name)
        if not isinstance(label, str):
            continue
        run = by_label.get(label)
        if run is None:
            raise ConfigError(
                f"{name}: {label!r} is the label of no run listed before this one; "
                f"known labels: {sorted(by_label)}. Runs another run is on come first"
            )
        if not isinstance(run, kinds):
            raise ConfigError(
                f"{name}: the run labelled {label!r} is a {type(run).__name__}; this field "
                f"takes a {' or '.join(k.__name__ for k in kinds)}"
            )
        out[name] = run
    return out
