"""Environment builds: each ``env_id`` built once, by whoever gets there first.

``build_env(store, env)`` (the steps: docs/design.md §5.3; their reasons: §6, §14.3) returns the
published env, else builds it under the lease ``locks/env-{env_id}.lease``: a ``uv`` venv in
node-local scratch (kind ``"dir"``: in the store's temporary directory, kept as
``envs/{env_id}/venv``), reproducible ``.pyc`` files and image, an import smoke test (the steps:
buildsteps.py, called in order by ``_attempt``); then it publishes the image
``images/{lock_id}.sqsh`` (create-once) and, by one rename, ``envs/{env_id}/`` holding build.log,
image.sqsh and, written last, env.json.  A failure raises :class:`EnvBuildError` naming the
requirement or the module (builderrors.py), with the output's tail and the kept log
``envs/{env_id}/build-failed.log``; nothing is published.  A killed builder leaves only temporary
names (``envs/.{env_id}.*.partial``, scratch ``dscheduler-build-{env_id}-{pid}-*``) that the next
lease holder removes.  ``bin/python`` links to the machine's interpreter, which must exist at
that path on every node (the path is part of ``lock_digest``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import logging
import os
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .. import identity, settings
from ..errors import CommandError, EnvBuildError
from ..store import atomic
from . import commands
from .builderrors import build_error
from .buildlog import BuildLog
from .buildsteps import (
    CacheBehindIndex,
    Packages,
    Venv,
    bytecode_cache,
    check_resolution,
    compile_and_lock,
    install,
    make_venv,
    remove_scratch,
    smoke_modules,
    smoke_test,
    squash,
    start_compilers,
    take_scratch,
)
from .interpreters import Interpreter, find_interpreter
from .published import RECORD_FORMAT, BuiltEnv, from_record, published_env
from .reproducible import CompileStats, TreeStats, normalise_lock
from .uv import Command, index_options, uv_bin, uv_cache_dir

if TYPE_CHECKING:
    from ..store import EnvPaths, Store
    from ..store.lease import Lease

log = logging.getLogger("dscheduler.build")

KINDS = ("squashfs", "dir")
#: Prefix compiled into the .pyc files of images (docs/design.md §6).
IMAGE_PREFIX = "/env"
_SQUASHED = ".image.sqsh.partial"  # the new image, in the env's directory in the making


class EnvLike(Protocol):
    """What a build reads of an env: :class:`dscheduler.envs.spec.Env` is one.  (``Env.build``
    calls :func:`build_env`, so this module does not import spec.py: that would be a
    circle.)"""

    @property
    def env_id(self) -> str: ...
    @property
    def digest(self) -> str: ...
    @property
    def python(self) -> str: ...
    @property
    def requirements(self) -> tuple[str, ...]: ...
    @property
    def find_links(self) -> tuple[str, ...]: ...
    @property
    def index_url(self) -> str | None: ...
    @property
    def extra_index_urls(self) -> tuple[str, ...]: ...
    @property
    def offline(self) -> bool: ...
    @property
    def image(self) -> str | None: ...
    @property
    def smoke_imports(self) -> tuple[str, ...] | None: ...
    def spec(self) -> dict[str, Any]: ...
    def for_build(self, store: Store) -> EnvLike: ...


def uv_index(env: EnvLike, offline: bool | None = None) -> Command:
    """uv's index options for ``env`` (``offline``: default, the env's own)."""
    return index_options(env.find_links, env.index_url, env.extra_index_urls,
                         env.offline if offline is None else offline)


# -- building ----------------------------------------------------------------------------


def build_env(
    store: Store,
    env: EnvLike,
    *,
    image: str | None = None,
    smoke_imports: Sequence[str] | None = None,
    uv_cache: str | os.PathLike[str] | None = None,
    scratch: str | os.PathLike[str] | None = None,
    pyc_cache: str | os.PathLike[str] | bool | None = None,
    ttl: float | None = None,
    timeout: float | None = None,
) -> BuiltEnv:
    """Build ``env`` in ``store`` once, or return the published one.

    Parameters
    ----------
    store
        Where the env is published (``envs/{env_id}/``).
    env
        What to build; its ``env_id`` names it.
    image
        ``"squashfs"`` or ``"dir"`` (default: ``env.image``, then the setting
        ``env.image``).  It decides how a new build is kept; an env already
        published is returned as it is.
    smoke_imports
        Modules to import as a check (default: ``env.smoke_imports``, the
        setting, else the top-level modules of the requirements); ``[]``
        skips the check.
    uv_cache, scratch
        Node-local directories (settings ``env.uv_cache``, ``env.scratch``).
    pyc_cache
        Node-local bytecode cache shared by image builds (setting
        ``env.pyc_cache``); False: compile everything.
    ttl
        The build lease's time-to-live (setting ``env.build_ttl``).
    timeout
        Seconds to wait for another builder's lease (None: wait; a dead
        builder's lease is broken after its ttl).

    Returns
    -------
    BuiltEnv
        ``built`` is True when this call did the build.

    Raises
    ------
    EnvBuildError
        Naming the requirement or module that failed, with the tail of the
        output and the kept log; nothing is published.
    """
    found = published_env(store, env.env_id)
    if found is not None:
        identity.check_collision(env.digest, found.digest, str(found.paths.record))
        return found
    kind = image or env.image or settings.get("env.image")
    if kind not in KINDS:
        raise EnvBuildError(f"image={kind!r} is not one of {list(KINDS)}")
    if kind == "squashfs" and shutil.which("mksquashfs") is None:
        raise EnvBuildError(
            "mksquashfs not found: install squashfs-tools (apt-get install squashfs-tools), "
            "or keep envs as directories with image='dir' (setting env.image: dir)"
        )
    env = env.for_build(store)  # a registry checkpoint's env: its metadata, read now
    store.ensure()
    lease = store.lease(store.env_lease_name(env.env_id), ttl=settings.get("env.build_ttl", ttl))
    waited = time.perf_counter()
    lease.acquire(timeout=timeout)
    try:
        found = published_env(store, env.env_id)
        if found is not None:
            log.info("env %s: published by another builder meanwhile", env.env_id)
            identity.check_collision(env.digest, found.digest, str(found.paths.record))
            return found
        job = _Job(
            store, env, kind,
            smoke_imports=_choose_smoke(env, smoke_imports),
            uv_cache=uv_cache_dir(uv_cache),
            scratch=settings.node_local("env.scratch", "dscheduler-build", scratch),
            # only images use it: a dir env is compiled with its own path
            pyc_cache=_pyc_cache_dir(pyc_cache) if kind == "squashfs" else None,
            lease=lease,
        )
        return _build(job, lease_wait=round(time.perf_counter() - waited, 3))
    finally:
        lease.release()


def _pyc_cache_dir(override: str | os.PathLike[str] | bool | None) -> Path | None:
    """The setting ``env.pyc_cache`` as a directory; None when it is false."""
    value = settings.get("env.pyc_cache", None if override is True else override)
    if value is False:
        return None
    return settings.node_local("env.pyc_cache", "dscheduler-pyc-cache", value)


def _choose_smoke(env: EnvLike, override: Sequence[str] | None) -> list[str] | None:
    for value in (override, env.smoke_imports, settings.get("env.smoke_imports")):
        if value is not None:
            return list(value)
    return None  # decided after the install, from what was installed


@dataclass(frozen=True)
class _Job:
    """One build, as :func:`build_env` decided it: what, where, and under which lease."""

    store: Store
    env: EnvLike
    kind: str  # "squashfs" or "dir"
    smoke_imports: list[str] | None  # None: the requirements' top-level modules
    uv_cache: Path
    scratch: Path
    pyc_cache: Path | None  # the node's bytecode cache (images only)
    lease: Lease

    @property
    def paths(self) -> EnvPaths:
        return self.store.env(self.env.env_id)


@dataclass(frozen=True)
class _Made:
    """What one go at the venv made: checked, locked, and (an image) squashed."""

    lock: str
    lock_digest: str
    tree: TreeStats
    bytecode: CompileStats
    smoke_imports: list[str]
    squashed: Path | None  # the new image, unpublished (None: a dir env, or the image exists)


# -- the build, step by step --------------------------------------------------------------


def _build(job: _Job, lease_wait: float) -> BuiltEnv:
    """Build ``job`` under its lease: in scratch and in the env's directory in the making
    (``out``), renamed into place by :func:`atomic.publish_dir` once env.json is written."""
    start = time.perf_counter()
    env_id, paths = job.env.env_id, job.paths
    work = take_scratch(job.scratch, job.store, env_id)
    published = False
    try:
        with atomic.publish_dir(paths.dir) as out:
            try:
                blog = BuildLog(out / paths.log.name, env_id)
            except OSError as err:
                raise _failure(job, err, None) from err
            try:
                record = _make(blog, job, out, work)
                record["timings"] = {"lease_wait": lease_wait, **blog.timings,
                                     "total": round(time.perf_counter() - start, 3)}
                blog.write(f"\n== done in {record['timings']['total']} s\n")
                blog.close()
                _fix_modes(job, out)
                # env.json last: it says "published".
                atomic.write_json(out / paths.record.name, record)
                job.lease.check()  # never publish after losing the lease
                published = True
            except BaseException as err:
                blog.close()
                failure = _failure(job, err, out / paths.log.name)
                if failure is err:
                    raise
                raise failure from err
    finally:
        remove_scratch(work, published)
    log.info("env %s: published (%s s)", env_id, record["timings"]["total"])
    built = from_record(job.store, paths, atomic.read_json(paths.record), built=True)
    if built is None:
        raise EnvBuildError(f"env {env_id} vanished right after it was published")
    return built


def _make(blog: BuildLog, job: _Job, out: Path, work: Path) -> dict[str, Any]:
    """The venv, checked (made again from the index when the node's uv cache was behind it),
    and its image published; returns env.json's content, without the timings."""
    venv = _venv(job, find_interpreter(job.env.python), out, work)
    try:
        made = _attempt(blog, job, venv, out, from_index=False)
    except CacheBehindIndex as behind:
        blog.write(f"\n== the index resolves otherwise than the node's uv cache did "
                   f"({behind}): building again, installing from the index\n")
        shutil.rmtree(venv.path)  # back to before make_venv
        (out / _SQUASHED).unlink(missing_ok=True)
        made = _attempt(blog, job, venv, out, from_index=True)
    image, reused, image_bytes = _publish_image(job, out, made)
    return _record(job, venv, made, image, reused, image_bytes)


def _attempt(blog: BuildLog, job: _Job, venv: Venv, out: Path, *, from_index: bool) -> _Made:
    """One go at the venv: make, install, compile and lock, smoke test beside mksquashfs."""
    env = job.env
    blog.write(f"env {env.env_id} ({env.digest}) on {socket.gethostname()}, "
               f"pid {os.getpid()}\nspec: {env.spec()}\n")
    make_venv(blog, venv)
    with contextlib.ExitStack() as alongside:  # commands beside the steps: killed on a failure
        cache = bytecode_cache(blog, venv, job.pyc_cache)
        compilers = start_compilers(blog, venv, cache, alongside)  # beside the install
        resolving = install(blog, venv, _packages(job), from_index=from_index,
                            alongside=alongside)
        modules = smoke_modules(job.smoke_imports, env.requirements, venv.path)
        compiled = compile_and_lock(blog, venv, cache, compilers, modules, alongside)
        lock_digest = lock_digest_of(venv.interp, compiled.lock)
        smoking = compiled.smoking
        if smoking is None:
            smoking = smoke_test(blog, venv, modules, alongside)
        squashed = None
        if job.kind == "squashfs":  # mksquashfs beside the smoke test: both only read the tree
            squashed = squash(blog, venv, job.store, lock_digest, out / _SQUASHED)
        if smoking is not None:
            blog.finish(smoking)  # the image is published only once this passed
        check_resolution(blog, resolving, compiled.lock)
    return _Made(compiled.lock, lock_digest, compiled.tree, compiled.bytecode, modules,
                 squashed)


def _venv(job: _Job, interp: Interpreter, out: Path, work: Path) -> Venv:
    # A dir env is built in place (its home is the store: building elsewhere
    # would copy every file once more) and compiled with its final path.
    if job.kind == "dir":
        return Venv(out / job.paths.venv.name, str(job.paths.venv), work, interp,
                    commands.clean_env())
    return Venv(work / "env", IMAGE_PREFIX, work, interp, commands.clean_env())


def _packages(job: _Job) -> Packages:
    env = job.env
    return Packages(env.requirements, uv_index(env), uv_index(env, offline=True), env.offline,
                    job.uv_cache, copy=job.kind == "dir")


# -- the image and the record -------------------------------------------------------------


def _publish_image(job: _Job, out: Path, made: _Made) -> tuple[str | None, bool, int]:
    """images/{lock_id}.sqsh, created once (os.link); returns (path, reused, bytes)."""
    if job.kind != "squashfs":
        return None, False, 0
    store = job.store
    image = store.image(identity.short_id(made.lock_digest))
    tmp, reused = made.squashed, made.squashed is None
    if tmp is not None:
        sidecar = store.image_record(image)
        info = {"lock_digest": made.lock_digest, "lock": made.lock,
                "built_for": job.env.env_id,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        if not atomic.create_once(sidecar, atomic.json_text(info).encode()):
            stored = atomic.read_json(sidecar) or {}
            identity.check_collision(made.lock_digest, stored.get("lock_digest"), str(sidecar))
        try:
            os.link(tmp, image)
        except FileExistsError:
            reused = True  # another env with the same lock was faster: same content
        tmp.unlink()
    os.symlink(store.image_link(image), out / job.paths.image.name)
    return image.relative_to(store.root).as_posix(), reused, image.stat().st_size


def _fix_modes(job: _Job, out: Path) -> None:
    """The store's modes for what is published (docs/design.md §3): in a group store a
    dir env's venv (normalised to 0755/0644), which every member must be able to
    remove.  (The log is created with the store's mode by :class:`BuildLog`.)"""
    if job.kind == "dir" and atomic.modes_for(out).group:
        atomic.fix_tree(out / job.paths.venv.name, always=True)


def _record(job: _Job, venv: Venv, made: _Made, image: str | None, reused: bool,
            image_bytes: int) -> dict[str, Any]:
    """env.json: spec, full digest, lock, tools, sizes (timings are added by _build)."""
    env, interp, kind = job.env, venv.interp, job.kind
    return {
        "format": RECORD_FORMAT,
        "env_id": env.env_id,
        "digest": env.digest,
        "spec": env.spec(),
        "kind": kind,
        "python": {"version": interp.version, "interpreter": str(interp.path),
                   "implementation": interp.implementation},
        "lock": made.lock,
        "lock_digest": made.lock_digest,
        "image": image,
        "image_reused": reused,
        "venv": job.paths.venv.relative_to(job.store.root).as_posix()
        if kind == "dir" else None,
        "compile_prefix": venv.prefix,
        "smoke_imports": made.smoke_imports,
        "tools": {"uv": commands.version_of(uv_bin(), "--version"),
                  "python": interp.version,
                  "mksquashfs": commands.version_of("mksquashfs", "-version")
                  if kind == "squashfs" else None,
                  "dscheduler": importlib.metadata.version("dscheduler")},
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "sizes": {"files": made.tree.files, "venv_bytes": made.tree.bytes,
                  "image_bytes": image_bytes},
        "bytecode_cache": {"dir": str(job.pyc_cache) if job.pyc_cache else None,
                           **dataclasses.asdict(made.bytecode)},
    }


# -- failures ---------------------------------------------------------------------------


def _failure(job: _Job, err: BaseException, log_path: Path | None) -> BaseException:
    """The EnvBuildError for ``err``; keeps the log as envs/{id}/build-failed.log."""
    if not isinstance(err, CommandError | OSError | EnvBuildError):
        return err
    paths = job.paths
    kept: Path | None = None
    if log_path is not None:
        try:
            atomic.write_bytes(paths.failed_log, log_path.read_bytes())
            kept = paths.failed_log
        except OSError:
            # Most likely the very disk that is full; leave no empty env dir.
            with contextlib.suppress(OSError):
                paths.dir.rmdir()
    return build_error(
        err, f"env {job.env.env_id}", job.env.requirements, kept,
        places=f"scratch {job.scratch}, store {job.store.root}",
    )


def lock_digest_of(interp: Interpreter, lock: str) -> str:
    """Digest of what decides an image's content: the packages and the interpreter.

    The interpreter's path is included because ``bin/python`` in the image
    links to it; its version because ``pyvenv.cfg`` names it.
    """
    return identity.digest(
        "lock",
        {"python": interp.version, "interpreter": str(interp.path),
         "packages": normalise_lock(lock)},
    )
