"""Environment builds: each ``env_id`` built once, by whoever gets there first.

``build_env(store, env)`` (DESIGN 5 step 3)::

    lease locks/env-{env_id}.lease  ->  published?  ->  return it
    else, in node-local scratch:
      uv venv --relocatable --python <an interpreter on this machine>
      uv pip install (node-local --cache-dir, the env's index options)
      compileall (fixed prefix, unchecked-hash: reproducible .pyc files), alongside:
        uv pip freeze               -> the lock; lock_digest = digest("lock", ...)
      modes fixed, files counted    (reproducible.normalise_tree)
      import smoke test, alongside: mksquashfs (reproducible flags) into the
        store's temporary dir, unless images/{lock_id}.sqsh exists already
    publish, once the smoke test passed: the image by os.link (create-once),
    then envs/{env_id}/ by one rename of a finished directory holding
    build.log, image.sqsh (a relative link to the image) and, last, env.json.

A failure raises :class:`EnvBuildError` naming the requirement or the module,
with the tail of the output and the path of the kept log
(``envs/{env_id}/build-failed.log``, no env.json: nothing is published).
Temporary files are removed and the lease released; a builder killed with
kill -9 leaves only temporary names (``envs/.{env_id}.*.partial``, scratch
``dscheduler-build-{env_id}-{pid}-*``) that the next lease holder removes.

Kind ``"dir"`` keeps the venv itself at ``envs/{env_id}/venv``.  It is built
in place, in the store's temporary directory, not in scratch: its final home
is the store, so building elsewhere would copy every file once more.  Its
``.pyc`` files carry the final path (``compileall -p envs/{env_id}/venv``) so
tracebacks name real files; images use the fixed prefix ``/env`` instead,
because they are mounted at varying paths and must be byte-identical.

``bin/python`` of a venv is a symlink to the machine's interpreter (``uv venv
--relocatable`` keeps that one absolute path), so the interpreter must exist
at the same path on every node; its path is part of ``lock_digest``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import atomic, identity, settings
from .buildsteps import (
    SMOKE_SCRIPT,
    BuildLog,
    Running,
    StepFailed,
    build_error,
    default_uv_cache,
    is_disk_full,
    site_packages,
    subprocess_env,
    tool_version,
    top_level_modules,
    uv_bin,
)
from .builtenv import (
    FAILED_LOG,
    RECORD_FORMAT,
    BuiltEnv,
    from_record,
    published_env,
)
from .errors import EnvBuildError
from .interpreters import Interpreter, find_interpreter
from .lease import pid_alive
from .reproducible import normalise_lock, normalise_tree, normalise_uv_cache_records

if TYPE_CHECKING:
    from .env import Env
    from .lease import Lease
    from .store import Store

__all__ = ["BuiltEnv", "build_env", "published_env"]

log = logging.getLogger("dscheduler.build")

KINDS = ("squashfs", "dir")
#: Prefix compiled into the .pyc files of images (reproducible-images.md).
IMAGE_PREFIX = "/env"


# -- building ----------------------------------------------------------------------------


def build_env(
    store: Store,
    env: Env,
    *,
    image: str | None = None,
    smoke_imports: list[str] | tuple[str, ...] | None = None,
    uv_cache: str | os.PathLike[str] | None = None,
    scratch: str | os.PathLike[str] | None = None,
    ttl: float | None = None,
    timeout: float | None = None,
) -> BuiltEnv:
    """Build ``env`` once, or return the published one.

    ``image``: "squashfs" or "dir" (default: ``env.image``, then the setting
    ``env.image``); it decides only how a new build is kept: an env already
    published is returned as it is.  ``smoke_imports``: modules to import as
    a check (default: ``env.smoke_imports``, then the setting, then the
    top-level modules of the requirements); ``[]`` skips the check.
    ``uv_cache``/``scratch``: node-local directories (settings ``env.uv_cache``,
    ``env.scratch``).  ``ttl``: lease time-to-live (``env.build_ttl``).
    ``timeout``: seconds to wait for another builder's lease (None: wait; a
    dead builder's lease is broken after its ttl).
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
    lease = store.lease(f"env-{env.env_id}", ttl=settings.get("env.build_ttl", ttl))
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
            uv_cache=Path(settings.get("env.uv_cache", uv_cache) or default_uv_cache()),
            scratch=settings.node_local("env.scratch", "dscheduler-build", scratch),
            lease=lease,
        )
        builder.timings["lease_wait"] = round(time.perf_counter() - waited, 3)
        return builder.run()
    finally:
        lease.release()


def _choose_smoke(env: Env, override: Any) -> list[str] | None:
    for value in (override, env.smoke_imports, settings.get("env.smoke_imports")):
        if value is not None:
            return list(value)
    return None  # decided after the install, from what was installed


class _Builder:
    """One build, under the env's lease; phases in the order of :meth:`run`."""

    def __init__(
        self, store: Store, env: Env, kind: str, *, smoke_imports: list[str] | None,
        uv_cache: Path, scratch: Path, lease: Lease,
    ) -> None:
        self.store = store
        self.env = env
        self.kind = kind
        self.smoke_imports = smoke_imports
        self.uv_cache = uv_cache
        self.scratch = scratch
        self.lease = lease
        self.paths = store.env(env.env_id)
        self.timings: dict[str, float] = {}
        self.subenv = subprocess_env()
        self.work = scratch  # the build's own temporary directory, set by run()

    # -- the whole build -------------------------------------------------------------

    def run(self) -> BuiltEnv:
        start = time.perf_counter()
        self._remove_leftovers()
        self.scratch.mkdir(parents=True, exist_ok=True)
        work = self.work = Path(tempfile.mkdtemp(
            prefix=f"dscheduler-build-{self.env.env_id}-{os.getpid()}-", dir=self.scratch
        ))
        try:
            with atomic.publish_dir(self.paths.dir) as out:
                try:
                    blog = BuildLog(out / "build.log", self.env.env_id)
                except OSError as err:
                    raise self._failure(err, None) from err
                try:
                    record = self._build(out, work, blog)
                    record["timings"] = {**self.timings, **blog.timings,
                                         "total": round(time.perf_counter() - start, 3)}
                    blog.write(f"\n== done in {record['timings']['total']} s\n")
                    blog.close()
                    atomic.write_json(out / "env.json", record)  # last: it says "published"
                    record = atomic.read_json(out / "env.json")  # exactly what readers get
                    self.lease.check()  # never publish after losing the lease
                except BaseException as err:
                    blog.close()
                    failure = self._failure(err, out / "build.log")
                    if failure is err:
                        raise
                    raise failure from err
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log.info("env %s: published (%s s)", self.env.env_id, record["timings"]["total"])
        built = from_record(self.store, self.paths, record, built=True)
        if built is None:
            raise EnvBuildError(f"env {self.env.env_id} vanished right after it was published")
        return built

    def _build(self, out: Path, work: Path, blog: BuildLog) -> dict[str, Any]:
        env = self.env
        interp = find_interpreter(env.python)
        blog.write(
            f"env {env.env_id} ({env.digest}) on {socket.gethostname()}, pid {os.getpid()}\n"
            f"spec: {env.spec()}\n"
        )
        venv = out / "venv" if self.kind == "dir" else work / "env"
        prefix = str(self.paths.venv) if self.kind == "dir" else IMAGE_PREFIX
        python = venv / "bin" / "python"
        uv = uv_bin()

        with blog.phase("venv", f"python {interp.version} at {interp.path}"):
            blog.run("venv", [uv, "venv", "--relocatable", "--no-python-downloads",
                              "--python", interp.path, venv], env=self.subenv)
        with blog.phase("install", " ".join(env.requirements) or "(no requirements)"):
            if env.requirements:
                self._install(blog, uv, python)
            normalise_uv_cache_records(site_packages(venv))
        with blog.phase("compile", f"prefix {prefix}"):
            # `uv pip freeze` reads only the dist-info dirs: it runs alongside.
            freeze = blog.start("freeze", [uv, "pip", "freeze", "--python", python],
                                output=work / "freeze.out", env=self.subenv, cwd=work)
            try:
                self._compile(blog, python, venv, prefix)
            except BaseException:
                freeze.kill()
                raise
            lock = blog.finish(freeze)
            lock_digest = lock_digest_of(interp, lock)
            stats = normalise_tree(venv)
        with blog.phase("smoke"):
            smoke, running = self._smoke(blog, python, venv)
        # The import check and mksquashfs only read the tree: they run side by
        # side, and the image is published only once the check has passed.
        try:
            squashed = self._squash(blog, venv, out, lock_digest) if self.kind != "dir" else None
        except BaseException:
            if running is not None:
                running.kill()
            raise
        if running is not None:
            blog.finish(running)
        image_rel, reused, image_bytes = None, False, 0
        if self.kind == "squashfs":
            image_rel, reused, image_bytes = self._publish_image(squashed, out, lock_digest, lock)
        return {
            "format": RECORD_FORMAT,
            "env_id": env.env_id,
            "digest": env.digest,
            "spec": env.spec(),
            "kind": self.kind,
            "python": {"version": interp.version, "interpreter": str(interp.path),
                       "implementation": interp.implementation},
            "lock": lock,
            "lock_digest": lock_digest,
            "image": image_rel,
            "image_reused": reused,
            "venv": self.paths.venv.relative_to(self.store.root).as_posix()
            if self.kind == "dir" else None,
            "compile_prefix": prefix,
            "smoke_imports": smoke,
            "tools": {"uv": tool_version("uv"), "python": interp.version,
                      "mksquashfs": tool_version("mksquashfs") if self.kind == "squashfs"
                      else None, "dscheduler": _version()},
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "sizes": {"files": stats.files, "venv_bytes": stats.bytes,
                      "image_bytes": image_bytes},
        }

    # -- phases --------------------------------------------------------------------------

    def _install(self, blog: BuildLog, uv: str, python: Path) -> None:
        env = self.env
        cmd: list[str | os.PathLike[str]] = [
            uv, "pip", "install", "--no-progress", "--python", python, "--cache-dir", self.uv_cache,
        ]
        # A dir env lives in the store: copy, never hard-link files shared with the cache.
        cmd += ["--link-mode", "copy"] if self.kind == "dir" else []
        for link in env.find_links:
            cmd += ["--find-links", link]
        if env.index_url:
            cmd += ["--index-url", env.index_url]
        for url in env.extra_index_urls:
            cmd += ["--extra-index-url", url]
        cmd += ["--offline"] if env.offline else []
        blog.run("install", [*cmd, "--", *env.requirements], env=self.subenv)

    def _compile(self, blog: BuildLog, python: Path, venv: Path, prefix: str) -> None:
        # reproducible-images.md step 2: fixed prefix, hash-based invalidation,
        # SOURCE_DATE_EPOCH; -j0 only spreads the work over the cores.
        cmd: list[str | os.PathLike[str]] = [
            python, "-I", "-m", "compileall", "-q", "-j0", "-s", venv, "-p", prefix,
            "--invalidation-mode", "unchecked-hash", venv / "lib",
        ]
        try:
            blog.run("compile", cmd, env={**self.subenv, "SOURCE_DATE_EPOCH": "0"})
        except StepFailed as err:
            # Packages do ship files that do not compile (Python 2 leftovers, test
            # data); pip and uv ignore those too.  A full disk is not ignored.
            if is_disk_full(err.output):
                raise
            blog.write("(some files did not compile; kept as sources)\n")

    def _smoke(self, blog: BuildLog, python: Path, venv: Path) -> tuple[list[str], Running | None]:
        modules = self.smoke_imports
        if modules is None:
            from packaging.requirements import Requirement

            names = [Requirement(r).name for r in self.env.requirements]
            modules = top_level_modules(site_packages(venv), names)
        if not modules:
            return [], None
        script = self.work / "dscheduler_smoke.py"  # scratch: never published
        script.write_text(SMOKE_SCRIPT)
        # -B: an import must not write .pyc files into the tree being imaged.
        running = blog.start("smoke", [python, "-I", "-B", script, *modules],
                             output=self.work / "smoke.out", env=self.subenv, cwd=self.work)
        return modules, running

    def _squash(self, blog: BuildLog, venv: Path, out: Path, lock_digest: str) -> Path | None:
        """mksquashfs into the env's temporary dir; None when the lock's image exists."""
        image = self.store.image(identity.short_id(lock_digest))
        rel = image.relative_to(self.store.root).as_posix()
        with blog.phase("squash", f"reusing {rel}" if image.is_file() else rel):
            if image.is_file():
                stored = atomic.read_json(image.with_suffix(".json")) or {}
                identity.check_collision(lock_digest, stored.get("lock_digest"), rel)
                blog.write(f"image {rel} exists (same lock): mksquashfs skipped\n")
                return None
            tmp = out / ".image.sqsh.partial"
            level = int(settings.get("env.compression_level"))
            blog.run("squash", [
                "mksquashfs", venv, tmp, "-noappend", "-no-progress", "-no-xattrs",
                "-comp", "zstd", "-Xcompression-level", str(level),
                "-all-time", "0", "-mkfs-time", "0", "-force-uid", "0", "-force-gid", "0",
            ], env=self.subenv)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())  # data on disk before the name appears
            os.chmod(tmp, 0o644)
            return tmp

    def _publish_image(
        self, tmp: Path | None, out: Path, lock_digest: str, lock: str
    ) -> tuple[str, bool, int]:
        """images/{lock_id}.sqsh, created once (os.link); returns (path, reused, bytes)."""
        image = self.store.image(identity.short_id(lock_digest))
        reused = tmp is None
        if tmp is not None:
            sidecar = image.with_suffix(".json")
            info = {"lock_digest": lock_digest, "lock": lock, "built_for": self.env.env_id,
                    "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
            if not atomic.create_once(sidecar, atomic.json_text(info).encode()):
                stored = atomic.read_json(sidecar) or {}
                identity.check_collision(lock_digest, stored.get("lock_digest"), str(sidecar))
            try:
                os.link(tmp, image)
            except FileExistsError:
                reused = True  # another env with the same lock was faster: same content
            tmp.unlink()
        os.symlink(f"../../images/{image.name}", out / "image.sqsh")
        return image.relative_to(self.store.root).as_posix(), reused, image.stat().st_size

    # -- failure and leftovers -----------------------------------------------------------

    def _failure(self, err: BaseException, log_path: Path | None) -> BaseException:
        """The EnvBuildError for ``err``; keeps the log as envs/{id}/build-failed.log."""
        if not isinstance(err, StepFailed | OSError | EnvBuildError):
            return err
        kept: Path | None = None
        if log_path is not None:
            try:
                atomic.write_bytes(self.paths.dir / FAILED_LOG, log_path.read_bytes())
                kept = self.paths.dir / FAILED_LOG
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
        for stale in self.store.envs_dir.glob(f".{self.env.env_id}.*"):
            log.info("env %s: removing leftover %s", self.env.env_id, stale)
            shutil.rmtree(stale, ignore_errors=True)
        pattern = f"dscheduler-build-{self.env.env_id}-*"
        for stale in self.scratch.glob(pattern) if self.scratch.is_dir() else []:
            pid = stale.name.split("-")[3]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)


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


def _version() -> str:
    from . import __version__

    return __version__
