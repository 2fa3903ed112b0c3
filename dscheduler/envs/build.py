"""Environment builds: each ``env_id`` built once, by whoever gets there first.

``build_env(store, env)`` (the steps: docs/design.md §5.3; their reasons: §6, §14.3) returns the
published env, else builds it under the lease ``locks/env-{env_id}.lease``: a ``uv`` venv in
node-local scratch (kind ``"dir"``: in the store's temporary directory, kept as
``envs/{env_id}/venv``), reproducible ``.pyc`` files and image, an import smoke test; then it
publishes the image ``images/{lock_id}.sqsh`` (create-once) and, by one rename,
``envs/{env_id}/`` holding build.log, image.sqsh and, written last, env.json.

A failure raises :class:`EnvBuildError` naming the requirement or the module, with the output's
tail and the kept log ``envs/{env_id}/build-failed.log``; nothing is published.  A killed builder
leaves only temporary names (``envs/.{env_id}.*.partial``, scratch
``dscheduler-build-{env_id}-{pid}-*``) that the next lease holder removes.  ``bin/python`` links
to the machine's interpreter, which must exist at that path on every node (the path is part of
``lock_digest``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import importlib.metadata
import importlib.util
import logging
import os
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from packaging.requirements import Requirement

from .. import identity, settings
from ..errors import CommandError, EnvBuildError, tail
from ..store import atomic
from ..store.lease import process_alive
from . import commands, smoke
from .buildlog import BuildLog, Running
from .compiling import Compilers, cores, sources
from .interpreters import Interpreter, find_interpreter
from .published import RECORD_FORMAT, BuiltEnv, from_record, published_env
from .reproducible import (
    CompileStats,
    PycCache,
    normalise_lock,
    normalise_tree,
    normalise_uv_cache_records,
    squash_command,
)
from .uv import (
    Command,
    explain_uv_failure,
    index_options,
    install_command,
    resolve_command,
    uv_bin,
    uv_cache_dir,
)

if TYPE_CHECKING:
    from ..store import Store
    from ..store.lease import Lease

log = logging.getLogger("dscheduler.build")

KINDS = ("squashfs", "dir")
#: Prefix compiled into the .pyc files of images (docs/design.md §6).
IMAGE_PREFIX = "/env"
INVALIDATION = "unchecked-hash"
_bytecode_tags: dict[str, tuple[str, str]] = {}  # interpreter path -> (cache tag, magic)


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
        builder = _Builder(
            store, env, kind,
            smoke_imports=_choose_smoke(env, smoke_imports),
            uv_cache=uv_cache_dir(uv_cache),
            scratch=settings.node_local("env.scratch", "dscheduler-build", scratch),
            # only images use it: a dir env is compiled with its own path
            pyc_cache=_pyc_cache_dir(pyc_cache) if kind == "squashfs" else None,
            lease=lease,
        )
        builder.timings["lease_wait"] = round(time.perf_counter() - waited, 3)
        return builder.run()
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


class _CacheBehindIndex(Exception):
    """The index resolves otherwise than the install from the node's uv cache did."""


class _Builder:
    """One build, under the env's lease: the steps of :meth:`_build`, in order.

    ``out`` is the env's directory in the making (renamed into place at the
    end), ``work`` its node-local scratch directory; each step leaves what
    the next one needs on ``self``.
    """

    def __init__(
        self, store: Store, env: EnvLike, kind: str, *, smoke_imports: list[str] | None,
        uv_cache: Path, scratch: Path, pyc_cache: Path | None, lease: Lease,
    ) -> None:
        self.store = store
        self.env = env
        self.kind = kind
        self.smoke_imports = smoke_imports
        self.uv_cache = uv_cache
        self.scratch = scratch
        self.pyc_cache = pyc_cache
        self.compile_stats = CompileStats()
        self.smoking: Running | None = None  # the smoke test, when started early
        self.cache: PycCache | None = None  # the node's bytecode cache, for an image
        self.compilers: Compilers | None = None  # its compile workers
        self.resolving: Running | None = None  # `uv pip compile`, beside an install from cache
        self.from_index = False  # True: install from the index (the cache was behind it)
        self.lease = lease
        self.paths = store.env(env.env_id)
        self.timings: dict[str, float] = {}
        self.subenv = commands.clean_env()
        # Set by run() and the steps:
        self.out = self.work = self.venv = self.python = scratch
        self.prefix = IMAGE_PREFIX
        self._interp: Interpreter | None = None
        self.lock = self.lock_digest = ""
        self.squashed: Path | None = None

    @property
    def interp(self) -> Interpreter:
        if self._interp is None:
            self._interp = find_interpreter(self.env.python)
        return self._interp

    # -- the whole build -------------------------------------------------------------

    def run(self) -> BuiltEnv:
        start = time.perf_counter()
        published = False
        settings.private_dir(self.scratch, "env.scratch")  # checked again at each use
        self._remove_leftovers()
        self.work = Path(tempfile.mkdtemp(
            prefix=f"dscheduler-build-{self.env.env_id}-{os.getpid()}-", dir=self.scratch
        ))
        try:
            with atomic.publish_dir(self.paths.dir) as out:
                self.out = out
                try:
                    blog = BuildLog(out / self.paths.log.name, self.env.env_id)
                except OSError as err:
                    raise self._failure(err, None) from err
                try:
                    record = self._build(blog)
                    record["timings"] = {**self.timings, **blog.timings,
                                         "total": round(time.perf_counter() - start, 3)}
                    blog.write(f"\n== done in {record['timings']['total']} s\n")
                    blog.close()
                    self._fix_modes(out)
                    # env.json last: it says "published".
                    atomic.write_json(out / self.paths.record.name, record)
                    self.lease.check()  # never publish after losing the lease
                    published = True
                except BaseException as err:
                    blog.close()
                    failure = self._failure(err, out / self.paths.log.name)
                    if failure is err:
                        raise
                    raise failure from err
        finally:
            if published:
                _remove_aside(self.work)
            else:
                shutil.rmtree(self.work, ignore_errors=True)
        log.info("env %s: published (%s s)", self.env.env_id, record["timings"]["total"])
        built = from_record(self.store, self.paths, atomic.read_json(self.paths.record),
                            built=True)
        if built is None:
            raise EnvBuildError(f"env {self.env.env_id} vanished right after it was published")
        return built

    def _build(self, blog: BuildLog) -> dict[str, Any]:
        try:
            stats = self._steps(blog)
        except _CacheBehindIndex as behind:
            blog.write(f"\n== the index resolves otherwise than the node's uv cache did "
                       f"({behind}): building again, installing from the index\n")
            self._start_over()
            stats = self._steps(blog)
        image, reused, image_bytes = self._publish_image()
        return self._record(stats, image, reused, image_bytes)

    def _steps(self, blog: BuildLog) -> Any:
        self._make_venv(blog)
        try:
            self._start_compilers(blog)  # they need the interpreter alone: beside the install
            self._install(blog)
            stats = self._compile_and_lock(blog)
            self._check_and_squash(blog)
            self._check_resolution(blog)
        except BaseException:
            for running in (self.resolving, self.smoking):  # the smoke test: started early
                if running is not None:
                    running.kill()
            if self.compilers is not None:
                self.compilers.kill()
            raise
        return stats

    def _start_over(self) -> None:
        """Back to before :meth:`_make_venv`, installing from the index this time."""
        self.from_index = True
        shutil.rmtree(self.venv)
        if self.squashed is not None:
            self.squashed.unlink(missing_ok=True)
        self.compile_stats = CompileStats()
        self.resolving = self.smoking = self.compilers = self.cache = self.squashed = None

    # -- steps ---------------------------------------------------------------------------

    def _make_venv(self, blog: BuildLog) -> None:
        """``uv venv --relocatable`` with an interpreter already on this machine."""
        env, interp = self.env, self.interp
        blog.write(
            f"env {env.env_id} ({env.digest}) on {socket.gethostname()}, pid {os.getpid()}\n"
            f"spec: {env.spec()}\n"
        )
        # A dir env is built in place (its home is the store: building elsewhere
        # would copy every file once more) and compiled with its final path.
        self.venv = self.out / self.paths.venv.name if self.kind == "dir" else self.work / "env"
        self.prefix = str(self.paths.venv) if self.kind == "dir" else IMAGE_PREFIX
        self.python = self.venv / "bin" / "python"
        with blog.phase("venv", f"python {interp.version} at {interp.path}"):
            blog.run("venv", [uv_bin(), "venv", "--relocatable", "--no-python-downloads",
                              "--python", interp.path, self.venv], env=self.subenv)

    def _install(self, blog: BuildLog) -> None:
        """``uv pip install`` with the node-local cache and the env's index options.

        From the cache alone when it can, while ``uv pip compile`` asks the
        index alongside: uv asks it again about every package (a network
        round trip each, 0.27 s of a 0.45 s install here), which need not hold
        up the compile.  :meth:`_check_resolution` compares the two before
        anything is published; should the index say otherwise (a newer
        version of an unpinned package), the build starts over from the index.
        """
        with blog.phase("install", " ".join(self.env.requirements) or "(no requirements)"):
            if self.env.requirements:
                self._install_requirements(blog)
            normalise_uv_cache_records(smoke.site_packages(self.venv))

    def _install_requirements(self, blog: BuildLog) -> None:
        def install(offline: bool | None = None) -> None:  # None: as the env says
            blog.run("install", install_command(self.env.requirements,
                                                uv_index(self.env, offline), self.python,
                                                self.uv_cache, copy=self.kind == "dir"),
                     env=self.subenv)

        plain = all(Requirement(r).url is None for r in self.env.requirements)
        if self.env.offline or self.from_index or not plain:
            install()
            return
        wanted = self.work / "requirements.in"
        wanted.write_text("".join(f"{r}\n" for r in self.env.requirements))
        self.resolving = blog.start(
            "resolve", resolve_command(uv_index(self.env), self.python, self.uv_cache, wanted),
            output=self.work / "resolved.txt", env=self.subenv, cwd=self.work)
        try:
            install(offline=True)
        except CommandError as err:
            if is_disk_full(err.output):
                raise
            blog.write("(the node's uv cache lacks some of it: installing from the index)\n")
            self.resolving.kill()
            self.resolving = None
            install()

    def _compile_and_lock(self, blog: BuildLog) -> Any:
        """compileall (fixed prefix, hash-based pycs) with ``uv pip freeze`` alongside."""
        with blog.phase("compile", f"prefix {self.prefix}"):
            # `uv pip freeze` reads only the dist-info dirs: it runs alongside.
            freeze = blog.start("freeze", [uv_bin(), "pip", "freeze", "--python", self.python],
                                output=self.work / "freeze.out", env=self.subenv,
                                cwd=self.work)
            try:
                self._compile(blog)
            except BaseException:
                freeze.kill()
                raise
            self.lock = blog.finish(freeze)
            self.lock_digest = lock_digest_of(self.interp, self.lock)
            return normalise_tree(self.venv)

    def _start_compilers(self, blog: BuildLog) -> None:
        """Images take what they can from the node's bytecode cache (docs/design.md §14.3):
        workers, one a core, link the cached .pyc of each source into place and compile
        (and cache) the others, so the lookups are spread over the cores too."""
        self.cache = self._pyc_cache(blog) if self.kind == "squashfs" else None
        if self.cache is not None:
            self.compilers = Compilers(blog, self.python, self.venv, self.prefix, self.cache.dir,
                                       self.work, {**self.subenv, "SOURCE_DATE_EPOCH": "0"},
                                       cores())

    def _compile(self, blog: BuildLog) -> None:
        # docs/design.md §6: a fixed prefix, hash-based invalidation and
        # SOURCE_DATE_EPOCH make the .pyc files reproducible; -j0 spreads the work.
        # A dir env's .pyc files name its own path, so no other env could use them.
        compilers, cache, stats = self.compilers, self.cache, self.compile_stats
        if compilers is None or cache is None:
            self._compileall(blog, [self.venv / "lib"])
            return
        for source, size in sources(self.venv):
            compilers.send(source, size)
        compilers.sent()
        self._smoke_modules()  # while the workers look up
        found = compilers.looked_up()
        stats.sources, stats.cached = found.sources, found.restored
        blog.write(f"bytecode cache {cache.dir}: {found.restored} of {found.sources} .py "
                   f"files compiled before, {found.missing} to compile\n")
        if found.missing * 2 <= found.sources:
            # Most modules import from their .pyc now: the smoke test (-B, it writes
            # none) runs beside the rest of the compile, at a lower priority.
            self.smoking = self._start_smoke(blog, early=True)
        stats.stored, failed = compilers.finish()
        for err in failed:
            self._compile_failed(blog, err)

    def _pyc_cache(self, blog: BuildLog) -> PycCache | None:
        """The bytecode cache for this env's interpreter (None: the setting ``env.pyc_cache``
        is false, or the interpreter would not say its bytecode's tag)."""
        if self.pyc_cache is None:
            return None
        found = _bytecode_tags.get(str(self.interp.path))
        if found is None and self.interp.path == _running_interpreter():
            found = (sys.implementation.cache_tag, importlib.util.MAGIC_NUMBER.hex())
        if found is None:
            script = ("import importlib.util, sys; "
                      "print(sys.implementation.cache_tag, importlib.util.MAGIC_NUMBER.hex())")
            try:
                tag, magic = blog.run("compile", [self.python, "-I", "-c", script],
                                      env=self.subenv).split()
            except (CommandError, ValueError):
                return None
            found = _bytecode_tags[str(self.interp.path)] = (tag, magic)
        return PycCache(self.pyc_cache, tag=found[0], magic=found[1],
                        version=self.interp.version, prefix=self.prefix, mode=INVALIDATION)

    def _compileall_cmd(self, what: list[str | os.PathLike[str]]
                        ) -> list[str | os.PathLike[str]]:
        return [self.python, "-I", "-m", "compileall", "-q", "-j0", "-s", self.venv,
                "-p", self.prefix, "--invalidation-mode", INVALIDATION, *what]

    def _compileall(self, blog: BuildLog, what: list[str | os.PathLike[str]]) -> None:
        try:
            blog.run("compile", self._compileall_cmd(what),
                     env={**self.subenv, "SOURCE_DATE_EPOCH": "0"})
        except CommandError as err:
            self._compile_failed(blog, err)

    def _compile_failed(self, blog: BuildLog, err: CommandError) -> None:
        # Packages do ship files that do not compile (Python 2 leftovers, test
        # data); pip and uv ignore those too.  A full disk is not ignored.
        if is_disk_full(err.output):
            raise err
        blog.write("(some files did not compile; kept as sources)\n")

    def _check_and_squash(self, blog: BuildLog) -> None:
        """The import smoke test, with mksquashfs alongside (both only read the tree)."""
        running = self.smoking
        if running is None:
            with blog.phase("smoke"):
                running = self._start_smoke(blog)
        try:
            if self.kind == "squashfs":
                self.squashed = self._squash(blog)
        except BaseException:
            if running is not None:
                running.kill()
            raise
        if running is not None:
            blog.finish(running)  # the image is published only once this passed

    def _check_resolution(self, blog: BuildLog) -> None:
        """What the index resolves to is what the cache installed, or _CacheBehindIndex."""
        if self.resolving is None:
            return
        running, self.resolving = self.resolving, None
        resolved = normalise_lock(blog.finish(running))
        installed = normalise_lock(self.lock)
        if resolved != installed:
            differ = sorted(set(resolved) ^ set(installed), key=str.lower)
            raise _CacheBehindIndex(", ".join(differ[:6]) + (" ..." if len(differ) > 6 else ""))

    def _smoke_modules(self) -> list[str]:
        """The modules the smoke test imports (default: the requirements' top-level ones)."""
        if self.smoke_imports is None:
            names = [Requirement(r).name for r in self.env.requirements]
            self.smoke_imports = smoke.top_level_modules(smoke.site_packages(self.venv), names)
        return self.smoke_imports

    def _start_smoke(self, blog: BuildLog, early: bool = False) -> Running | None:
        modules = self._smoke_modules()
        if not modules:
            return None
        script = self.work / "dscheduler_smoke.py"  # scratch: never published
        script.write_text(smoke.SCRIPT)
        # -B: an import must not write .pyc files into the tree being imaged.
        # Started early, its imports compile in memory the modules still compiling:
        # at the lowest priority it takes only the CPU the compile leaves.
        nice = ["nice", "-n", "19"] if early else []
        return blog.start("smoke", [*nice, self.python, "-I", "-B", script, *modules],
                          output=self.work / "smoke.out", env=self.subenv, cwd=self.work)

    def _squash(self, blog: BuildLog) -> Path | None:
        """mksquashfs into the env's temporary dir; None when the lock's image exists."""
        image = self.store.image(identity.short_id(self.lock_digest))
        rel = image.relative_to(self.store.root).as_posix()
        with blog.phase("squash", f"reusing {rel}" if image.is_file() else rel):
            if image.is_file():
                stored = atomic.read_json(self.store.image_record(image)) or {}
                identity.check_collision(self.lock_digest, stored.get("lock_digest"), rel)
                blog.write(f"image {rel} exists (same lock): mksquashfs skipped\n")
                return None
            tmp = self.out / ".image.sqsh.partial"
            level = int(settings.get("env.compression_level"))
            blog.run("squash", squash_command(self.venv, tmp, level), env=self.subenv)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())  # data on disk before the name appears
            os.chmod(tmp, atomic.modes_for(tmp).file)
            return tmp

    def _fix_modes(self, out: Path) -> None:
        """The store's modes for what is published (docs/design.md §3): in a group store a
        dir env's venv (normalised to 0755/0644), which every member must be able to
        remove.  (The log is created with the store's mode by :class:`BuildLog`.)"""
        if self.kind == "dir" and atomic.modes_for(out).group:
            atomic.fix_tree(self.venv, always=True)

    def _publish_image(self) -> tuple[str | None, bool, int]:
        """images/{lock_id}.sqsh, created once (os.link); returns (path, reused, bytes)."""
        if self.kind != "squashfs":
            return None, False, 0
        image = self.store.image(identity.short_id(self.lock_digest))
        tmp, reused = self.squashed, self.squashed is None
        if tmp is not None:
            sidecar = self.store.image_record(image)
            info = {"lock_digest": self.lock_digest, "lock": self.lock,
                    "built_for": self.env.env_id,
                    "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
            if not atomic.create_once(sidecar, atomic.json_text(info).encode()):
                stored = atomic.read_json(sidecar) or {}
                identity.check_collision(self.lock_digest, stored.get("lock_digest"),
                                         str(sidecar))
            try:
                os.link(tmp, image)
            except FileExistsError:
                reused = True  # another env with the same lock was faster: same content
            tmp.unlink()
        os.symlink(self.store.image_link(image), self.out / self.paths.image.name)
        return image.relative_to(self.store.root).as_posix(), reused, image.stat().st_size

    def _record(self, stats: Any, image: str | None, reused: bool,
                image_bytes: int) -> dict[str, Any]:
        """env.json: spec, full digest, lock, tools, sizes (timings are added by run())."""
        env, interp = self.env, self.interp
        return {
            "format": RECORD_FORMAT,
            "env_id": env.env_id,
            "digest": env.digest,
            "spec": env.spec(),
            "kind": self.kind,
            "python": {"version": interp.version, "interpreter": str(interp.path),
                       "implementation": interp.implementation},
            "lock": self.lock,
            "lock_digest": self.lock_digest,
            "image": image,
            "image_reused": reused,
            "venv": self.paths.venv.relative_to(self.store.root).as_posix()
            if self.kind == "dir" else None,
            "compile_prefix": self.prefix,
            "smoke_imports": self.smoke_imports or [],
            "tools": {"uv": commands.version_of(uv_bin(), "--version"),
                      "python": interp.version,
                      "mksquashfs": commands.version_of("mksquashfs", "-version")
                      if self.kind == "squashfs" else None,
                      "dscheduler": importlib.metadata.version("dscheduler")},
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "sizes": {"files": stats.files, "venv_bytes": stats.bytes,
                      "image_bytes": image_bytes},
            "bytecode_cache": {"dir": str(self.pyc_cache) if self.pyc_cache else None,
                               **dataclasses.asdict(self.compile_stats)},
        }

    # -- failure and leftovers -----------------------------------------------------------

    def _failure(self, err: BaseException, log_path: Path | None) -> BaseException:
        """The EnvBuildError for ``err``; keeps the log as envs/{id}/build-failed.log."""
        if not isinstance(err, CommandError | OSError | EnvBuildError):
            return err
        kept: Path | None = None
        if log_path is not None:
            try:
                atomic.write_bytes(self.paths.failed_log, log_path.read_bytes())
                kept = self.paths.failed_log
            except OSError:
                # Most likely the very disk that is full; leave no empty env dir.
                with contextlib.suppress(OSError):
                    self.paths.dir.rmdir()
        return build_error(
            err, f"env {self.env.env_id}", self.env.requirements, kept,
            places=f"scratch {self.scratch}, store {self.store.root}",
        )

    def _remove_leftovers(self) -> None:
        """Remove what builders of this env killed mid-build left (we hold the lease)."""
        for stale in self.store.env_leftovers(self.env.env_id):
            log.info("env %s: removing leftover %s", self.env.env_id, stale)
            shutil.rmtree(stale, ignore_errors=True)
        # Scratch dirs of dead builders, and (dot-named) those their _remove_aside left.
        pattern = f"dscheduler-build-{self.env.env_id}-*"
        found = [*self.scratch.glob(pattern), *self.scratch.glob("." + pattern)] \
            if self.scratch.is_dir() else []
        for stale in found:
            pid = stale.name.split("-")[3]
            if pid.isdigit() and not process_alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)


def _running_interpreter() -> Path:
    """This process's interpreter (a venv's base), symlinks resolved as interpreters.py does."""
    return Path(getattr(sys, "_base_executable", "") or sys.executable).resolve()


def _remove_aside(work: Path) -> None:
    """Remove a published build's scratch dir in a thread, renamed out of the way first.

    The env is published already; deleting the thousands of files of its venv
    took a tenth of a second that the caller need not wait for.  The thread is
    not a daemon: the interpreter waits for it at exit.
    """
    aside = work.with_name("." + work.name)
    try:
        os.rename(work, aside)
    except OSError:
        shutil.rmtree(work, ignore_errors=True)
        return
    threading.Thread(target=shutil.rmtree, args=(aside,), kwargs={"ignore_errors": True},
                     name="dscheduler-scratch-removal").start()


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


# -- errors ---------------------------------------------------------------------------


def is_disk_full(err: BaseException | str) -> bool:
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(err)
    return "No space left on device" in text or "Disk quota exceeded" in text


def build_error(
    err: CommandError | OSError | EnvBuildError, where: str, requirements: Sequence[str],
    log_path: Path | None, places: str,
) -> EnvBuildError:
    """The EnvBuildError a user sees for ``err``: what failed, why, how to fix it."""
    kept = str(log_path) if log_path else None
    if isinstance(err, EnvBuildError):
        return EnvBuildError(f"{where}: {err}", log_path=kept)
    if is_disk_full(err) or (isinstance(err, CommandError) and is_disk_full(err.output)):
        return EnvBuildError(
            f"{where}: no space left on device ({places}); free space, or point the setting "
            "env.scratch (or the store) at a larger filesystem",
            log_path=kept, tail=err.tail if isinstance(err, CommandError) else str(err),
        )
    if isinstance(err, OSError):
        return EnvBuildError(f"{where}: {err}", log_path=kept)
    if err.what in ("install", "resolve"):
        msg = explain_uv_failure(err.output, requirements)
    elif err.what == "smoke":
        msg = (
            f"smoke test: `import {smoke.failed_module(err.output) or '?'}` failed in the new "
            "env; fix the requirement that provides it, or set smoke_imports=[...] to check "
            "other modules"
        )
    else:
        msg = f"{err.what} failed"
    return EnvBuildError(
        f"{where}: {msg}\ncommand: {shlex.join(err.cmd)} (exit {err.code})",
        log_path=kept, tail=tail(err.output),
    )
