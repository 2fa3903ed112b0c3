"""Shared pytest setup for dscheduler's tests.

Sections, top to bottom: CI guard, SLURM. Add further fixtures below, each in a
section of its own.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

# =====================================================================================
# CI guard: under CI=true a skipped `slurm`/`squashfs` test fails the run.
# The guard is the plugin module tests/ci_guard.py, so that the same code can be
# loaded into inner pytester runs (tests/test_ci_skip_guard.py). It is importable
# by name because pytest puts tests/ (this conftest's folder, no __init__.py)
# on sys.path before importing this conftest.
# "pytester" gives tests the `pytester` fixture for running inner pytest sessions.
# =====================================================================================
pytest_plugins = ["ci_guard", "pytester", "wheelhouse", "graphfixtures"]


# =====================================================================================
# SLURM: ci/slurm/up starts a one-node cluster (partition "debug", 2 fake GPUs).
# =====================================================================================
_USABLE_NODE_STATES = ("idle", "mix", "alloc", "comp")


@pytest.fixture(scope="session")
def slurm_available() -> str:
    """Name of the default SLURM partition; skips when SLURM is missing or down.

    Under CI=true such a skip of a `slurm` test is turned into a failure.
    """
    if shutil.which("sinfo") is None:
        pytest.skip("SLURM not installed (no sinfo); start one with ci/slurm/up")
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%P %t"],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("sinfo timed out: slurmctld not answering; start it with ci/slurm/up")
    if out.returncode != 0:
        pytest.skip(f"sinfo failed: {out.stderr.strip()}; start SLURM with ci/slurm/up")
    rows = [row for row in (line.split() for line in out.stdout.splitlines()) if len(row) == 2]
    # the default partition is marked with "*" ("debug*"); a state ending in "*"
    # means the node does not respond
    up = [(p, s) for p, s in rows if s.startswith(_USABLE_NODE_STATES) and "*" not in s]
    if not up:
        pytest.skip(f"no SLURM node up (sinfo: {out.stdout.strip() or 'nothing'})")
    default = [p for p, _ in up if p.endswith("*")]
    return (default or [up[0][0]])[0].rstrip("*")
