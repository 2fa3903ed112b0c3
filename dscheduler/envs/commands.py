"""Calls to the outside world: one helper, one error, one clean environment.

Every external command dscheduler runs (uv, compileall, mksquashfs,
squashfuse, mount, interpreters, sbatch helpers) goes through :func:`run`,
whose failure is a :class:`~dscheduler.errors.CommandError` carrying the
command, its exit code and the tail of its output.  Commands that run an
environment's Python get :func:`clean_env`: the driver's own Python settings
must not leak into another interpreter.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from ..errors import CommandError

#: Variables of the driver's Python that must not reach another interpreter.
PYTHON_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE",
                    "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "__PYVENV_LAUNCHER__")


def clean_env(**extra: str) -> dict[str, str]:
    """``os.environ`` without the driver's Python settings, plus ``extra``.

    ``UV_PYTHON_DOWNLOADS=never``: nothing run from here may download an
    interpreter (docs/design.md §6).
    """
    env = {k: v for k, v in os.environ.items() if k not in PYTHON_VARIABLES}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env.update(extra)
    return env


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    output: IO[bytes] | None = None,
) -> str:
    """Run ``cmd`` and wait; return its output (stdout, then stderr).

    Parameters
    ----------
    what
        What the command does, for the error: ``"mounting x.sqsh"``.
    output
        A file to write stdout and stderr to instead of capturing them (the
        returned text is then empty; the caller reads its own file).

    A non-zero exit, a timeout or a command that cannot start raise
    :class:`CommandError`.
    """
    args = [os.fspath(c) for c in cmd]
    try:
        proc = subprocess.run(
            args,
            stdout=output if output is not None else subprocess.PIPE,
            stderr=output if output is not None else subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise CommandError(what, args, -1, _text(err.stdout) + _text(err.stderr)
                           + f"\n(timed out after {timeout} s)") from None
    except OSError as err:
        raise CommandError(what, args, -1, f"cannot run {args[0]}: {err}") from err
    text = _text(proc.stdout) + _text(proc.stderr)
    if proc.returncode != 0:
        raise CommandError(what, args, proc.returncode, text)
    return text


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


@functools.cache
def version_of(*cmd: str) -> str:
    """The version a tool prints (``version_of("mksquashfs", "-version")``), or "missing"."""
    try:
        out = run(cmd, what=f"asking {cmd[0]} for its version", timeout=60)
    except CommandError as err:
        out = err.output  # mksquashfs -version exits non-zero on some releases
        if err.code == -1:
            return "missing"
    match = re.search(r"(\d+\.\d+(?:\.\d+)?)", out)
    return match[1] if match else out.strip()[:40]
