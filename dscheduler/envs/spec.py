"""``ds.Env``: what an environment is made of, and its id.

The fields that decide the environment's content are hashed into ``env_id``:
the Python version, the requirements (normalised PEP 508, order-insensitive,
duplicates dropped) and the index options (find-links, index URLs, offline).
``image`` and ``smoke_imports`` are how it is stored and checked, not what it
holds, so they are left out of the id.  An env read from a registry checkpoint
(MLflow, Hugging Face: :mod:`.checkpoints`) is named, with no I/O, by the pinned
reference, the extra requirements and the options given; the checkpoint's own
metadata is read when the env is built (:meth:`Env.for_build`).
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
from packaging.version import InvalidVersion, Version
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)

from .. import identity
from ..errors import ConfigError
from . import build, checkpoints

if TYPE_CHECKING:
    from ..store import Store
    from .published import BuiltEnv

_PYTHON = re.compile(r"^3\.\d{1,2}(\.\d{1,3})?$")

#: Fields that decide an environment's content (and so its env_id).
ENV_FIELDS = ("python", "requirements", "find_links", "index_url", "extra_index_urls", "offline")

#: Name of the metadata a checkpoint carries (a JSON sidecar or zip member).
CHECKPOINT_METADATA = "dscheduler-env.json"
#: Where an anemoi checkpoint (a zip) keeps its metadata: ``provenance_training`` in it.
ANEMOI_METADATA = "anemoi-metadata/ai-models.json"
_METADATA_KEYS = {"python", "requirements", "find_links", "index_url", "extra_index_urls"}
_DIST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")


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


class CheckpointSource(BaseModel):
    """Where an env's checkpoint came from; kept in env.json's spec."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reference: str  # as given (may name a moving target: an alias, a branch)
    resolved: str  # pinned: a model version, a commit sha
    server: str = ""  # MLflow tracking URI or Hugging Face endpoint
    python: str | None = None  # given by the caller, over the metadata's
    sha256: str | None = None  # of the stored copy, once fetched (None: not read yet)
    path: str | None = None  # the stored copy, relative to the store

    def identity(self) -> dict[str, str]:
        return checkpoints.parse(self.resolved, server=self.server).identity()


def _no_option(value: str) -> str:
    if value.startswith("-"):
        raise ValueError(f"{value!r} is not a URL or path (it starts with '-')")
    return value


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
    # Set for an env read from a registry checkpoint: then it, not python and the
    # metadata's requirements, is hashed (see _identity).
    checkpoint: CheckpointSource | None = None

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
        return tuple(_no_option(str(v)) for v in value)

    @field_validator("index_url", "extra_index_urls")
    @classmethod
    def _urls(cls, value: Any) -> Any:
        for url in [value] if isinstance(value, str) else value or ():
            _no_option(url)
        return value

    def model_post_init(self, context: Any, /) -> None:
        if not self._digest:
            self._digest = identity.digest("env", self._identity(), "env")

    def _identity(self) -> dict[str, Any]:
        fields = {f: getattr(self, f) for f in ENV_FIELDS}
        if self.checkpoint is None:
            return fields
        return {**fields, "python": self.checkpoint.python,
                "checkpoint": self.checkpoint.identity()}

    def spec(self) -> dict[str, Any]:
        """The fields that decide this env's content, as plain JSON values (and, for a
        checkpoint's env, where the checkpoint came from)."""
        fields = {f: getattr(self, f) for f in ENV_FIELDS}
        if self.checkpoint is not None:
            fields["checkpoint"] = self.checkpoint.model_dump(mode="json")
        return fields

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

        ``path``: a local file or directory, or a registry reference (MLflow
        ``runs:/``, ``models:/``, web URLs; Hugging Face URLs, ``hf://``).  The
        metadata is JSON, either a sidecar ``<checkpoint>.dscheduler-env.json``
        (or ``dscheduler-env.json`` in a checkpoint directory), or a member named
        ``dscheduler-env.json`` inside a zip checkpoint (``torch.save`` files are
        zips)::

            {"python": "3.11", "requirements": ["torch==2.13.0", "numpy==1.26.4"]}

        Optional keys: ``find_links``, ``index_url``, ``extra_index_urls``.  An
        anemoi checkpoint's ``anemoi-metadata/ai-models.json`` member is read too
        (``provenance_training``: python and module versions).  A registry
        checkpoint's env_id needs no I/O (a moving reference is pinned first, by
        asking its server); its metadata is read when the env is built.
        """
        ref = checkpoints.parse(path)
        options = {k: v for k, v in options.items() if v is not None}
        if not ref.local:
            pinned = checkpoints.resolve(ref)
            source = CheckpointSource(reference=ref.reference, resolved=pinned.resolved,
                                      server=pinned.server, python=options.get("python"))
            return cls(requirements=tuple(extra_requirements), checkpoint=source, **options)
        meta = checked_metadata(read_checkpoint_metadata(Path(path)), str(path))
        fields = {**meta, **options}
        fields["requirements"] = [*meta.get("requirements", []), *extra_requirements]
        return cls(**fields)

    def for_build(self, store: Store) -> Env:
        """This env with its checkpoint's metadata read (fetched into ``store`` once);
        same env_id.  An env not read from a registry checkpoint is returned as it is."""
        source = self.checkpoint
        if source is None or source.sha256 is not None:
            return self
        ref = checkpoints.parse(source.resolved, server=source.server)
        path, fetched = checkpoints.fetch(store, ref)
        meta = checked_metadata(read_checkpoint_metadata(path), source.reference)
        given = {f: getattr(self, f) for f in self.model_fields_set - {"checkpoint"}}
        fields = {**meta, **given,
                  "requirements": [*meta.get("requirements", []), *self.requirements],
                  "checkpoint": source.model_copy(
                      update={"sha256": fetched["sha256"], "path": fetched["path"]})}
        try:
            env = Env(**fields)
        except ValidationError as err:
            raise ConfigError(f"checkpoint {source.reference!r}: its metadata makes no valid "
                              f"env: {err}") from None
        return env.with_identity(self.env_id, self.digest)


def checked_metadata(meta: dict[str, Any], where: str) -> dict[str, Any]:
    """``meta`` when it has only the keys an env takes from a checkpoint."""
    unknown = sorted(set(meta) - _METADATA_KEYS)
    if unknown:
        raise ConfigError(
            f"checkpoint metadata of {where} has unknown keys {unknown}; "
            f"allowed keys are {sorted(_METADATA_KEYS)}"
        )
    return meta


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
        found = _zip_metadata(path)
        if found is not None:
            return found
    if not path.exists():
        raise ConfigError(f"checkpoint {path} does not exist; accepted forms: {checkpoints.FORMS}")
    raise ConfigError(
        f"checkpoint {path} carries no environment metadata: write "
        f"{candidates[1].name} beside it (or {CHECKPOINT_METADATA} inside a checkpoint "
        'directory or zip) with {"python": "3.11", "requirements": [...]}'
    )


def _zip_metadata(path: Path) -> dict[str, Any] | None:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        for name in names:
            if name == CHECKPOINT_METADATA or name.endswith("/" + CHECKPOINT_METADATA):
                return _parse_metadata(zf.read(name).decode(), f"{path}:{name}")
        for name in names:
            if name == ANEMOI_METADATA or name.endswith("/" + ANEMOI_METADATA):
                where = f"{path}:{name}"
                return anemoi_env(_parse_metadata(zf.read(name).decode(), where), where)
    return None


def anemoi_env(meta: dict[str, Any], where: str) -> dict[str, Any]:
    """The env an anemoi checkpoint was trained in: ``provenance_training``'s python
    (major.minor) and ``module_versions``, pinned by distribution name
    (``distribution_names`` when given, else the module with '.' as '-').  Private
    modules, versions that are not PEP 440 and names that are not distribution
    names are left out; local labels (``+cu121``) are dropped, so that ``==`` matches
    the build on any index.  Every requirement is then checked as PEP 508."""
    prov = meta.get("provenance_training")
    if not isinstance(prov, dict) or not isinstance(prov.get("module_versions"), dict):
        raise ConfigError(f"{where}: an anemoi checkpoint's metadata needs "
                          "provenance_training.module_versions")
    names = prov.get("distribution_names") or {}
    requirements = []
    for module, version in sorted(prov["module_versions"].items()):
        name = names.get(module) if isinstance(names, dict) else None
        name = name or str(module).replace(".", "-")
        if str(module).startswith("_") or not _DIST_NAME.match(str(name)):
            continue
        try:
            requirements.append(f"{name}=={Version(str(version)).public}")
        except InvalidVersion:
            continue
    python = str(prov.get("python", ""))
    return {"python": ".".join(python.split(".")[:2]), "requirements": requirements} \
        if python else {"requirements": requirements}


def _parse_metadata(text: str, where: str) -> dict[str, Any]:
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(meta).__name__}")
    return meta
