"""Shared pytest setup for dscheduler's tests.

Sections, top to bottom: CI guard, cleanup, temporary root shared by SLURM nodes, SLURM,
slowfs, SLURM on several nodes. Add further fixtures below, each in a section of its own.
Helpers shared by test modules (not fixtures) are in tests/helpers.py: no test module
imports another.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

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
    _shared_temproot(config)


# =====================================================================================
# Temporary directories every SLURM node sees: the nodes of the multi-node cluster
# (ci/slurm/up with DSCHEDULER_SLURM_NODES) each have a /tmp of their own, so stores
# made under pytest's basetemp must not be in /tmp.  Unless --basetemp or
# PYTEST_DEBUG_TEMPROOT says otherwise, pytest's temporary root is SHARED_TEMPROOT.
# =====================================================================================
SHARED_TEMPROOT = Path("/var/tmp/dscheduler-ci")


def _shared_temproot(config: pytest.Config) -> None:
    if config.option.basetemp or os.environ.get("PYTEST_DEBUG_TEMPROOT"):
        return
    try:
        SHARED_TEMPROOT.mkdir(parents=True, exist_ok=True)
        if SHARED_TEMPROOT.stat().st_uid == 0:  # ours (root): open to every user, like /tmp
            SHARED_TEMPROOT.chmod(0o1777)
    except OSError:
        return  # pytest's own default, then
    os.environ["PYTEST_DEBUG_TEMPROOT"] = str(SHARED_TEMPROOT)


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


def jobs_writing_under(root: Path, conf: str | None = None) -> list[str]:
    """This user's SLURM jobs whose output file is under ``root`` (in the cluster of
    SLURM_CONF ``conf``, default: the environment's)."""
    if shutil.which("squeue") is None:
        return []
    env = {**os.environ, "SLURM_CONF": conf} if conf else None
    try:
        out = subprocess.run(["squeue", "-h", f"--user={os.getuid()}", "-O", "JobID:|,StdOut:|"],
                             capture_output=True, text=True, timeout=30, check=False,
                             env=env).stdout
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
    jobs: list[str] = []
    # the environment's cluster, and the multi-node one (tests/test_slurm_nodes.py)
    # (and the one-node one: tests that need the host, slurm_one_node)
    confs = [None, *(c for c in (NODES_CONF, ONE_NODE_CONF) if os.path.exists(c))]
    for conf in confs if basetemp is not None else []:
        found = jobs_writing_under(basetemp, conf)
        if found:
            env = {**os.environ, "SLURM_CONF": conf} if conf else None
            subprocess.run(["scancel", *found], check=False, timeout=60, env=env)
            jobs += found
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


@pytest.fixture(scope="session")
def slurm_node_cpus(slurm_available: str) -> dict[str, int]:
    """The nodes of the default partition and their CPUs (sinfo): ``{"vm": 2}`` on the
    one-node cluster, ``{"dsn1": 2, "dsn2": 2, "dsn3": 2}`` on the multi-node one."""
    out = subprocess.run(["sinfo", "-h", "-N", "-p", slurm_available, "-o", "%n %c"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    nodes = {name: int(cpus) for name, cpus in (line.split() for line in out.splitlines())}
    assert nodes, f"sinfo lists no node in partition {slurm_available}"
    return nodes


@pytest.fixture(scope="session")
def slurm_interface() -> str:
    """Dask's network interface for workers in the SLURM cluster: the configured one
    (ci/test exports the multi-node cluster's bridge, dsnodes0), else loopback."""
    import dask.config

    return str(dask.config.get("dscheduler.slurm.interface", None) or "lo")


# =====================================================================================
# slowfs: a store on FUSE with 1 ms per metadata operation and NFS-like kernel caches
# (tests/slowfs.py, mounted by helpers.slow_mount).  Without /dev/fuse or fusermount3
# the tests skip; under CI=true (ci/test installs fuse3) that is a failure instead.
# =====================================================================================


@pytest.fixture
def fuse_available() -> None:
    missing = [what for what, ok in (("/dev/fuse", os.path.exists("/dev/fuse")),
                                     ("fusermount3", shutil.which("fusermount3")))
               if not ok]
    if missing:
        reason = f"slowfs needs {' and '.join(missing)} (Debian: apt-get install fuse3)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {reason}; ci/setup installs fuse3")
        pytest.skip(reason)


@pytest.fixture
def slow_store(tmp_path: Path, fuse_available: None) -> Iterator[object]:
    """A ds.Store on slowfs: 1 ms per metadata operation, attributes and names cached 3 s."""
    from helpers import slow_mount

    import dscheduler as ds

    with slow_mount(tmp_path / "backing", tmp_path / "slow",
                    "--delay-ms", "1", "--attr-timeout", "3") as root:
        yield ds.Store(root / "data")


# =====================================================================================
# SLURM on several nodes: ci/slurm/up with DSCHEDULER_SLURM_NODES=3 starts a cluster of
# its own (SLURM_CONF=/etc/slurm-nodes/slurm.conf) whose nodes live in namespaces
# (docs/design.md §9).  It runs beside the one-node cluster.
# =====================================================================================
NODES_CONF = "/etc/slurm-nodes/slurm.conf"
NODES_INFO = Path("/etc/slurm-nodes/nodes.json")
N_NODES = 3


@pytest.fixture(scope="session")
def slurm_nodes() -> dict[str, Any]:
    """The multi-node cluster, started by ``ci/slurm/up`` when it is not up (as root; under
    ci/test its marker makes ci/test stop it): ``nodes.json`` as written there
    (``slurm_conf``, ``interface``, ``host`` address, ``nodes``: name -> address).

    Skips without SLURM or root (under CI=true such a skip of a `slurm` test fails).
    """
    if shutil.which("sinfo") is None or shutil.which("unshare") is None:
        pytest.skip("SLURM or util-linux missing; start the nodes with "
                    "DSCHEDULER_SLURM_NODES=3 ci/slurm/up")
    if os.getuid() != 0:
        pytest.skip("the multi-node SLURM cluster needs root (namespaces, a bridge)")
    up = Path(__file__).resolve().parent.parent / "ci" / "slurm" / "up"
    env = {k: v for k, v in os.environ.items() if k != SPAWNED_BY}  # daemons outlive us
    env["DSCHEDULER_SLURM_NODES"] = str(N_NODES)
    done = subprocess.run([str(up)], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    if done.returncode != 0:
        pytest.fail(f"DSCHEDULER_SLURM_NODES={N_NODES} ci/slurm/up failed:\n{done.stderr}")
    info: dict[str, Any] = json.loads(NODES_INFO.read_text())
    assert info["slurm_conf"] == NODES_CONF and len(info["nodes"]) >= N_NODES, info
    return info


ONE_NODE_CONF = "/etc/slurm/slurm.conf"


@pytest.fixture
def slurm_one_node(slurm_available: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The one-node cluster (its node is the host) for a test whose jobs need what only
    the host has: the package index (the multi-node cluster's nodes have no route out).
    Under ci/test's multi-node mode it switches SLURM_CONF and Dask's interface back for
    the test; the default partition's name.  Skips when that cluster is down (a failure
    under CI=true)."""
    if os.environ.get("SLURM_CONF") != NODES_CONF:
        yield slurm_available
        return
    import dask.config

    monkeypatch.setenv("SLURM_CONF", ONE_NODE_CONF)
    monkeypatch.delenv("DASK_DSCHEDULER__SLURM__INTERFACE", raising=False)
    out = subprocess.run(["sinfo", "-h", "-o", "%P %t"], capture_output=True, text=True,
                         timeout=30, check=False)
    if out.returncode != 0 or not out.stdout.strip():
        pytest.skip(f"the one-node SLURM cluster is down ({out.stderr.strip()}); "
                    "start it with ci/slurm/up")
    default = [p.rstrip("*") for p, _ in (line.split() for line in out.stdout.splitlines())
               if p.endswith("*")]
    with dask.config.set({"dscheduler.slurm.interface": None}):
        yield default[0] if default else slurm_available


@pytest.fixture(autouse=True)
def _kill_started() -> Iterator[None]:
    """Processes a test started through helpers.popen end with it, even when it failed."""
    yield
    from helpers import kill_started  # not at import: conftest loads before dscheduler is needed

    kill_started()
