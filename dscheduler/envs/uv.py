"""uv: where it is, how an env's packages are installed, and what its failures mean."""

from __future__ import annotations

import functools
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .. import settings
from ..errors import EnvBuildError

Command = list[str | os.PathLike[str]]


def uv_cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """uv's cache: node-local on purpose (docs/design.md §6), made 0700 and checked (a
    cache another user could write would hand us their wheels, docs/design.md §15)."""
    return settings.node_local("env.uv_cache", "dscheduler-uv-cache", override)


@functools.cache
def uv_bin() -> str:
    """uv from the running Python's environment (the ``uv`` package), else from PATH."""
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


def install_command(
    requirements: Sequence[str], index: Command, python: Path, cache: Path, *, copy: bool
) -> Command:
    """``uv pip install`` of ``requirements`` into the venv of ``python``.

    ``index``: uv's index options (:func:`index_options`).  ``copy``: copy files
    instead of hard-linking them from the cache (a venv that lives in the store
    must not share inodes with a node-local cache).
    """
    cmd: Command = [
        uv_bin(), "pip", "install", "--no-progress", "--python", python, "--cache-dir", cache,
    ]
    cmd += ["--link-mode", "copy"] if copy else []
    return [*cmd, *index, "--", *requirements]


def resolve_command(index: Command, python: Path, cache: Path, requirements: Path) -> Command:
    """``uv pip compile`` of the requirements file ``requirements`` for ``python``: the
    packages ``uv pip install`` would install, printed as ``uv pip freeze`` prints them."""
    return [uv_bin(), "pip", "compile", "--quiet", "--no-progress", "--no-header",
            "--no-annotate", "--python", python, "--cache-dir", cache, *index, requirements]


def index_options(find_links: Sequence[str], index_url: str | None,
                  extra_index_urls: Sequence[str], offline: bool) -> Command:
    """uv's options for an env's find-links and index URLs (``--offline``: uv's cache
    alone)."""
    cmd: Command = []
    for link in find_links:
        cmd += ["--find-links", link]
    if index_url:
        cmd += ["--index-url", index_url]
    for url in extra_index_urls:
        cmd += ["--extra-index-url", url]
    return [*cmd, "--offline"] if offline else cmd


_NAME_WORD = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_UV_PATTERNS = [
    re.compile(r"Because (?P<name>[A-Za-z0-9][\w.\-]*)(?:\[[^\]]*\])? was not found"),
    re.compile(r"there is no version of (?P<name>[A-Za-z0-9][\w.\-]*)"),
    re.compile(r"Because only (?P<name>[A-Za-z0-9][\w.\-]*)\S* is available"),
    re.compile(r"Because (?P<name>[A-Za-z0-9][\w.\-]*)\S* has no (?:usable )?wheels"),
    re.compile(r"Failed to (?:download|build|fetch|prepare)[^`]*`(?P<name>[A-Za-z0-9][\w.\-]*)"),
]


def explain_uv_failure(output: str, requirements: Sequence[str]) -> str:
    """Which requirement uv could not satisfy, in one sentence."""
    by_name: dict[str, str] = {canonicalize_name(Requirement(r).name): r for r in requirements}
    lines = [line.strip() for line in output.splitlines()]
    cause = next((line.removeprefix("cause: ") for line in lines if line.startswith("cause:")),
                 "") or next((line for line in lines if line.startswith("error:")), "")
    missing: list[str] = []
    for pattern in _UV_PATTERNS:
        for match in pattern.finditer(output):
            found_name = str(canonicalize_name(match["name"]))
            if found_name not in missing:
                missing.append(found_name)
    if missing:
        mine = [by_name[n] for n in missing if n in by_name]
        what = f"requirement {mine[0]!r}" if mine else f"package {missing[0]!r} (a dependency)"
        return f"{what} cannot be installed: {cause}"
    # A conflict: name the requirements the explanation mentions, in its order.  Every
    # word that could be a project name (PEP 508: letters and digits at both ends) is
    # normalised as the requirements' names are.
    first: dict[str, int] = {}
    for word in _NAME_WORD.finditer(output):
        name = canonicalize_name(word.group())
        if name in by_name:
            first.setdefault(name, word.start())
    mentioned = [by_name[name] for name in sorted(first, key=first.__getitem__)]
    if len(mentioned) == 1:
        return f"requirement {mentioned[0]!r} cannot be installed: {cause}"
    if mentioned:
        return (f"requirements {', '.join(map(repr, mentioned))} cannot be installed "
                f"together: {cause}")
    return f"uv pip install failed: {cause or 'see the output below'}"
