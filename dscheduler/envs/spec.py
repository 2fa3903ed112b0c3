"""``ds.Env``: what an environment is made of, and its id.

The fields that decide the environment's content are hashed into ``env_id``:
the Python version, the requirements (normalised PEP 508, order-insensitive,
duplicates dropped) and the index options (find-links, index URLs, offline).
``image`` and ``smoke_imports`` are how it is stored and checked, not what it
holds, so they are left out of the id.
"""

from __future__ import annotations

import json
import re
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from .. import identity
from ..errors import ConfigError
from . import build

if TYPE_CHECKING:
    from ..store import Store
    from .published import BuiltEnv

_PYTHON = re.compile(r"^3\.\d{1,2}(\.\d{1,3})?$")

#: Fields that decide an environment's content (and so its env_id).
ENV_FIELDS = ("python", "requirements", "find_links", "index_url", "extra_index_urls", "offline")

#: Name of the metadata a checkpoint carries (a JSON sidecar or zip member).
CHECKPOINT_METADATA = "dscheduler-env.json"


def _running_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def normalise_requirement(text: str) -> str:
    """A requirement in PEP 508 normal form: ``NumPy >=1.2`` -> ``numpy>=1.2``."""
    try:
        req = Requirement(text)
    except InvalidRequirement as err:
        raise ConfigError(
            f"requirement {text!r} is not valid PEP 508 ({err}); "
            "write it like 'numpy==1.26.4' or 'xarray>=2024.1'"
        ) from None
    req.name = canonicalize_name(req.name)
    return str(req)


class Env(BaseModel):
    """An environment: Python version, requirements and where packages come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    python: str = Field(default_factory=_running_python)
    requirements: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    offline: bool = False
    # Not hashed: how the env is kept and checked does not change its content.
    image: Literal["squashfs", "dir"] | None = None
    smoke_imports: tuple[str, ...] | None = None

    _digest: str = PrivateAttr(default="")

    @field_validator("python")
    @classmethod
    def _check_python(cls, value: str) -> str:
        if not _PYTHON.match(value):
            raise ValueError(
                f"python={value!r} is not a version like '3.11'; give major.minor "
                "of an interpreter installed on the machine"
            )
        return value

    @field_validator("requirements", mode="before")
    @classmethod
    def _normalise(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        return tuple(sorted({normalise_requirement(r) for r in value}))

    @field_validator("find_links", mode="before")
    @classmethod
    def _links(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str | Path):
            value = [value]
        return tuple(str(v) for v in value)

    def model_post_init(self, context: Any, /) -> None:
        if not self._digest:
            self._digest = identity.digest("env", self.spec(), "env")

    def spec(self) -> dict[str, Any]:
        """The fields that decide this env's content, as plain JSON values."""
        return {f: getattr(self, f) for f in ENV_FIELDS}

    @property
    def digest(self) -> str:
        return self._digest

    @property
    def env_id(self) -> str:
        return self._digest[: identity.SHORT]

    def with_identity(self, env_id: str, full_digest: str) -> Env:
        """A copy that carries another owner's id (a RunConfig's ``env_id``)."""
        if full_digest[: identity.SHORT] != env_id:
            raise ValueError(f"env_id {env_id} is not the prefix of {full_digest}")
        copy = self.model_copy()
        copy._digest = full_digest
        return copy

    def __ds_identity__(self) -> str:
        return self._digest

    def build(self, store: Store, **options: Any) -> BuiltEnv:
        """Build this env in ``store`` once, or return the published one.

        Options are those of :func:`dscheduler.envs.build.build_env`.
        """
        return build.build_env(store, self, **options)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, extra_requirements: list[str] | tuple[str, ...] = (), **options: Any
    ) -> Env:
        """The env a checkpoint was trained in, from the metadata it carries.

        The metadata is JSON, either a sidecar ``<checkpoint>.dscheduler-env.json``
        (or ``dscheduler-env.json`` in a checkpoint directory), or a member named
        ``dscheduler-env.json`` inside a zip checkpoint (``torch.save`` files are
        zips)::

            {"python": "3.11", "requirements": ["torch==2.13.0", "numpy==1.26.4"]}

        Optional keys: ``find_links``, ``index_url``, ``extra_index_urls``.
        """
        meta = read_checkpoint_metadata(Path(path))
        allowed = {"python", "requirements", "find_links", "index_url", "extra_index_urls"}
        unknown = sorted(set(meta) - allowed)
        if unknown:
            raise ConfigError(
                f"checkpoint metadata of {path} has unknown keys {unknown}; "
                f"allowed keys are {sorted(allowed)}"
            )
        fields = {**meta, **options}
        fields["requirements"] = [*meta.get("requirements", []), *extra_requirements]
        return cls(**fields)


def read_checkpoint_metadata(path: Path) -> dict[str, Any]:
    """The env metadata a checkpoint carries; a clear error when it has none."""
    candidates = [
        path / CHECKPOINT_METADATA,
        path.with_name(path.name + "." + CHECKPOINT_METADATA),
    ]
    for candidate in candidates:
        if candidate.is_file():
            return _parse_metadata(candidate.read_text(), str(candidate))
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if name == CHECKPOINT_METADATA or name.endswith("/" + CHECKPOINT_METADATA):
                    return _parse_metadata(zf.read(name).decode(), f"{path}:{name}")
    if not path.exists():
        raise ConfigError(f"checkpoint {path} does not exist")
    raise ConfigError(
        f"checkpoint {path} carries no environment metadata: write "
        f"{candidates[1].name} beside it (or {CHECKPOINT_METADATA} inside a checkpoint "
        'directory or zip) with {"python": "3.11", "requirements": [...]}'
    )


def _parse_metadata(text: str, where: str) -> dict[str, Any]:
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(meta).__name__}")
    return meta
