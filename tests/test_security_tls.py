"""Schedulers dscheduler starts admit only their owner: TLS with per-cluster credentials.

docs/design.md §15.  The owner is this process (root); the attacker is uid
65534 (setpriv), who reaches every port and reads the store, and tries
``Client(addr).run_on_scheduler(write a marker)`` over tcp://, over tls://
without credentials and with a self-signed certificate of its own.  Each
attack is refused and no marker is written; with ``security.mode: tcp`` the
same attack succeeds (the check that the tests see a broken defence).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.config
import pytest
from graphfixtures import total

import dscheduler as ds
from dscheduler.errors import ConfigError
from dscheduler.run import clusters, security

CLI = str(Path(sys.executable).with_name("dscheduler"))
NOBODY = 65534

ATTACK = r"""
import json, os, subprocess, sys
from distributed import Client
from distributed.security import Security

address, marker = sys.argv[1], sys.argv[2]
hostport = address.split("://")[-1]
home = os.environ["HOME"]
cert, key = f"{home}/own.pem", f"{home}/own.key"
subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-subj", "/CN=dask-internal", "-keyout", key, "-out", cert],
               check=True, capture_output=True)
own = Security(require_encryption=True, tls_ca_file=cert, tls_client_cert=cert,
               tls_client_key=key)

def write(path):
    with open(path, "w") as f:
        f.write(f"written by uid {os.getuid()}")
    return "written"

out = {}
for name, addr, sec in [("tcp", "tcp://" + hostport, None), ("tls", "tls://" + hostport, None),
                        ("own-cert", "tls://" + hostport, own)]:
    try:
        with Client(addr, timeout=10, security=sec) as client:
            out[name] = "ran: " + str(client.run_on_scheduler(write, marker))
    except Exception as err:
        out[name] = f"refused: {type(err).__name__}: {str(err)[:300]}"
if len(sys.argv) > 3:  # a store: what ds.connect does for this user
    import dscheduler as ds
    try:
        ds.connect(sys.argv[3])
        out["connect"] = "connected"
    except Exception as err:
        out["connect"] = f"refused: {type(err).__name__}: {err}"
print(json.dumps(out))
"""


@pytest.fixture
def shared() -> Iterator[Path]:
    """A dir both users can enter (pytest's tmp_path is 0700), the attacker's home in it;
    in /var/tmp, which the nodes of the multi-node SLURM cluster see (not /tmp)."""
    base = Path(tempfile.mkdtemp(prefix="dscheduler-tls-", dir="/var/tmp"))
    base.chmod(0o755)
    home = base / "attacker"
    home.mkdir(mode=0o700)
    os.chown(home, NOBODY, NOBODY)
    (base / "markers").mkdir(mode=0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def attack(shared: Path, address: str, store: Path | None = None) -> tuple[dict[str, str], Path]:
    """Run ATTACK as uid 65534 against ``address``; its outcomes and the marker's path."""
    marker = shared / "markers" / f"marker-{time.monotonic_ns()}"
    home = shared / "attacker"
    env = {"HOME": str(home), "TMPDIR": str(home), "PATH": os.environ["PATH"],
           "PYTHONPATH": str(Path(__file__).parent)}
    cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
           sys.executable, "-c", ATTACK, address, str(marker)]
    done = subprocess.run([*cmd, *([str(store)] if store else [])], capture_output=True,
                          text=True, timeout=180, env=env, cwd=home)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), marker


def assert_refused(outcomes: dict[str, str], marker: Path) -> None:
    assert outcomes and all(v.startswith("refused") for v in outcomes.values()), outcomes
    assert not marker.exists(), marker.read_text()


def assert_private(where: Path) -> None:
    """The cluster's credentials: a 0700 dir of this user, files 0600."""
    st = where.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid(), oct(st.st_mode)
    files = sorted(p.name for p in where.iterdir())
    assert files == [security.CERT, security.KEY], files
    for name in files:
        assert stat.S_IMODE((where / name).stat().st_mode) == 0o600, name


# -- the credentials, without a cluster ---------------------------------------------------


@pytest.mark.fast
def test_credentials_are_private_and_a_record_without_them_is_refused(tmp_path: Path) -> None:
    with dask.config.set({"dscheduler.security.directory": str(tmp_path / "certs")}):
        sec = security.create("abc123")
        assert_private(tmp_path / "certs" / "abc123")
        assert sec.require_encryption and sec.tls_client_key == str(
            tmp_path / "certs" / "abc123" / security.KEY)
        assert security.load("abc123", "tls://h:1", "cluster.json").tls_ca_file == sec.tls_ca_file
        with pytest.raises(ConfigError, match=r"no credentials for cluster ffff0000 "
                                              r"\(tls://h:1, named by cluster.json\)"):
            security.load("ffff0000", "tls://h:1", "cluster.json")
        with pytest.raises(ConfigError, match=r"'tcp://h:1', which is not tls://: refusing"):
            security.load("abc123", "tcp://h:1", "cluster.json")
        with pytest.raises(ConfigError, match=r"'\.\./abc123' is not a cluster id"):
            security.load("../abc123", "tls://h:1", "cluster.json")
        security.remove("abc123")
        assert not (tmp_path / "certs" / "abc123").exists()
    with dask.config.set({"dscheduler.security.mode": "off"}), \
            pytest.raises(ConfigError, match=r"security.mode is 'off', not one of tls, tcp"):
        security.enabled()


@pytest.mark.fast
def test_an_unreachable_address_is_a_clear_error_within_seconds() -> None:
    for address in ("tcp://127.0.0.1:1", "tls://127.0.0.1:1"):
        start = time.monotonic()
        with dask.config.set({"dscheduler.security.connect_timeout": 2}), \
                pytest.raises(ConfigError, match=f"cannot connect to the scheduler at {address} "
                                                 r"within 2 s: .*Check the address"):
            clusters.get_client(address)
        assert time.monotonic() - start < 15


RECIPE = "import dscheduler as ds\n\n@ds.task(version='1')\ndef one() -> int:\n    " \
         "return 1\n\ndef nodes():\n    return [one()]\n"


def test_cli_with_an_unreachable_cluster_says_one_line(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.py"
    recipe.write_text(RECIPE)
    done = subprocess.run([CLI, "run", str(recipe), "--store", str(tmp_path / "data"),
                           "--cluster", "tcp://127.0.0.1:1", "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "cannot connect to the scheduler at tcp://127.0.0.1:1" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr + done.stdout


# -- (a) the embedded local cluster ---------------------------------------------------------


@pytest.fixture
def local() -> Iterator[Any]:
    """This process's embedded cluster, one worker; closed after the test."""
    clusters.close_local()
    try:
        with dask.config.set({"dscheduler.local.n_workers": 1}):
            yield clusters.local_cluster()
    finally:
        clusters.close_local()


def test_local_cluster_refuses_another_user(local: Any, shared: Path, log: str) -> None:
    address = local.scheduler.address
    assert address.startswith("tls://127.0.0.1:")
    where = Path(local.security.tls_ca_file).parent
    assert_private(where)
    # the owner: a graph runs, the dscheduler page is installed, run_on_scheduler works
    results = ds.compute([total([], log)], store=shared / "data", cluster="local",
                         progress=False)
    assert results.ok and results.values() == [0]
    assert local.run_on_scheduler(os.getuid) == os.getuid()
    assert_refused(*attack(shared, address))
    clusters.close_local()
    assert not where.exists()  # removed with the cluster


def test_without_tls_the_same_attack_succeeds(shared: Path) -> None:
    """The defence broken on purpose (security.mode tcp): the attack writes its marker."""
    clusters.close_local()
    try:
        with dask.config.set({"dscheduler.security.mode": "tcp",
                              "dscheduler.local.n_workers": 1}):
            address = clusters.local_cluster().scheduler.address
        assert address.startswith("tcp://127.0.0.1:")
        outcomes, marker = attack(shared, address)
        assert outcomes["tcp"] == "ran: written" and marker.exists(), outcomes
    finally:
        clusters.close_local()


# -- (b) a SLURM cluster of a driver ---------------------------------------------------------

SMALL = {"cores": 1, "memory": "1GB", "max_jobs": 1, "walltime": "00:15:00",
         "idle_timeout": 2, "interval": 0.5, "gpu": {"max_jobs": 0}}


@pytest.mark.slurm
def test_slurm_cluster_refuses_another_user(slurm_available: str, shared: Path) -> None:
    cluster = ds.slurm_cluster(shared / "data", partition=slurm_available, **SMALL)
    try:
        where = security.cluster_dir(cluster.cluster_id)
        assert cluster.scheduler_address.startswith("tls://")
        assert_private(where)
        script = cluster.job_script()
        assert f"--tls-key {where / security.KEY}" in script, script
        # a SLURM job's worker joins over TLS with the files the script names
        assert cluster.client.submit(int.__add__, 1, 2).result(timeout=240) == 3
        assert_refused(*attack(shared, cluster.scheduler_address))
    finally:
        cluster.close()
    assert not where.exists()


# -- (c) `dscheduler cluster up` -------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=240)


@pytest.fixture
def detached(slurm_available: str, shared: Path) -> Iterator[tuple[ds.Store, dict[str, Any]]]:
    """A cluster up for a store both users can read; down after the test, even a failed one."""
    store = ds.Store(shared / "data")
    try:
        up = _cli("cluster", "up", "--store", str(store.root), "-o",
                  f"partition={slurm_available}", "-o", "cores=1", "-o", "memory=1GB",
                  "-o", "max_jobs=1", "-o", "gpu.max_jobs=0", "-o", "idle_timeout=2")
        assert up.returncode == 0, up.stderr
        assert "TLS: only you can connect" in up.stdout, up.stdout
        yield store, json.loads(store.slurm_cluster_record.read_text())
    finally:
        clusters._clients.clear()
        down = _cli("cluster", "down", "--store", str(store.root))
        assert down.returncode == 0, down.stderr


@pytest.mark.slurm
def test_cluster_up_refuses_another_user_and_edited_records(
        detached: tuple[ds.Store, dict[str, Any]], shared: Path) -> None:
    store, record = detached
    address = record["address"]
    assert address.startswith("tls://")
    where = security.cluster_dir(record["cluster"])
    assert_private(where)
    # the attacker reads cluster.json, tries tcp://, tls:// and its own certificate, and
    # ds.connect(store) as itself
    outcomes, marker = attack(shared, address, store.root)
    assert outcomes["connect"].startswith(
        f"refused: ConfigError: no credentials for cluster {record['cluster']}"), outcomes
    assert_refused(outcomes, marker)
    # the owner connects, and a graph runs
    log = str(shared / "log")
    client = ds.connect(store)
    assert client.scheduler.address == address
    results = ds.compute([total([], log)], store=store, cluster="store", progress=False)
    assert results.ok and results.values() == [0]
    clusters._clients.clear()
    client.close()
    # a hand-edited record: plain tcp, another tls scheduler, a cluster id we hold nothing for
    path = store.slurm_cluster_record
    original = path.read_text()
    local = clusters.local_cluster()
    try:
        for edit, error in [
            ({"address": address.replace("tls://", "tcp://")}, r"which is not tls://: refusing"),
            ({"address": local.scheduler.address},
             f"cannot connect to the scheduler at {local.scheduler.address} \\(the cluster "),
            ({"cluster": "0badc0de"}, r"no credentials for cluster 0badc0de"),
        ]:
            path.write_text(json.dumps({**record, **edit}))
            start = time.monotonic()
            with pytest.raises(ConfigError, match=error):
                ds.connect(store)
            assert time.monotonic() - start < 30
        # ... and `--cluster store` says so in a line
        path.write_text(json.dumps({**record, "address": local.scheduler.address}))
        recipe = shared / "recipe.py"
        recipe.write_text(RECIPE)
        done = _cli("run", str(recipe), "--store", str(store.root), "--cluster", "store",
                    "--no-progress")
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert f"cannot connect to the scheduler at {local.scheduler.address}" in done.stderr
        assert "Traceback" not in done.stderr + done.stdout
    finally:
        path.write_text(original)
        clusters.close_local()
