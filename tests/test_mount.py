"""``ds.mount``: one conformance suite run against every mount backend.

A backend that is not available on this machine is reported as skipped with
its reason.  Backends that need squashfs tools are marked ``squashfs`` (under
CI=true such a skip is a failure); apptainer and singularity are not: they
are optional extras that the CI machine does not have.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dask.config
import psutil
import pytest

import dscheduler as ds
from dscheduler.envs.backends import BACKENDS, Backend
from dscheduler.envs.build import build_env
from dscheduler.envs.mount import SharedMount, mount_root
from dscheduler.envs.published import BuiltEnv
from dscheduler.errors import MountError

SQUASHFS_BACKENDS = ("squashfuse", "loop", "unsquashfs")
OPTIONAL_BACKENDS = ("apptainer", "singularity")

PARAMS = [
    pytest.param(name, marks=[pytest.mark.squashfs] if name in SQUASHFS_BACKENDS else [],
                 id=name)
    for name in BACKENDS
]


@pytest.fixture(scope="module")
def envs(
    tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path, node_dirs: dict[str, Path]
) -> dict[str, BuiltEnv]:
    """One env per kind, built once for the module: "squashfs" needs mksquashfs."""
    built = {}
    for kind in ("squashfs", "dir"):
        # A store per kind: `image` is not part of env_id, so one store holds an
        # env in one form only (the first build decides).
        store = ds.Store(tmp_path_factory.mktemp(f"mount-store-{kind}"))
        env = ds.Env(requirements=["dstest-app"], find_links=[wheelhouse], offline=True,
                     image=kind)
        try:
            built[kind] = build_env(store, env)
        except ds.EnvBuildError as err:
            if "mksquashfs not found" not in str(err):
                raise
    return built


@pytest.fixture(params=PARAMS)
def backend(request: pytest.FixtureRequest) -> Backend:
    chosen = BACKENDS[request.param]
    reason = chosen.unavailable()
    if reason:
        pytest.skip(f"mount backend {chosen.name} unavailable: {reason}")
    return chosen


@pytest.fixture
def env_for(backend: Backend, envs: dict[str, BuiltEnv]) -> BuiltEnv:
    kind = backend.kinds[0]
    if kind not in envs:
        pytest.skip("no squashfs env: mksquashfs not installed")
    return envs[kind]


def run_python(prefix: Path, code: str) -> str:
    out = subprocess.run([prefix / "bin" / "python", "-c", code], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def attached(prefix: Path) -> bool:
    return (prefix / "pyvenv.cfg").exists()


HOLDER = textwrap.dedent(
    """
    import sys
    import dscheduler as ds
    from dscheduler.envs.published import published_env
    built = published_env(ds.Store(sys.argv[1]), sys.argv[2])
    with ds.mount(built, backend=sys.argv[3]) as prefix:
        print(prefix, flush=True)
        sys.stdin.readline()
    print("released", flush=True)
    """
)


@pytest.fixture
def holder_process(env_for: BuiltEnv, backend: Backend) -> Iterator[Callable[[], tuple[
        subprocess.Popen[str], Path]]]:
    """Start a process that mounts the env and holds it until its stdin gets a line."""
    procs: list[subprocess.Popen[str]] = []

    def start() -> tuple[subprocess.Popen[str], Path]:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(env_for.paths.dir.parent.parent),
             env_for.env_id, backend.name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line, proc.communicate()
        return proc, Path(line)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


class TestMountBackend:
    """What every backend must do; run once per backend available here."""

    def test_python_runs_from_the_prefix(self, backend: Backend, env_for: BuiltEnv) -> None:
        with ds.mount(env_for, backend=backend.name) as prefix:
            out = run_python(prefix, "import sys, dstest_app; print(dstest_app.hello()); "
                                     "print(sys.prefix); print(dstest_app.__file__)")
            hello, sys_prefix, module_file = out.splitlines()
            assert hello == "app+base"
            assert Path(sys_prefix) == prefix
            assert Path(module_file).is_relative_to(prefix)

    def test_imports_use_the_compiled_files(self, backend: Backend, env_for: BuiltEnv) -> None:
        with ds.mount(env_for, backend=backend.name) as prefix:
            cached = run_python(prefix, "import dstest_app; print(dstest_app.__spec__.cached)")
            assert Path(cached).is_file()  # precompiled: nothing written at import

    def test_shared_and_counted_within_a_process(
        self, backend: Backend, env_for: BuiltEnv
    ) -> None:
        with ds.mount(env_for, backend=backend.name) as outer:
            with ds.mount(env_for, backend=backend.name) as inner:
                assert inner == outer
            assert attached(outer)  # the outer holder still uses it
            run_python(outer, "import dstest_base")
        assert attached(outer) is not backend.mounts  # the last one out released it

    def test_shared_and_counted_across_processes(
        self, backend: Backend, env_for: BuiltEnv, holder_process: Callable[..., tuple[
            subprocess.Popen[str], Path]],
    ) -> None:
        proc, theirs = holder_process()
        with ds.mount(env_for, backend=backend.name) as mine:
            assert mine == theirs
        assert attached(theirs)  # the other process still holds it
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout is not None and proc.stdout.readline().strip() == "released"
        proc.wait(timeout=30)
        assert attached(theirs) is not backend.mounts

    def test_a_killed_holder_does_not_count(
        self, backend: Backend, env_for: BuiltEnv, holder_process: Callable[..., tuple[
            subprocess.Popen[str], Path]],
    ) -> None:
        proc, theirs = holder_process()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with ds.mount(env_for, backend=backend.name) as mine:  # replaces what it left
            assert mine == theirs
            assert run_python(mine, "import dstest_app; print(dstest_app.hello())") == "app+base"
        assert attached(mine) is not backend.mounts
        if backend.mounts:
            assert str(mine) not in Path("/proc/mounts").read_text()

    def test_records_last_use(self, backend: Backend, env_for: BuiltEnv) -> None:
        marker = env_for.paths.last_used
        before = time.time() - 1
        with ds.mount(env_for, backend=backend.name):
            pass
        assert marker.stat().st_mtime >= before


# -- beyond the conformance suite ---------------------------------------------------------


def squashfuse_daemon(target: Path) -> psutil.Process:
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "squashfuse" and str(target) in (proc.info["cmdline"] or []):
            return proc
    raise LookupError(f"no squashfuse process serves {target}")


@pytest.mark.squashfs
def test_dead_fuse_mount_is_detected_and_replaced(envs: dict[str, BuiltEnv]) -> None:
    reason = BACKENDS["squashfuse"].unavailable()
    if reason or "squashfs" not in envs:
        pytest.skip(f"squashfuse unavailable: {reason or 'no squashfs env'}")
    built = envs["squashfs"]
    with ds.mount(built, backend="squashfuse") as first:
        daemon = squashfuse_daemon(first)
        daemon.kill()  # the FUSE server dies under a live holder
        daemon.wait(timeout=60)
        with pytest.raises(OSError) as info:
            os.listdir(first)
        assert "not connected" in str(info.value)
        with ds.mount(built, backend="squashfuse") as second:
            assert second == first
            assert run_python(second, "import dstest_app; print(dstest_app.hello())") == (
                "app+base"
            )
    assert not attached(first)


@pytest.mark.squashfs
def test_automatic_choice_and_setting(envs: dict[str, BuiltEnv]) -> None:
    if "squashfs" not in envs:
        pytest.skip("no squashfs env: mksquashfs not installed")
    built = envs["squashfs"]
    first = next(b for b in BACKENDS.values() if "squashfs" in b.kinds and not b.unavailable())
    with ds.mount(built) as prefix:
        assert prefix.parent.name.startswith(f"{first.name}-")
        assert prefix.is_relative_to(mount_root())
    with dask.config.set({"dscheduler.mount.backend": "unsquashfs"}), ds.mount(built) as prefix:
        assert prefix.parent.name.startswith("unsquashfs-")


def test_dir_env_ignores_a_configured_image_backend(envs: dict[str, BuiltEnv]) -> None:
    built = envs["dir"]
    with ds.mount(built, backend="squashfuse") as prefix:
        assert prefix == built.venv


def test_mount_builds_an_env_that_is_not_published(
    tmp_path: Path, wheelhouse: Path, node_dirs: dict[str, Path]
) -> None:
    store = ds.Store(tmp_path / "store")
    env = ds.Env(requirements=["dstest-base==1.0"], find_links=[wheelhouse], offline=True,
                 image="dir")
    with ds.mount(env, store=store) as prefix:
        assert run_python(prefix, "import dstest_base; print(dstest_base.__version__)") == "1.0"
    assert store.env(env.env_id).record.is_file()


def test_bad_backend_names(envs: dict[str, BuiltEnv]) -> None:
    with pytest.raises(MountError, match="unknown; choose one of"), ds.mount(
        envs["dir"], backend="nfs"
    ):
        pass
    if "squashfs" in envs:
        with pytest.raises(MountError, match="serves only envs built with image='dir'"), (
            ds.mount(envs["squashfs"], backend="dir")
        ):
            pass


def test_unavailable_backends_say_why(
    envs: dict[str, BuiltEnv], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no tool at all
    assert BACKENDS["squashfuse"].unavailable() == "squashfuse not found on PATH"
    assert BACKENDS["unsquashfs"].unavailable() == "unsquashfs not found on PATH"
    assert BACKENDS["apptainer"].unavailable() == "apptainer not found on PATH"
    assert BACKENDS["loop"].unavailable() == (
        "mount not found on PATH" if os.geteuid() == 0 else "loop needs root")
    assert BACKENDS["dir"].unavailable() is None
    if "squashfs" in envs:
        with pytest.raises(MountError) as info, ds.mount(envs["squashfs"]):
            pass
        message = str(info.value)
        assert "squashfuse: squashfuse not found on PATH" in message
        assert "Install squashfuse and fuse3 or squashfs-tools" in message


def test_holder_files_of_dead_processes_are_ignored(tmp_path: Path) -> None:
    shared = SharedMount(BACKENDS["unsquashfs"], "x", root=tmp_path)
    shared.holders.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (shared.holders / f"{dead.pid}-123-abc").touch()
    me = psutil.Process()
    mine = shared.holders / f"{os.getpid()}-{int(me.create_time() * 100)}-abc"
    mine.touch()
    reused = shared.holders / f"{os.getpid()}-{int(me.create_time() * 100) - 500}-abc"
    reused.touch()  # our pid, another start time: a recycled pid
    assert shared.live_holders() == [mine]
