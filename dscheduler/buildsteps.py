"""The pieces of an env build that are not its order: the log, commands, checks.

:mod:`dscheduler.build` says what happens when; this module says how one step
runs (:class:`BuildLog`), how uv's failures are read (:func:`explain_uv_failure`),
and which modules the smoke test imports (:func:`top_level_modules`);
:mod:`dscheduler.reproducible` makes a finished venv tree reproducible.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from . import settings
from .errors import EnvBuildError

log = logging.getLogger("dscheduler.build")

TAIL_LINES = 25


class StepFailed(Exception):
    """A build command failed: command, exit code and its output."""

    def __init__(self, phase: str, cmd: Sequence[str], code: int, output: str) -> None:
        self.phase = phase
        self.cmd = list(cmd)
        self.code = code
        self.output = output
        super().__init__(f"{phase}: `{shlex.join(self.cmd)}` exited with {code}")

    @property
    def tail(self) -> str:
        return tail(self.output)


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def is_disk_full(err: BaseException | str) -> bool:
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(err)
    return "No space left on device" in text or "Disk quota exceeded" in text


class Running:
    """A command started by :meth:`BuildLog.start`; a thread notes when it ends."""

    def __init__(
        self, phase: str, args: list[str], proc: subprocess.Popen[bytes], output: Path,
        errors: Path,
    ) -> None:
        self.phase = phase
        self.args = args
        self.proc = proc
        self.output = output
        self.errors = errors
        self.started = time.perf_counter()
        self.ended = 0.0
        self._waiter = threading.Thread(target=self._wait, daemon=True)
        self._waiter.start()

    def _wait(self) -> None:
        self.proc.wait()
        self.ended = time.perf_counter()

    def wait(self) -> int:
        self._waiter.join()
        return self.proc.returncode

    @property
    def seconds(self) -> float:
        return round((self.ended or time.perf_counter()) - self.started, 3)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()


class BuildLog:
    """``build.log`` of one build: a header per phase, every command and its output.

    Commands write straight into the log file (so a long build can be watched
    with ``tail -f``); the part a command wrote is read back for errors.
    """

    def __init__(self, path: Path, env_id: str) -> None:
        self.path = path
        self.env_id = env_id
        self.timings: dict[str, float] = {}
        self._file = open(path, "ab")  # noqa: SIM115 - closed by close()

    def close(self) -> None:
        self._file.close()

    def write(self, text: str) -> None:
        self._file.write(text.encode(errors="replace"))
        self._file.flush()

    @contextlib.contextmanager
    def phase(self, name: str, detail: str = "") -> Iterator[None]:
        """Time a phase; its header goes to the log and to ``dscheduler.build``."""
        log.info("env %s: %s%s", self.env_id, name, f" ({detail})" if detail else "")
        self.write(f"\n== {name}{' ' + detail if detail else ''} [{time.strftime('%H:%M:%S')}]\n")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - start, 3)

    def run(
        self,
        phase: str,
        cmd: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        capture: bool = False,
    ) -> str:
        """Run ``cmd``; return its stdout when ``capture`` else its logged output.

        Raises :class:`StepFailed` on a non-zero exit.
        """
        args = [os.fspath(c) for c in cmd]
        self.write(f"$ {shlex.join(args)}\n")
        start = self._file.tell()
        try:
            proc = subprocess.run(
                args,
                stdout=subprocess.PIPE if capture else self._file,
                stderr=self._file,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                check=False,
            )
        except OSError as err:
            raise StepFailed(phase, args, -1, f"cannot run {args[0]}: {err}") from err
        self._file.flush()
        stdout = proc.stdout.decode(errors="replace") if capture else ""
        if capture and stdout:
            self.write(stdout if stdout.endswith("\n") else stdout + "\n")
        logged = self._read_from(start)
        if proc.returncode != 0:
            self.write(f"exit {proc.returncode}\n")
            raise StepFailed(phase, args, proc.returncode, logged)
        return stdout if capture else logged

    def start(
        self, phase: str, cmd: Sequence[str | os.PathLike[str]], *, output: Path,
        env: Mapping[str, str], cwd: Path,
    ) -> Running:
        """Start ``cmd`` in the background (stdout to ``output``); see :meth:`finish`."""
        args = [os.fspath(c) for c in cmd]
        self.write(f"$ {shlex.join(args)}\n(runs alongside the next phase; output below)\n")
        errors = output.with_name(output.name + ".err")
        try:
            with open(output, "wb") as out, open(errors, "wb") as err:
                proc = subprocess.Popen(args, stdout=out, stderr=err, env=dict(env), cwd=cwd)
        except OSError as err:
            raise StepFailed(phase, args, -1, f"cannot run {args[0]}: {err}") from err
        return Running(phase, args, proc, output, errors)

    def finish(self, running: Running) -> str:
        """Wait for a started command and log its output; return its stdout.

        Raises :class:`StepFailed` on a non-zero exit.
        """
        code = running.wait()
        self.timings[running.phase] = running.seconds
        stdout = running.output.read_text(errors="replace")
        # stderr last: a traceback ends the tail that errors show.
        text = stdout + running.errors.read_text(errors="replace")
        self.write(f"\n== {running.phase}: output of `{running.args[0]} ...`\n{text}")
        if code != 0:
            self.write(f"exit {code}\n")
            raise StepFailed(running.phase, running.args, code, text)
        return stdout

    def _read_from(self, offset: int) -> str:
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")


# -- tools ---------------------------------------------------------------------------


def default_uv_cache() -> Path:
    # Node-local on purpose: uv's cache lock is not safe on a shared filesystem,
    # and on clusters ~/.cache usually is one.
    return settings.node_local("env.uv_cache", "dscheduler-uv-cache")


@functools.cache
def uv_bin() -> str:
    """uv from the running Python's environment (the ``uv`` package)."""
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file():
        return str(beside)
    try:
        import uv

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return found
    raise EnvBuildError("uv not found: install it into this environment (pip install uv)")


@functools.cache
def tool_version(tool: str) -> str:
    args = {"uv": [uv_bin(), "--version"], "mksquashfs": ["mksquashfs", "-version"]}[tool]
    try:
        out = subprocess.run(args, capture_output=True, text=True, check=False).stdout
    except OSError:
        return "missing"
    match = re.search(r"(\d+\.\d+(?:\.\d+)?)", out)
    return match[1] if match else out.strip()[:40]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    # The driver's own Python settings must not leak into the env being built.
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "CONDA_PREFIX"):
        env.pop(name, None)
    env["UV_PYTHON_DOWNLOADS"] = "never"
    return env


# -- errors ---------------------------------------------------------------------------


def build_error(
    err: StepFailed | OSError | EnvBuildError, where: str, requirements: Sequence[str],
    log_path: Path | None, places: str,
) -> EnvBuildError:
    """The EnvBuildError a user sees for ``err``: what failed, why, how to fix it."""
    kept = str(log_path) if log_path else None
    if isinstance(err, EnvBuildError):
        return EnvBuildError(f"{where}: {err}", log_path=kept)
    if is_disk_full(err) or (isinstance(err, StepFailed) and is_disk_full(err.output)):
        return EnvBuildError(
            f"{where}: no space left on device ({places}); free space, or point the setting "
            "env.scratch (or the store) at a larger filesystem",
            log_path=kept, tail=err.tail if isinstance(err, StepFailed) else str(err),
        )
    if isinstance(err, OSError):
        return EnvBuildError(f"{where}: {err}", log_path=kept)
    if err.phase == "install":
        msg = explain_uv_failure(err.output, requirements)
    elif err.phase == "smoke":
        msg = (
            f"smoke test: `import {failed_module(err.output) or '?'}` failed in the new env; "
            "fix the requirement that provides it, or set smoke_imports=[...] to check "
            "other modules"
        )
    else:
        msg = f"{err.phase} failed"
    return EnvBuildError(
        f"{where}: {msg}\ncommand: {shlex.join(err.cmd)} (exit {err.code})",
        log_path=kept, tail=tail(err.output),
    )


# -- reading uv's failures ---------------------------------------------------------

_UV_PATTERNS = [
    re.compile(r"Because (?P<name>[A-Za-z0-9][\w.\-]*)(?:\[[^\]]*\])? was not found"),
    re.compile(r"there is no version of (?P<name>[A-Za-z0-9][\w.\-]*)"),
    re.compile(r"Because only (?P<name>[A-Za-z0-9][\w.\-]*)\S* is available"),
    re.compile(r"Because (?P<name>[A-Za-z0-9][\w.\-]*)\S* has no (?:usable )?wheels"),
    re.compile(r"Failed to (?:download|build|fetch|prepare)[^`]*`(?P<name>[A-Za-z0-9][\w.\-]*)"),
]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def explain_uv_failure(output: str, requirements: Sequence[str]) -> str:
    """Which requirement uv could not satisfy, in one sentence."""
    from packaging.requirements import Requirement

    by_name = {_norm(Requirement(r).name): r for r in requirements}
    lines = [line.strip() for line in output.splitlines()]
    cause = next((line.removeprefix("cause: ") for line in lines if line.startswith("cause:")),
                 "") or next((line for line in lines if line.startswith("error:")), "")
    missing: list[str] = []
    for pattern in _UV_PATTERNS:
        for match in pattern.finditer(output):
            if _norm(match["name"]) not in missing:
                missing.append(_norm(match["name"]))
    if missing:
        mine = [by_name[n] for n in missing if n in by_name]
        what = f"requirement {mine[0]!r}" if mine else f"package {missing[0]!r} (a dependency)"
        return f"{what} cannot be installed: {cause}"
    # A conflict: name the requirements the explanation mentions, in its order.
    text = _norm(output)
    found = []
    for name, req in by_name.items():
        seen = re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)
        if seen:
            found.append((seen.start(), req))
    mentioned = [req for _, req in sorted(found)]
    if len(mentioned) == 1:
        return f"requirement {mentioned[0]!r} cannot be installed: {cause}"
    if mentioned:
        return (f"requirements {', '.join(map(repr, mentioned))} cannot be installed "
                f"together: {cause}")
    return f"uv pip install failed: {cause or 'see the output below'}"


# -- smoke imports ------------------------------------------------------------------

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        raise FileNotFoundError(f"no lib/python3*/site-packages in {venv}")
    return found[0]


def top_level_modules(site: Path, requirement_names: Sequence[str]) -> list[str]:
    """The importable top-level modules of the given distributions.

    A module named like its distribution (``torch`` for torch) is enough on its
    own: other top-level modules of a distribution are often optional extras
    that need more packages (``torchgen`` needs PyYAML).  Otherwise every
    public top-level module listed by ``top_level.txt`` or ``RECORD``.
    Distributions not installed (an environment marker said no) are skipped.
    """
    infos = {_norm(p.name.split("-")[0]): p for p in site.glob("*.dist-info")}
    modules: list[str] = []
    for raw in requirement_names:
        name = _norm(raw)
        info = infos.get(name)
        if info is None:
            continue
        tops = _tops_of(info)
        own = name.replace("-", "_")
        chosen = [own] if own in tops else sorted(t for t in tops if not t.startswith("_"))
        modules.extend(m for m in chosen if m not in modules)
    return modules


def _tops_of(info: Path) -> set[str]:
    top_level = info / "top_level.txt"
    if top_level.is_file():
        names = {line.strip() for line in top_level.read_text().splitlines()}
    else:
        names = set()
        record = info / "RECORD"
        lines = record.read_text().splitlines() if record.is_file() else []
        for line in lines:
            path = line.split(",")[0]
            first = path.split("/")[0]
            if path.startswith("..") or first.endswith((".dist-info", ".data")):
                continue
            names.add(first.removesuffix(".py") if "/" not in path else first)
    return {n for n in names if _IDENT.match(n)}


SMOKE_SCRIPT = """\
import importlib, sys, traceback
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except BaseException:
        traceback.print_exc()
        print("dscheduler-smoke-failed:", name)
        sys.exit(1)
    print("imported", name)
"""


def failed_module(output: str) -> str | None:
    match = re.search(r"^dscheduler-smoke-failed: (\S+)", output, re.MULTILINE)
    return match[1] if match else None
