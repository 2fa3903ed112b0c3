"""A store shared by a group (setting ``store_shared: group``), played by two real uids.

Two non-root uids (65534, 65533) in one test group run real graph drivers
(tests/graphfixtures.py as a script) on one store, under their own HOME and TMPDIR:
each node runs once across both, each env is built once, each reads the other's
results, and ``envs gc`` and ``verify --repair`` work on files the other owns.
Sharing is the store's, not the umask's, and nothing is world-writable under
umask 000 (docs/design.md §3).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

GID = 4242
A, B = 65534, 65533
TESTS = Path(__file__).resolve().parent
DRIVER = str(TESTS / "graphfixtures.py")
PYTHON = str(Path(sys.executable).parent / "python")
DSCHEDULER = [PYTHON, "-c", "from dscheduler.cli import app; app()"]


def _hidden() -> tuple[Path, Path] | None:
    """(a dir only root enters, its child on the interpreter's path), e.g. (/root, .pyenv)
    for pyenv's Python; None when every user reaches the interpreter."""
    real = Path(os.path.realpath(sys.executable))
    for parent in reversed(real.parents):
        if not os.stat(parent).st_mode & 0o001:
            return parent, real.parents[len(real.parents) - len(parent.parts) - 1]
    return None


def _reach_python() -> list[str]:
    """A prefix that shows the interpreter to other users in a private mount namespace
    (a tmpfs over the closed dir, the interpreter's tree bound into it): nothing on the
    machine changes."""
    hidden = _hidden()
    if hidden is None:
        return []
    closed, child = hidden
    keep = "/tmp/.ds-bind-$$"  # one per namespace: members start at once
    script = (f"mkdir -p {keep} && mount --bind {child} {keep} && mount -t tmpfs -o "
              f"mode=0711,size=1m tmpfs {closed} && mkdir {child} && mount --bind {keep} "
              f'{child} && umount -l {keep} && rmdir {keep} && exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


if shutil.which("setpriv") is None or os.getuid() != 0:
    pytest.skip("needs root and setpriv to play two users", allow_module_level=True)


@pytest.fixture
def shared(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A dir both uids reach: share/ (group GID, 0775) and a private home per uid."""
    base = Path(tempfile.mkdtemp(prefix="ds-shared-", dir="/tmp"))
    try:
        base.chmod(0o755)
        share = base / "share"
        share.mkdir()
        os.chown(share, 0, GID)
        share.chmod(0o775)
        for uid in (A, B):
            home = base / f"home-{uid}"
            (home / "tmp").mkdir(parents=True)
            for d in (home, home / "tmp"):
                os.chown(d, uid, GID)
                d.chmod(0o700)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def member(base: Path, uid: int, umask: int, argv: list[str],
           setting: str | None = "group") -> subprocess.Popen[str]:
    """``argv`` as ``uid`` in group GID under ``umask``, with its own HOME and TMPDIR."""
    home = base / f"home-{uid}"
    env = {"PATH": f"{Path(PYTHON).parent}:/usr/bin:/bin", "HOME": str(home),
           "TMPDIR": str(home / "tmp"),
           "DASK_DSCHEDULER__LOCAL__N_WORKERS": "2"}
    if setting is not None:
        env["DASK_DSCHEDULER__STORE_SHARED"] = setting
    cmd = [*_reach_python(), "setpriv", f"--reuid={uid}", f"--regid={GID}", f"--groups={GID}",
           "--inh-caps=-all", "sh", "-c", f'umask {umask:03o} && exec "$@"', "sh", *argv]
    return subprocess.Popen(cmd, env=env, cwd=str(home), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], ok: bool = True) -> str:
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if ok:
        assert proc.returncode == 0, f"{proc.args}\n{out}\n{err[-4000:]}"
    return out


def run(base: Path, uid: int, umask: int, argv: list[str], **kw: object) -> str:
    return finish(member(base, uid, umask, argv, **kw))  # type: ignore[arg-type]


def drive(base: Path, uid: int, umask: int, store: Path, log: Path, n: int,
          sleep: float = 0.0) -> subprocess.Popen[str]:
    return member(base, uid, umask, [PYTHON, DRIVER, str(store), str(log), str(n), str(sleep)])


def shared_log(base: Path, name: str) -> Path:
    log = base / "share" / name
    log.touch()
    log.chmod(0o666)  # the tasks' side effects, outside the store
    return log


def ends(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("end")]


def loose_modes(root: Path, *, group: bool) -> list[str]:
    """Every entry under ``root`` whose mode breaks the store's rule."""
    bad = []
    for top, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            p = Path(top) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = stat.S_IMODE(st.st_mode)
            if mode & stat.S_IWOTH:
                bad.append(f"{p} {mode:o} world-writable")
            elif group and stat.S_ISDIR(st.st_mode) and mode & 0o2070 != 0o2070:
                bad.append(f"{p} {mode:o} not a group dir")
            elif group and stat.S_ISREG(st.st_mode) and mode & 0o060 != 0o060:
                bad.append(f"{p} {mode:o} not group-writable")
            elif group and st.st_gid != GID:
                bad.append(f"{p} gid {st.st_gid}")
    return bad


def test_two_members_share_one_store(shared: Path) -> None:
    store, log = shared / "share" / "store", shared_log(shared, "log")
    # A makes the store (the setting) and runs 2 nodes; their two dir envs are built.
    first = json.loads(finish(drive(shared, A, 0o002, store, log, 2, 1.0)))
    assert sorted(first["envs"].values()) == ["built", "built"]
    assert stat.S_IMODE(store.stat().st_mode) == 0o2775 and store.stat().st_gid == GID
    # Then both at once, B without the setting (the store's root decides), on 4 nodes:
    # 2 done, 2 new, and a new total; their node leases are one another's files.
    procs = [drive(shared, A, 0o002, store, log, 4, 1.0),
             member(shared, B, 0o002, [PYTHON, DRIVER, str(store), str(log), "4", "1.0"],
                    setting=None)]
    outs = [json.loads(finish(p)) for p in procs]
    assert sorted(ends(log)) == sorted(f"end {'ab'[i % 2]} {i} c0" for i in range(4))
    assert log.read_text().count("total") == 2
    assert all(state != "built" for out in outs for state in out["envs"].values())
    assert len([d for d in (store / "envs").iterdir()]) == 2  # no env built twice
    owners = {p.stat().st_uid for p in store.rglob("work.json")}  # records, values inside
    assert owners and owners <= {A, B}
    assert loose_modes(store, group=True) == []
    # B reads what A wrote (and vice versa: A's second run read B's records above).
    read = ("import dscheduler as ds, sys; s = ds.Store(sys.argv[1]); "
            "print(len(s.runs(by='node')), sorted(s.open(p)['x'] for p in "
            "s.root.rglob('work.json')))")
    assert run(shared, B, 0o002, [PYTHON, "-c", read, str(store)]).split(" ", 1)[1].strip() \
        == "[0, 1, 2, 3]"
    # verify --repair by B demotes a node whose files A owns; A redoes it.
    value = next(p for p in store.rglob("work.json") if p.stat().st_uid == A
                 and json.loads(json.loads(p.read_text())["output"]["inline"])["x"] == 0)
    value.write_text("not json")  # its record, which holds its value
    run(shared, B, 0o002, [*DSCHEDULER, "verify", "--repair", "--store", str(store)])
    assert not (value.parent / ".work.done").exists()
    finish(drive(shared, A, 0o002, store, log, 2, 1.0))
    assert ends(log).count("end a 0 c0") == 2
    # envs gc by B removes an env A built that no run uses, venv tree and all.
    build = ("import dscheduler as ds, sys; "
             "print(ds.Env(image='dir').build(ds.Store(sys.argv[1])).env_id)")
    env_id = run(shared, A, 0o002, [PYTHON, "-c", build, str(store)]).strip()
    assert (store / "envs" / env_id / "venv").is_dir()
    run(shared, B, 0o002, [*DSCHEDULER, "envs", "gc", "--yes", "--store", str(store)])
    assert sorted(p.name for p in (store / "envs").iterdir() if env_id in p.name) == []
    assert loose_modes(store, group=True) == []


def test_the_store_not_the_umask_decides(shared: Path) -> None:
    """Under umask 022 a member still writes group modes into a group store, and a
    store made without the setting stays private under umask 002."""
    store, log = shared / "share" / "store", shared_log(shared, "log")
    finish(drive(shared, A, 0o022, store, log, 2))
    assert loose_modes(store, group=True) == []
    # B under umask 022, without the setting, writes into it (new nodes and a total).
    run(shared, B, 0o022, [PYTHON, DRIVER, str(store), str(log), "3", "0"], setting=None)
    assert loose_modes(store, group=True) == []
    private = shared / "share" / "private"
    finish(member(shared, A, 0o002, [PYTHON, DRIVER, str(private), str(log), "1", "0"],
                  setting=None))
    group_writable = [p for p in private.rglob("*") if not p.is_symlink()
                      and p.lstat().st_mode & stat.S_IWGRP and "venv" not in p.parts]
    assert stat.S_IMODE(private.stat().st_mode) == 0o755 and group_writable == []


def test_umask_000_writes_nothing_world_writable(shared: Path) -> None:
    """Every kind of file (records, JSON and Zarr values, leases, index, envs) keeps
    the store's modes under umask 000, private and group."""
    values = ("import sys, numpy as np, dscheduler as ds\n"
              "@ds.task(version='1')\n"
              "def arr(n: int):\n    return np.arange(n)\n"
              "s = ds.Store(sys.argv[1])\n"
              "ds.compute([arr(3)], store=s, progress=False).raise_for_status()\n"
              "s.index.rebuild()\n")
    for name, setting in (("private", None), ("group", "group")):
        store, log = shared / "share" / name, shared_log(shared, f"log-{name}")
        finish(member(shared, A, 0o000, [PYTHON, DRIVER, str(store), str(log), "2", "0"],
                      setting=setting))
        run(shared, A, 0o000, [PYTHON, "-c", values, str(store)], setting=setting)
        assert any(store.rglob("*.zarr")) and any((store / "index").iterdir())
        assert loose_modes(store, group=setting is not None) == [], name
