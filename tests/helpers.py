"""Helpers shared by test modules: no test module imports another (tests/test_layout.py).

Importable as ``helpers`` because pytest puts tests/ (no __init__.py) on
``sys.path``; workers of the local cluster get the same path.  Fixtures live
in the plugins conftest.py loads (graphfixtures, wheelhouse); plain functions
and the small task definitions several modules run live here:

* waiting: :func:`wait_for` (the one polling loop, with a deadline and a message)
* files and records: :func:`sha256`, :func:`write_node_record`
* running nodes in this process: :func:`run_inline`, :class:`BoundCfg`,
  :func:`bound_v1`, :func:`bound_v2`
* dashboards: :func:`assert_loopback_only`, :func:`page_json`
* SLURM: :func:`our_jobs`, :func:`wait_until_gone`, :func:`run`
* a store with network-filesystem latency: :func:`slow_mount` (tests/slowfs.py)
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlparse

import psutil
import pytest

import dscheduler as ds
from dscheduler.run import dashboard
from dscheduler.run.execute import run_node
from dscheduler.run.nodespec import make_specs
from dscheduler.store import NodePaths
from dscheduler.store.index import segments
from dscheduler.store.records import set_done, write_record

T = TypeVar("T")

# -- waiting --------------------------------------------------------------------------------


def wait_for(check: Callable[[], T | None], timeout: float = 60, what: str = "",
             interval: float = 0.05, ignore: tuple[type[BaseException], ...] = ()) -> T:
    """Call ``check`` until it returns something true and return that value.

    Raises AssertionError naming ``what`` (and the last value seen) once ``timeout``
    seconds have passed: generous defaults, the machine may be loaded.  Exceptions of
    the types in ``ignore`` count as "not yet" (a page being replaced, say).
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except ignore as err:
            last = err
        else:
            if last:
                return last  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for "
                                 f"{what or getattr(check, '__name__', check)} "
                                 f"(last: {last!r})")
        time.sleep(interval)


# -- files and records -----------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_node_record(paths: NodePaths, state: str, n: int, when: float = 0,
                      **attempt: Any) -> str:
    """Write a node's record (and its .done link when it succeeded); its key."""
    key = f"{n:016x}" + "0" * 48
    record = {"task": paths.task, "key": key, "name": f"{paths.task}-{key[:16]}",
              "state": state, "attempts": [{"attempt": 1, "state": state, **attempt}]}
    paths.dir.mkdir(parents=True, exist_ok=True)
    write_record(paths, record)
    if state == "succeeded":
        set_done(paths, key)
    if when:
        os.utime(paths.record, (when, when))
    return key


# -- nodes run in this process ---------------------------------------------------------------


def run_inline(nodes: list[ds.Node], store: ds.Store, force: bool = False) -> dict[str, str]:
    """Run what the plan says, upstream first, in this process: state per node name.

    Nodes run through the worker's own code path (``run_node``) without a cluster,
    so records, links and index entries are the real ones.
    """
    p = ds.plan(nodes, store=store, force=force)
    specs = make_specs(p, os.urandom(4).hex())  # a submission of its own
    store.ensure()
    states = {}
    for node in p.to_run:
        try:
            states[node.name] = run_node(specs[node.key])[0]
        except ds.TaskError:
            states[node.name] = "failed"
    return states


class BoundCfg(ds.RunConfig):
    """A config with no env fields, for two versions of one task at one path."""

    ENV_FIELDS: ClassVar = ()
    x: int = 0
    label: str = ""

    def env(self) -> ds.Env:
        return ds.Env(image="dir")


@ds.task(version="1", env=None, name="bound")
def bound_v1(cfg: BoundCfg, case: str, log: str) -> int:
    with open(log, "a") as f:
        f.write("v1\n")
    return 1


@ds.task(version="2", env=None, name="bound")
def bound_v2(cfg: BoundCfg, case: str, log: str) -> int:
    with open(log, "a") as f:
        f.write("v2\n")
    if os.path.exists(log + ".fail"):
        raise ValueError("v2 told to fail")
    return 2


# -- dashboards --------------------------------------------------------------------------------


def off_loopback_addresses() -> list[str]:
    """The machine's IPv4 addresses outside 127.0.0.0/8."""
    return sorted({a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                   if a.family == socket.AF_INET
                   and not ipaddress.ip_address(a.address).is_loopback})


def assert_loopback_only(link: str) -> list[str]:
    """The dashboard at ``link`` listens on 127.0.0.1 only, answers there and is
    refused on every non-loopback IPv4 address of the machine; those addresses."""
    port = urlparse(link).port
    assert port
    listening = {c.laddr.ip for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert listening == {"127.0.0.1"}, listening
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    addresses = off_loopback_addresses()
    for address in addresses:
        # a server bound to every interface (0.0.0.0) would answer here
        with pytest.raises(ConnectionRefusedError), \
                socket.create_connection((address, port), timeout=5):
            pass
    return addresses


def page_json(dashboard_link: str) -> dict[str, Any] | str:
    """GET ``/dscheduler.json`` beside a dashboard link: its data, or what went wrong
    (an HTTP error such as a 404 when the page is missing, or JSON that does not parse)."""
    url = dashboard.page_link(dashboard_link) + ".json"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            if response.status != 200:
                return f"{url}: HTTP {response.status}"
            return dict(json.load(response))
    except (urllib.error.URLError, ValueError) as err:
        return f"{url}: {type(err).__name__}: {err}"


# -- SLURM -------------------------------------------------------------------------------------


def our_jobs() -> dict[str, tuple[str, str]]:
    """This user's jobs in squeue: id -> (state, name)."""
    out = subprocess.run(["squeue", "-h", f"--user={os.getuid()}", "-o", "%i|%T|%j"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    rows = (line.split("|") for line in out.splitlines() if line.strip())
    return {job: (state, name) for job, state, name in rows}


def wait_until_gone(job_ids: set[str], timeout: float = 60.0) -> float:
    """Seconds until none of ``job_ids`` is in squeue; AssertionError past ``timeout``."""
    start = time.monotonic()
    wait_for(lambda: not set(our_jobs()) & job_ids, timeout,
             f"jobs {sorted(job_ids)} to leave squeue", interval=0.5)
    return time.monotonic() - start


def run(nodes: list[ds.Node], store: ds.Store | str, cluster: Any,
        timeout: float = 180) -> ds.Results:
    """``ds.compute`` that gives up after ``timeout`` seconds instead of hanging."""
    return ds.submit(nodes, store=store, cluster=cluster).wait(timeout=timeout, progress=False)


# -- slowfs: a store with network-filesystem latency and caches -------------------------------

SLOWFS = Path(__file__).with_name("slowfs.py")


def mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point (from the mount table: a dead FUSE mount counts)."""
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


@contextmanager
def slow_mount(backing: Path, mountpoint: Path, *options: str) -> Iterator[Path]:
    """``backing`` mounted at ``mountpoint`` through tests/slowfs.py (``options`` are its
    flags: ``--delay-ms``, ``--attr-timeout``, ...) for the block, then always unmounted
    (lazily when busy) and the process ended.  Started from the tests, it carries their
    DSCHEDULER_TEST_SPAWNED_BY; it also unmounts itself if its parent dies."""
    backing.mkdir(parents=True, exist_ok=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    log = mountpoint.with_name(f"{mountpoint.name}.slowfs.log")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(SLOWFS), str(backing), str(mountpoint),
                                 *options], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is not None or mounted(mountpoint), 60,
                 f"slowfs to mount {mountpoint}")
        if proc.poll() is not None:
            raise AssertionError(f"slowfs exited with {proc.returncode}: {log.read_text()}")
        yield mountpoint
    finally:
        # This process's index segment writers keep a file open on the mount: close them.
        for writer in list(segments._writers.values()):
            if writer.layout.root.is_relative_to(mountpoint):
                writer.close()
        if mounted(mountpoint) and subprocess.run(["fusermount3", "-u", str(mountpoint)],
                                                  capture_output=True).returncode:
            # Busy: detach it now; the files still open on it fail once slowfs is gone.
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
            proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


#: Processes tests started through :func:`popen`; conftest's autouse fixture kills those
#: still running after each test (stopped ones too), so a test that fails half-way
#: leaves none behind.
STARTED: list[subprocess.Popen[str]] = []


def popen(args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    """``subprocess.Popen`` with text pipes for stdout and stderr, killed after the test."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)
    STARTED.append(proc)
    return proc


def kill_started() -> None:
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()  # SIGKILL ends a stopped process too
        proc.communicate(timeout=60)
