"""``ds.RunConfig``: a run's configuration and its two ids.

A subclass names which fields decide the environment (``ENV_FIELDS``) and
which never move outputs (``HASH_EXCLUDE``); every other field decides the
run.  From those::

    env_id      = short(digest("env.fields", {f: value for f in ENV_FIELDS}))
    config_hash = short(digest("run", {f: value for the other fields}))
    run_id      = f"{env_id}/{config_hash}"

``HASH_EXCLUDE`` holds fields such as ``label`` and ``resources``: where and
under which name a run happens cannot change its results, so they must not
move its outputs either.  Ids are computed once, at construction, without I/O;
a config whose values have no canonical form fails there, naming the field.
Instances are frozen: use ``cfg.model_copy(update={...})`` for a variant.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict

from .. import identity
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..envs import Env


_BAD_LABEL = re.compile(r"[/\\\x00-\x1f]")


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
        env = identity.digest("env.fields", {f: values[f] for f in self.ENV_FIELDS}, "")
        run = identity.digest("run", {f: values[f] for f in self._run_fields}, "")
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
        return self.identity_fields()
