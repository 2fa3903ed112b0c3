"""Per-user dirs outside the store, attacked by another user (docs/design.md §15).

Tests run as root; the attacker is uid 65534 (setpriv), who makes each node-local dir
first in a shared sticky dir (like /tmp, mode 1777) that the victim's TMPDIR names:
owned by the attacker, a symlink to the attacker's dir, or ours but writable by all,
with code planted in it (a cloudpickle package, a bin/python) that would write a marker
file.  The victim is root: the venv's interpreter lives under /root, which no other uid
can reach, and root is the worst case (it could write into the attacker's dirs, so only
our check stops it).  Each attack ends in an UnsafePathError naming the path and its
owner, and no marker.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import dask.config
import pytest
from graphfixtures import Cfg, work

import dscheduler as ds
from dscheduler import identity, settings
from dscheduler.envs.backends import BACKENDS
from dscheduler.envs.build import build_env
from dscheduler.envs.mount import SharedMount, mount
from dscheduler.errors import UnsafePathError
from dscheduler.run import clusters, runner
from dscheduler.run.slurm.jobs import job_script
from dscheduler.run.slurm.options import resolve

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="plays another user: needs root")

ATTACKER = 65534
UID = os.getuid()


def as_attacker(script: str, tmp: Path) -> None:
    """Run a shell script as uid 65534 (HOME and TMPDIR: the shared dir)."""
    subprocess.run(
        ["setpriv", f"--reuid={ATTACKER}", f"--regid={ATTACKER}", "--clear-groups", "--",
         "sh", "-euc", script],
        check=True, cwd=tmp, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp),
                                  "TMPDIR": str(tmp)}, timeout=60)


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A sticky dir every user can write (like /tmp), the victim's TMPDIR; removed after.
    In /var/tmp (sticky too): the nodes of the multi-node SLURM cluster see it, not /tmp."""
    tmp = Path(tempfile.mkdtemp(prefix="dscheduler-shared-", dir="/var/tmp"))
    tmp.chmod(0o1777)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def plant(kind: str, target: Path, files: dict[str, str]) -> None:
    """``target`` made first by the attacker with ``files`` in it, as ``kind``:
    "owner" (their dir), "symlink" (a link to their dir) or "mode" (ours, mode 0777)."""
    tmp = target.parent
    where = target if kind == "owner" else tmp / "attacker"
    if kind == "mode":
        target.mkdir()
        target.chmod(0o777)
        where = target
    lines = [f"mkdir -p {shlex.quote(str(where))}"]
    for name, text in files.items():
        path = where / name
        lines += [f"mkdir -p {shlex.quote(str(path.parent))}",
                  f"printf '%s' {shlex.quote(text)} > {shlex.quote(str(path))}"]
        if name.startswith("bin/"):
            lines.append(f"chmod 755 {shlex.quote(str(path))}")
    if kind == "symlink":
        lines.append(f"ln -s {shlex.quote(str(where))} {shlex.quote(str(target))}")
    as_attacker("\n".join(lines), tmp)


def refused(err: BaseException | str, path: Path, kind: str) -> None:
    """Our refusal: the path, why, the owner, and the fix."""
    text = str(err)
    assert f"refusing to use {path}:" in text, text
    why = {"owner": f"it belongs to another user, not to uid {UID}",
           "symlink": "it is a symbolic link",
           "mode": "group or others may write to it"}[kind]
    assert why in text, text
    if kind == "owner":
        assert f"uid {ATTACKER})" in text, text
    assert "or TMPDIR to a directory of your own" in text, text


KINDS = ["owner", "symlink", "mode"]


# -- the helper itself ----------------------------------------------------------------


@pytest.mark.fast
@pytest.mark.parametrize("kind", KINDS)
def test_private_dir_refuses_a_dir_another_user_made_first(shared: Path, kind: str) -> None:
    target = shared / f"dscheduler-runner-{UID}"
    plant(kind, target, {"x": "planted"})
    with pytest.raises(UnsafePathError) as err:
        settings.node_local("task.runner_dir", "dscheduler-runner")
    refused(err.value, target, kind)
    assert "DASK_DSCHEDULER__TASK__RUNNER_DIR=DIR" in str(err.value)


@pytest.mark.fast
def test_private_dir_makes_missing_dirs_0700_and_accepts_its_own(shared: Path) -> None:
    made = settings.node_local("env.pyc_cache", "dscheduler-pyc-cache")
    assert made == shared / f"dscheduler-pyc-cache-{UID}"
    assert stat.S_IMODE(made.stat().st_mode) == 0o700 and made.stat().st_uid == UID
    assert settings.node_local("env.pyc_cache", "dscheduler-pyc-cache") == made  # again
    deep = settings.private_dir(shared / "a" / "b", setting="mount.root")  # parents made
    assert stat.S_IMODE(deep.stat().st_mode) == 0o700
    (shared / "file").write_text("")
    with pytest.raises(UnsafePathError, match="it is not a directory"):
        settings.private_dir(shared / "file")


# -- env tasks: the runner dir (cloudpickle) ----------------------------------------


def _runner_name() -> str:
    """The versioned dir runner_dir() makes (same formula: the attacker can compute it)."""
    source = Path(runner.__file__).read_bytes()
    tag = hashlib.sha256(source + cloudpickle.__version__.encode()).hexdigest()[:12]
    return f"{cloudpickle.__version__}-{tag}"


@pytest.fixture
def private_cluster(shared: Path, node_dirs: dict[str, Path]) -> Iterator[Any]:
    """A cluster of one embedded-cluster worker (clusters._local_spec) whose TMPDIR is
    the shared dir: its runner dir and its own scratch default there."""
    from distributed import Client, Scheduler, SpecCluster

    worker = clusters._local_spec(1, 1)
    cluster = SpecCluster(scheduler={"cls": Scheduler, "options": {
                              "host": "127.0.0.1", "dashboard_address": ":0"}},
                          workers={0: worker}, worker=worker)
    try:
        client = Client(cluster)
        client.wait_for_workers(1, timeout=120)
        yield client
    finally:
        cluster.close()


def test_env_tasks_and_worker_scratch_are_private_in_the_normal_case(
        private_cluster: Any, shared: Path, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    results = ds.compute([work(Cfg(x=1, log=log), "c")], store=ds.Store(tmp_path / "data"),
                         cluster=private_cluster, progress=False)
    results.raise_for_status()
    for name in ("dscheduler-runner", "dscheduler-workers"):
        made = shared / f"{name}-{UID}"
        assert stat.S_IMODE(made.lstat().st_mode) == 0o700, name
    assert (shared / f"dscheduler-runner-{UID}" / _runner_name() / "cloudpickle").is_dir()
    [where] = private_cluster.run(lambda dask_worker: dask_worker.local_directory).values()
    assert where.startswith(f"{shared}/dscheduler-workers-{UID}/"), where


@pytest.mark.parametrize("kind", KINDS)
def test_a_planted_cloudpickle_never_runs_in_an_env_task(
        private_cluster: Any, shared: Path, tmp_path: Path, kind: str) -> None:
    target = shared / f"dscheduler-runner-{UID}"
    marker = shared / "marker"
    payload = f"open({str(marker)!r}, 'w').write('ran')\n"
    plant(kind, target, {f"{_runner_name()}/cloudpickle/__init__.py": payload,
                         f"{_runner_name()}/_dscheduler_runner.py": payload})
    node = work(Cfg(x=2, log=str(tmp_path / "log")), "c")
    results = ds.compute([node], store=ds.Store(tmp_path / "data"), cluster=private_cluster,
                         progress=False)
    record = results.record(node)
    assert record is not None and record["state"] == "failed", record
    assert record["attempts"][-1]["error"].startswith("UnsafePathError: "), record
    refused(record["attempts"][-1]["error"], target, kind)
    assert not marker.exists()


@pytest.mark.fast
def test_the_local_clusters_workers_refuse_a_planted_scratch(shared: Path) -> None:
    target = shared / f"dscheduler-workers-{UID}"
    plant("owner", target, {"dask-scratch-space/worker-x/x.py": "planted"})
    with pytest.raises(UnsafePathError) as err:
        clusters._local_spec(1, 1)
    refused(err.value, target, "owner")


# -- mounts: the root and each mount's dir ----------------------------------------


@pytest.fixture
def squashfs_env(store: ds.Store, make_env: Callable[..., ds.Env]) -> ds.BuiltEnv:
    return build_env(store, make_env("dstest-app", image="squashfs"))


@pytest.mark.squashfs
@pytest.mark.parametrize("kind", KINDS)
def test_a_planted_mount_never_gives_its_python(
        squashfs_env: ds.BuiltEnv, shared: Path, kind: str) -> None:
    target = shared / f"dscheduler-mounts-{UID}"
    marker = shared / "marker"
    key = f"unsquashfs-{identity.short_id(squashfs_env.lock_digest)}"
    plant(kind, target, {f"{key}/mnt/bin/python": f"#!/bin/sh\necho ran > {marker}\n",
                         f"{key}/mnt/pyvenv.cfg": "home = /usr/bin\n"})
    with dask.config.set({"dscheduler.mount.root": None}), \
            pytest.raises(UnsafePathError) as err, \
            mount(squashfs_env, backend="unsquashfs") as prefix:
        subprocess.run([prefix / "bin" / "python", "-c", "pass"], check=False)
    refused(err.value, target, kind)
    assert not marker.exists()


@pytest.mark.squashfs
def test_mounts_work_in_a_private_root_and_refuse_a_writable_mount_dir(
        squashfs_env: ds.BuiltEnv, shared: Path) -> None:
    with dask.config.set({"dscheduler.mount.root": None}):
        with mount(squashfs_env, backend="unsquashfs") as prefix:
            out = subprocess.run([prefix / "bin" / "python", "-c", "import dstest_app"],
                                 check=False)
            assert out.returncode == 0
        root = shared / f"dscheduler-mounts-{UID}"
        assert stat.S_IMODE(root.lstat().st_mode) == 0o700
        # Each mount's dir is checked too: one left writable by all is refused.
        shared_mount = SharedMount(BACKENDS["unsquashfs"], "unsquashfs-0123456789abcdef")
        shared_mount.dir.mkdir()
        shared_mount.dir.chmod(0o777)
        with pytest.raises(UnsafePathError) as err:
            shared_mount.enter(squashfs_env.image or Path("/nonexistent"))
        refused(err.value, shared_mount.dir, "mode")
        assert not shared_mount.target.exists()


# -- env builds: uv cache, scratch, bytecode cache -----------------------------------


@pytest.mark.parametrize(("key", "name"), [("env.uv_cache", "dscheduler-uv-cache"),
                                           ("env.scratch", "dscheduler-build"),
                                           ("env.pyc_cache", "dscheduler-pyc-cache")])
def test_builds_refuse_planted_caches_and_scratch(
        store: ds.Store, make_env: Callable[..., ds.Env], shared: Path, key: str,
        name: str) -> None:
    target = shared / f"{name}-{UID}"
    plant("owner", target, {"planted/x.py": "planted"})
    env = make_env("dstest-app", image="squashfs")
    with dask.config.set({f"dscheduler.{key}": None}), pytest.raises(UnsafePathError) as err:
        build_env(store, env)
    refused(err.value, target, "owner")
    assert not store.env(env.env_id).record.exists()  # nothing published


# -- SLURM workers: their scratch, checked on the compute node ----------------------


@pytest.mark.slurm
@pytest.mark.parametrize("kind", ["owner", None])
def test_slurm_jobs_check_the_workers_scratch_on_the_node(
        slurm_available: str, shared: Path, kind: str | None) -> None:
    target = shared / f"dscheduler-workers-{UID}"
    if kind:
        plant(kind, target, {"dask-scratch-space/planted.py": "planted"})
    options = resolve(partition=slurm_available, walltime="00:05:00", death_timeout=3,
                      interface="lo")
    logs = shared / "logs"
    logs.mkdir()
    script = shared / "job.sh"
    script.write_text(job_script(options, "cpu", log_dir=str(logs),
                                 scheduler="tcp://127.0.0.1:9"))
    done = subprocess.run(["sbatch", "--wait", str(script)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TMPDIR": str(shared)})
    [log] = list(logs.iterdir())
    text = log.read_text()
    if kind:
        assert done.returncode != 0, text
        assert "dscheduler: no worker scratch on this node: " in text, text
        refused(text, target, kind)
        assert "distributed.worker" not in text and "distributed.nanny" not in text, text
        assert not (target / "dask-scratch-space" / "global.lock").exists()
    else:
        assert "refusing" not in text, text
        assert stat.S_IMODE(target.lstat().st_mode) == 0o700
        assert (target / "dask-scratch-space").is_dir(), text  # the worker used it


def test_job_scripts_pass_a_configured_worker_scratch() -> None:
    script = job_script(resolve(local_directory="/local/me"), "cpu")
    [line] = [x for x in script.splitlines() if x.startswith("DSCHEDULER_WORKER_DIR=$(")]
    assert line.endswith(" /local/me) || exit 1"), line
    assert '--local-directory "$DSCHEDULER_WORKER_DIR"' in script.splitlines()[-1]
    assert sys.executable in line
