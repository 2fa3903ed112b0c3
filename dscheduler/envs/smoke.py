"""The import smoke test of a new env: which modules, and how a failure reads.

By default the smoke test imports the top-level modules of the env's
requirements, read from each installed distribution's metadata with
:mod:`importlib.metadata` (``top_level.txt``, else ``RECORD``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

SCRIPT = """\
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


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        raise FileNotFoundError(f"no lib/python3*/site-packages in {venv}")
    return found[0]


def top_level_modules(site: Path, requirement_names: Sequence[str]) -> list[str]:
    """The importable top-level modules of the given distributions installed in ``site``.

    A module named like its distribution (``torch`` for torch) is enough on
    its own: other top-level modules of a distribution are often optional
    extras that need more packages (``torchgen`` needs PyYAML).  Otherwise
    every public top-level module.  Distributions not installed (an
    environment marker said no) are skipped.
    """
    dists: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions(path=[str(site)]):
        try:
            name = dist.metadata["Name"]
        except Exception:  # a dist-info without METADATA: not really installed
            continue
        if name:
            dists[canonicalize_name(name)] = dist
    modules: list[str] = []
    for raw in requirement_names:
        wanted = canonicalize_name(raw)
        found = dists.get(wanted)
        if found is None:
            continue
        tops = _tops_of(found)
        own = wanted.replace("-", "_")
        chosen = [own] if own in tops else sorted(t for t in tops if not t.startswith("_"))
        modules.extend(m for m in chosen if m not in modules)
    return modules


def _tops_of(dist: metadata.Distribution) -> set[str]:
    text = dist.read_text("top_level.txt")
    if text is not None:
        names = {line.strip() for line in text.splitlines()}
    else:
        names = set()
        for file in dist.files or []:
            parts = file.parts
            if not parts or parts[0] == ".." or parts[0].endswith((".dist-info", ".data")):
                continue
            names.add(parts[0].removesuffix(".py") if len(parts) == 1 else parts[0])
    return {n for n in names if _IDENT.match(n)}


def failed_module(output: str) -> str | None:
    """The module whose import failed, from the smoke script's output."""
    match = re.search(r"^dscheduler-smoke-failed: (\S+)", output, re.MULTILINE)
    return match[1] if match else None
