"""The steps of an env build that make its venv and image in scratch (docs/design.md §5.3).

Each step is a function of what it is given and returns what the next one needs;
``build.py`` calls them in order, then publishes.  In order: :func:`take_scratch`
(killed builders' leftovers removed first), :func:`make_venv`, :func:`bytecode_cache` and
:func:`start_compilers`, :func:`install` (from the node's uv cache, with ``uv pip
compile`` asking the index alongside for :func:`check_resolution`, §14.3),
:func:`smoke_modules`, :func:`compile_and_lock` (bytecode, ``uv pip freeze``),
:func:`smoke_test` with :func:`squash` beside it, :func:`check_resolution`, and at the
end :func:`remove_scratch`.  :class:`Venv` says where the venv is made and how its
commands run.  A command a step leaves running beside later steps goes on the caller's
``alongside`` stack (:class:`contextlib.ExitStack`), which kills it if one of them fails.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.requirements import Requirement

from .. import identity, settings
from ..errors import CommandError
from ..store import atomic
from ..store.lease import process_alive
from . import smoke
from .builderrors import is_disk_full
from .buildlog import BuildLog, Running
from .compiling import Compilers, cores, sources
from .interpreters import Interpreter
from .reproducible import (
    CompileStats,
    PycCache,
    TreeStats,
    normalise_lock,
    normalise_tree,
    normalise_uv_cache_records,
    squash_command,
)
from .uv import Command, install_command, resolve_command, uv_bin

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger("dscheduler.build")

INVALIDATION = "unchecked-hash"
_bytecode_tags: dict[str, tuple[str, str]] = {}  # interpreter path -> (cache tag, magic)


@dataclass(frozen=True)
class Venv:
    """Where one build makes its venv, with which interpreter, and how commands run there."""

    path: Path  # the venv being made
    prefix: str  # the compile prefix: /env for an image, the venv's final path for a dir env
    work: Path  # the build's node-local scratch dir (never published)
    interp: Interpreter
    subenv: dict[str, str]  # the environment of the commands (commands.clean_env())

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


@dataclass(frozen=True)
class Packages:
    """What :func:`install` installs, and from where."""

    requirements: tuple[str, ...]
    index: Command  # uv's index options, as the env says
    cache_only: Command  # the same with --offline: the node's uv cache alone
    offline: bool  # the env itself asks for the uv cache alone
    uv_cache: Path
    copy: bool  # --link-mode copy: a dir env's venv lives in the store


@dataclass(frozen=True)
class Compiled:
    """What :func:`compile_and_lock` returns."""

    lock: str  # `uv pip freeze`
    tree: TreeStats  # files and bytes of the venv
    bytecode: CompileStats  # what the node's bytecode cache did
    smoking: Running | None  # the smoke test, when started beside the compile


class CacheBehindIndex(Exception):
    """The index resolves otherwise than the install from the node's uv cache did."""


# -- scratch ----------------------------------------------------------------------------


def take_scratch(scratch: Path, store: Store, env_id: str) -> Path:
    """A new scratch dir for this build, once killed builders' leftovers are removed (the
    caller holds the env's lease)."""
    settings.private_dir(scratch, "env.scratch")  # checked again at each use
    for stale in store.env_leftovers(env_id):
        log.info("env %s: removing leftover %s", env_id, stale)
        shutil.rmtree(stale, ignore_errors=True)
    # Scratch dirs of dead builders, and (dot-named) those remove_scratch left.
    pattern = f"dscheduler-build-{env_id}-*"
    found = [*scratch.glob(pattern), *scratch.glob("." + pattern)] if scratch.is_dir() else []
    for stale in found:
        pid = stale.name.split("-")[3]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"dscheduler-build-{env_id}-{os.getpid()}-",
                                 dir=scratch))


def remove_scratch(work: Path, published: bool) -> None:
    """Remove the scratch dir; once published, in a thread, renamed out of the way first.

    The env is published already; deleting the thousands of files of its venv
    took a tenth of a second that the caller need not wait for.  The thread is
    not a daemon: the interpreter waits for it at exit.
    """
    if not published:
        shutil.rmtree(work, ignore_errors=True)
        return
    aside = work.with_name("." + work.name)
    try:
        os.rename(work, aside)
    except OSError:
        shutil.rmtree(work, ignore_errors=True)
        return
    threading.Thread(target=shutil.rmtree, args=(aside,), kwargs={"ignore_errors": True},
                     name="dscheduler-scratch-removal").start()


# -- venv and install -------------------------------------------------------------------


def make_venv(blog: BuildLog, venv: Venv) -> None:
    """``uv venv --relocatable`` with an interpreter already on this machine."""
    interp = venv.interp
    with blog.phase("venv", f"python {interp.version} at {interp.path}"):
        blog.run("venv", [uv_bin(), "venv", "--relocatable", "--no-python-downloads",
                          "--python", interp.path, venv.path], env=venv.subenv)


def install(blog: BuildLog, venv: Venv, packages: Packages, *, from_index: bool,
            alongside: contextlib.ExitStack) -> Running | None:
    """``uv pip install`` with the node-local cache and the env's index options.

    From the cache alone when it can, while ``uv pip compile`` asks the
    index alongside: uv asks it again about every package (a network
    round trip each, 0.27 s of a 0.45 s install here), which need not hold
    up the compile.  Returns that ``uv pip compile`` (None: not started), for
    :func:`check_resolution`.  ``from_index``: install from the index.
    """
    resolving = None
    with blog.phase("install", " ".join(packages.requirements) or "(no requirements)"):
        if packages.requirements:
            resolving = _install_requirements(blog, venv, packages, from_index, alongside)
        normalise_uv_cache_records(smoke.site_packages(venv.path))
    return resolving


def _install_requirements(blog: BuildLog, venv: Venv, packages: Packages, from_index: bool,
                          alongside: contextlib.ExitStack) -> Running | None:
    def install_from(index: Command) -> None:
        blog.run("install", install_command(packages.requirements, index, venv.python,
                                            packages.uv_cache, copy=packages.copy),
                 env=venv.subenv)

    plain = all(Requirement(r).url is None for r in packages.requirements)
    if packages.offline or from_index or not plain:
        install_from(packages.index)
        return None
    wanted = venv.work / "requirements.in"
    wanted.write_text("".join(f"{r}\n" for r in packages.requirements))
    resolving = blog.start(
        "resolve", resolve_command(packages.index, venv.python, packages.uv_cache, wanted),
        output=venv.work / "resolved.txt", env=venv.subenv, cwd=venv.work)
    alongside.callback(resolving.kill)
    try:
        install_from(packages.cache_only)
    except CommandError as err:
        if is_disk_full(err.output):
            raise
        blog.write("(the node's uv cache lacks some of it: installing from the index)\n")
        resolving.kill()
        install_from(packages.index)
        return None
    return resolving


def check_resolution(blog: BuildLog, resolving: Running | None, lock: str) -> None:
    """What the index resolves to is what the cache installed, or CacheBehindIndex."""
    if resolving is None:
        return
    resolved = normalise_lock(blog.finish(resolving))
    installed = normalise_lock(lock)
    if resolved != installed:
        differ = sorted(set(resolved) ^ set(installed), key=str.lower)
        raise CacheBehindIndex(", ".join(differ[:6]) + (" ..." if len(differ) > 6 else ""))


# -- bytecode ---------------------------------------------------------------------------


def bytecode_cache(blog: BuildLog, venv: Venv, root: Path | None) -> PycCache | None:
    """The node's bytecode cache under ``root`` for this interpreter (None: ``root`` is
    None, or the interpreter would not say its bytecode's tag)."""
    if root is None:
        return None
    interp = venv.interp
    found = _bytecode_tags.get(str(interp.path))
    if found is None and interp.path == _running_interpreter():
        found = (sys.implementation.cache_tag, importlib.util.MAGIC_NUMBER.hex())
    if found is None:
        script = ("import importlib.util, sys; "
                  "print(sys.implementation.cache_tag, importlib.util.MAGIC_NUMBER.hex())")
        try:
            tag, magic = blog.run("compile", [venv.python, "-I", "-c", script],
                                  env=venv.subenv).split()
        except (CommandError, ValueError):
            return None
        found = _bytecode_tags[str(interp.path)] = (tag, magic)
    return PycCache(root, tag=found[0], magic=found[1], version=interp.version,
                    prefix=venv.prefix, mode=INVALIDATION)


def _running_interpreter() -> Path:
    """This process's interpreter (a venv's base), symlinks resolved as interpreters.py does."""
    return Path(getattr(sys, "_base_executable", "") or sys.executable).resolve()


def start_compilers(blog: BuildLog, venv: Venv, cache: PycCache | None,
                    alongside: contextlib.ExitStack) -> Compilers | None:
    """Images take what they can from the node's bytecode cache (docs/design.md §14.3):
    workers, one a core, link the cached .pyc of each source into place and compile
    (and cache) the others, so the lookups are spread over the cores too.  They need
    the interpreter alone: they start beside the install.  None: no cache."""
    if cache is None:
        return None
    compilers = Compilers(blog, venv.python, venv.path, venv.prefix, cache.dir, venv.work,
                          {**venv.subenv, "SOURCE_DATE_EPOCH": "0"}, cores())
    alongside.callback(compilers.kill)
    return compilers


def compile_and_lock(blog: BuildLog, venv: Venv, cache: PycCache | None,
                     compilers: Compilers | None, smoke_imports: list[str],
                     alongside: contextlib.ExitStack) -> Compiled:
    """compileall (fixed prefix, hash-based pycs) with ``uv pip freeze`` alongside; file
    modes normalised.  With the bytecode cache, the smoke test may start beside it."""
    with blog.phase("compile", f"prefix {venv.prefix}"):
        # `uv pip freeze` reads only the dist-info dirs: it runs alongside.
        freeze = blog.start("freeze", [uv_bin(), "pip", "freeze", "--python", venv.python],
                            output=venv.work / "freeze.out", env=venv.subenv, cwd=venv.work)
        alongside.callback(freeze.kill)
        # docs/design.md §6: a fixed prefix, hash-based invalidation and
        # SOURCE_DATE_EPOCH make the .pyc files reproducible; -j0 spreads the work.
        # A dir env's .pyc files name its own path, so no other env could use them.
        if compilers is None or cache is None:
            _compileall(blog, venv, [venv.path / "lib"])
            stats, smoking = CompileStats(), None
        else:
            stats, smoking = _compile_with(blog, venv, cache, compilers, smoke_imports,
                                           alongside)
        lock = blog.finish(freeze)
        return Compiled(lock, normalise_tree(venv.path), stats, smoking)


def _compile_with(blog: BuildLog, venv: Venv, cache: PycCache, compilers: Compilers,
                  smoke_imports: list[str], alongside: contextlib.ExitStack,
                  ) -> tuple[CompileStats, Running | None]:
    for source, size in sources(venv.path):
        compilers.send(source, size)
    found = compilers.looked_up()
    stats = CompileStats(sources=found.sources, cached=found.restored)
    blog.write(f"bytecode cache {cache.dir}: {found.restored} of {found.sources} .py "
               f"files compiled before, {found.missing} to compile\n")
    smoking = None
    if found.missing * 2 <= found.sources:
        # Most modules import from their .pyc now: the smoke test (-B, it writes
        # none) runs beside the rest of the compile, at a lower priority.
        smoking = _start_smoke(blog, venv, smoke_imports, alongside, early=True)
    stats.stored, failed = compilers.finish()
    for err in failed:
        _compile_failed(blog, err)
    return stats, smoking


def _compileall(blog: BuildLog, venv: Venv, what: list[str | os.PathLike[str]]) -> None:
    cmd = [venv.python, "-I", "-m", "compileall", "-q", "-j0", "-s", venv.path,
           "-p", venv.prefix, "--invalidation-mode", INVALIDATION, *what]
    try:
        blog.run("compile", cmd, env={**venv.subenv, "SOURCE_DATE_EPOCH": "0"})
    except CommandError as err:
        _compile_failed(blog, err)


def _compile_failed(blog: BuildLog, err: CommandError) -> None:
    # Packages do ship files that do not compile (Python 2 leftovers, test
    # data); pip and uv ignore those too.  A full disk is not ignored.
    if is_disk_full(err.output):
        raise err
    blog.write("(some files did not compile; kept as sources)\n")


# -- the smoke test ---------------------------------------------------------------------


def smoke_modules(chosen: list[str] | None, requirements: tuple[str, ...],
                  venv: Path) -> list[str]:
    """The modules the smoke test imports: ``chosen``, else (None) the top-level ones of
    the requirements, as installed."""
    if chosen is not None:
        return chosen
    names = [Requirement(r).name for r in requirements]
    return smoke.top_level_modules(smoke.site_packages(venv), names)


def smoke_test(blog: BuildLog, venv: Venv, modules: list[str],
               alongside: contextlib.ExitStack) -> Running | None:
    """Start the import smoke test (its own phase); None: no modules to import."""
    with blog.phase("smoke"):
        return _start_smoke(blog, venv, modules, alongside)


def _start_smoke(blog: BuildLog, venv: Venv, modules: list[str],
                 alongside: contextlib.ExitStack, early: bool = False) -> Running | None:
    if not modules:
        return None
    script = venv.work / "dscheduler_smoke.py"  # scratch: never published
    script.write_text(smoke.SCRIPT)
    # -B: an import must not write .pyc files into the tree being imaged.
    # Started early, its imports compile in memory the modules still compiling:
    # at the lowest priority it takes only the CPU the compile leaves.
    nice = ["nice", "-n", "19"] if early else []
    running = blog.start("smoke", [*nice, venv.python, "-I", "-B", script, *modules],
                         output=venv.work / "smoke.out", env=venv.subenv, cwd=venv.work)
    alongside.callback(running.kill)
    return running


# -- the image --------------------------------------------------------------------------


def squash(blog: BuildLog, venv: Venv, store: Store, lock_digest: str, into: Path
           ) -> Path | None:
    """mksquashfs of the venv into ``into`` (fsynced, the store's file mode); None when
    the lock's image ``images/{lock_id}.sqsh`` exists already."""
    image = store.image(identity.short_id(lock_digest))
    rel = image.relative_to(store.root).as_posix()
    with blog.phase("squash", f"reusing {rel}" if image.is_file() else rel):
        if image.is_file():
            stored = atomic.read_json(store.image_record(image)) or {}
            identity.check_collision(lock_digest, stored.get("lock_digest"), rel)
            blog.write(f"image {rel} exists (same lock): mksquashfs skipped\n")
            return None
        level = int(settings.get("env.compression_level"))
        blog.run("squash", squash_command(venv.path, into, level), env=venv.subenv)
        with open(into, "rb") as f:
            os.fsync(f.fileno())  # data on disk before the name appears
        os.chmod(into, atomic.modes_for(into).file)
        return into
