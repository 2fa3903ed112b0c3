"""Shared pytest setup for dscheduler's tests.

Sections, top to bottom: CI guard, cleanup, SLURM. Add further fixtures below,
each in a section of its own.  Helpers shared by test modules (not fixtures)
are in tests/helpers.py: no test module imports another.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from types import FrameType

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
# Cleanup: nothing a test started outlives the session, even a killed one.
# Every process started under this session (detached schedulers in sessions of
# their own, reapers, drivers, SLURM workers: sbatch passes the environment on)
# carries DSCHEDULER_TEST_SPAWNED_BY=<run>; <run> is $DSCHEDULER_TEST_RUN when
# ci/test set it, else new.  At the end of the session, after all fixtures are
# torn down, what still carries it is killed, and SLURM jobs writing under the
# session's basetemp are cancelled.  SIGTERM (ci/test's timeout) becomes a
# KeyboardInterrupt, so that finalizers and this sweep run; after a SIGKILL,
# ci/test does the same sweep itself.
# =====================================================================================
SPAWNED_BY = "DSCHEDULER_TEST_SPAWNED_BY"
_SWEEPS = SPAWNED_BY not in os.environ  # an inner pytest process leaves it to the outer one
if _SWEEPS:
    os.environ[SPAWNED_BY] = os.environ.get("DSCHEDULER_TEST_RUN") or f"pytest-{uuid.uuid4().hex}"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
    raise KeyboardInterrupt(f"signal {signum}: stopping, cleaning up")


def pytest_configure(config: pytest.Config) -> None:
    if _SWEEPS and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def spawned_pids(run: str) -> list[int]:
    """Processes other than this one whose environment says this run started them."""
    mark = f"{SPAWNED_BY}={run}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or a kernel thread
            continue
    return found


def jobs_writing_under(root: Path) -> list[str]:
    """This user's SLURM jobs whose output file is under ``root``."""
    if shutil.which("squeue") is None:
        return []
    try:
        out = subprocess.run(["squeue", "-h", f"--user={os.getuid()}", "-O", "JobID:|,StdOut:|"],
                             capture_output=True, text=True, timeout=30, check=False).stdout
    except subprocess.TimeoutExpired:
        return []
    rows = (line.split("|") for line in out.splitlines())
    return [row[0].strip() for row in rows
            if len(row) > 1 and row[1].strip().startswith(f"{root}/")]


@pytest.hookimpl(trylast=True)  # after the runner's hook has torn down every fixture
def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _SWEEPS:
        return
    clusters = sys.modules.get("dscheduler.run.clusters")
    if clusters is not None:  # the process's own clusters, closed as at exit: no kill
        try:
            clusters.close_slurm()
            clusters.close_local()
        except Exception as err:  # the sweep below still runs
            print(f"conftest: closing the process's clusters failed: {err!r}", file=sys.stderr)
    left = {}
    for pid in spawned_pids(os.environ[SPAWNED_BY]):
        try:
            left[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            os.kill(pid, signal.SIGKILL)
        except (OSError, UnicodeDecodeError):
            continue
    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = getattr(factory, "_basetemp", None)  # None: no test asked for a tmp dir
    jobs = jobs_writing_under(basetemp) if basetemp is not None else []
    if jobs:
        subprocess.run(["scancel", *jobs], check=False, timeout=60)
    if left or jobs:
        print(f"\nconftest: killed {len(left)} processes and cancelled SLURM jobs {jobs} left "
              "behind by the tests:", *(f"  {pid} {cmd[:200]}" for pid, cmd in left.items()),
              sep="\n", file=sys.stderr)


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
