"""Python interpreters already on the machine: env builds never download one.

An env asks for ``python="3.11"`` (or ``"3.11.7"``); :func:`find_interpreter` returns the first
whose version matches, searching (docs/design.md §6): the running interpreter (its base, from a
venv); the setting ``env.interpreters``; ``python3.X`` on ``PATH`` (pyenv shims skipped);
``$PYENV_ROOT/versions/*/bin/python3.X`` (``~/.pyenv`` by default); ``/usr/local/bin/python3.X``,
``/usr/bin/python3.X``.  A built venv links ``bin/python`` to it, so it must exist at the same
path on every node that runs the env.  A version not found is an :class:`EnvBuildError` listing
every interpreter seen, with its version.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import settings
from ..errors import CommandError, EnvBuildError
from . import commands

_PROBE = "import sys; print('%d.%d.%d' % sys.version_info[:3], sys.implementation.name)"


@dataclass(frozen=True)
class Interpreter:
    path: Path  # an executable file, symlinks resolved
    version: str  # "3.11.7"
    implementation: str  # "cpython"

    def matches(self, wanted: str) -> bool:
        return self.version == wanted or self.version.startswith(wanted + ".")


def _base_of_running() -> Path:
    # A venv's sys.executable is a link inside the venv; the venv itself may go
    # away, its base interpreter stays.
    return Path(getattr(sys, "_base_executable", "") or sys.executable)


def _is_script(path: Path) -> bool:
    """True for a text script (a pyenv shim), not an interpreter binary."""
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return True


def candidates(minor: str) -> list[Path]:
    """Executable paths that may be Python ``minor`` ("3.11"), best first, de-duplicated."""
    name = f"python{minor}"
    found: list[Path] = []
    if f"{sys.version_info.major}.{sys.version_info.minor}" == minor:
        found.append(_base_of_running())
    for pattern in settings.get("env.interpreters") or []:
        found.extend(Path(p) for p in sorted(glob.glob(os.path.expanduser(str(pattern)))))
    on_path = shutil.which(name)
    if on_path:
        found.append(Path(on_path))
    pyenv = Path(os.environ.get("PYENV_ROOT", "~/.pyenv")).expanduser()
    found.extend(Path(p) for p in sorted(glob.glob(str(pyenv / "versions" / "*" / "bin" / name))))
    found.extend(Path(d) / name for d in ("/usr/local/bin", "/usr/bin"))
    unique: list[Path] = []
    seen: set[Path] = set()
    for path in found:
        if not (path.is_file() and os.access(path, os.X_OK)) or _is_script(path):
            continue
        real = path.resolve()
        if real not in seen:
            seen.add(real)
            unique.append(real)
    return unique


@functools.cache
def probe(path: Path) -> Interpreter | None:
    """Version of the interpreter at ``path``; None when it does not run."""
    try:
        out = commands.run([path, "-I", "-c", _PROBE], what=f"probing {path}", timeout=30)
    except CommandError:
        return None
    parts = out.split()
    if len(parts) != 2:
        return None
    return Interpreter(path, parts[0], parts[1])


def find_interpreter(wanted: str) -> Interpreter:
    """The interpreter for ``wanted`` ("3.11" or "3.11.7"); EnvBuildError listing others."""
    minor = ".".join(wanted.split(".")[:2])
    for path in candidates(minor):
        found = probe(path)
        if found is not None and found.matches(wanted):
            return found
    seen = sorted(
        {f"{i.version} at {i.path}" for i in (probe(p) for p in all_candidates()) if i}
    )
    raise EnvBuildError(
        f"no Python {wanted} interpreter on this machine (dscheduler never downloads one). "
        "Interpreters found:\n  " + ("\n  ".join(seen) or "none") + "\n"
        f"Install Python {wanted} (e.g. `pyenv install {wanted}`), add its path to the "
        "setting env.interpreters, or ask for one of the versions above with ds.Env(python=...)."
    )


def all_candidates() -> list[Path]:
    """Every python3.X executable the search looks at, for error messages."""
    paths: list[Path] = []
    for minor in range(6, 20):
        paths.extend(candidates(f"3.{minor}"))
    return list(dict.fromkeys(paths))
