"""Environment builds: once per env_id, content-addressed images, clean failures.

Real uv, real mksquashfs, envs from the local wheelhouse (tests/wheelhouse.py),
offline.  Tests that need squashfs tools are marked ``squashfs``.
"""

from __future__ import annotations

import base64
import csv
import functools
import hashlib
import http.server
import importlib.metadata
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import sha256
from wheelhouse import MakeEnv, write_wheel

import dscheduler as ds
from dscheduler.envs.build import build_env
from dscheduler.envs.published import published_env
from dscheduler.envs.reproducible import normalise_uv_cache_records, squash_command
from dscheduler.envs.smoke import top_level_modules
from dscheduler.envs.uv import explain_uv_failure
from dscheduler.errors import ConfigError, EnvBuildError

needs_squashfs = pytest.mark.squashfs


def leftovers(store: ds.Store, scratch: Path, env_id: str) -> list[Path]:
    """Temporary names a build of env_id may leave: none may survive a build."""
    found = list(store.envs_dir.glob(".*")) + list(store.images_dir.glob(".*"))
    found += list(scratch.glob(f"dscheduler-build-{env_id}-*"))
    return found


def phase_count(store: ds.Store, env_id: str, phase: str) -> int:
    text = store.env(env_id).log.read_text()
    return sum(1 for line in text.splitlines() if line.startswith(f"== {phase}"))


# -- a published env ---------------------------------------------------------------------


@needs_squashfs
def test_build_publishes_image_and_record(
    store: ds.Store, make_env: MakeEnv, squashfs_tools: None
) -> None:
    env = make_env("dstest-app")
    built = store.build_env(env)
    assert built.built and built.kind == "squashfs"
    assert built.env_id == env.env_id and built.digest == env.digest
    assert built.paths == store.env(env.env_id) and built.venv is None
    lock_id = built.record["lock_digest"][:16]
    assert built.image == store.image(lock_id) and built.image.is_file()
    assert store.env(env.env_id).image.resolve() == built.image.resolve()

    record = json.loads(built.paths.record.read_text())
    assert record == built.record
    assert record["lock"].split() == ["dstest-app==1.0", "dstest-base==1.1"]
    assert record["spec"] == json.loads(json.dumps(env.spec()))
    assert record["image"] == f"images/{lock_id}.sqsh"
    assert record["python"]["version"].startswith(env.python)
    assert set(record["tools"]) >= {"uv", "mksquashfs", "python"}
    assert record["tools"]["uv"][0].isdigit() and record["tools"]["mksquashfs"][0].isdigit()
    for phase in ("venv", "install", "freeze", "compile", "smoke", "squash", "total"):
        assert record["timings"][phase] >= 0
    assert record["sizes"]["files"] > 10 and record["sizes"]["image_bytes"] > 0
    assert record["smoke_imports"] == ["dstest_app"]
    assert record["host"]
    log = built.paths.log.read_text()
    assert "$ " in log and "mksquashfs" in log and "dstest-app==1.0" in log

    again = store.build_env(env)
    assert not again.built and again.record == built.record and again.image == built.image
    assert published_env(store, env.env_id) == again


@needs_squashfs
def test_scratch_is_removed_after_publishing_and_after_a_killed_remover(
    tmp_path: Path, make_env: MakeEnv, squashfs_tools: None
) -> None:
    env = make_env("dstest-app")
    scratch = tmp_path / "scratch"
    dead = subprocess.Popen(["true"])
    dead.wait()
    # What a builder killed while it removed its scratch dir after publishing leaves.
    stale = scratch / f".dscheduler-build-{env.env_id}-{dead.pid}-x1z2" / "env"
    stale.mkdir(parents=True)
    build_env(ds.Store(tmp_path / "s"), env, scratch=scratch)
    for thread in threading.enumerate():
        if thread.name == "dscheduler-scratch-removal":  # removes the build's own, once done
            thread.join()
    assert list(scratch.iterdir()) == []


def test_dir_env_keeps_the_venv(store: ds.Store, make_env: MakeEnv) -> None:
    env = make_env("dstest-app", image="dir")
    built = build_env(store, env)
    assert built.kind == "dir" and built.image is None
    assert built.venv == store.env(env.env_id).venv and built.record["image"] is None
    python = built.venv / "bin" / "python"
    assert python.is_symlink()  # to the machine's interpreter: see dscheduler.envs.build
    code = "import dstest_app; print(dstest_app.hello()); print(dstest_app.__spec__.cached)"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    hello, cached = out.stdout.split()
    assert hello == "app+base"
    # Compiled with the final path: tracebacks name the files that exist.
    src = Path(cached).read_bytes()
    assert str(built.venv / "lib").encode() in src
    assert not list(store.envs_dir.glob(".*"))


def test_published_env_is_none_until_built(store: ds.Store, make_env: MakeEnv) -> None:
    env = make_env("dstest-base", image="dir")
    assert published_env(store, env.env_id) is None
    build_env(store, env)
    found = published_env(store, env.env_id)
    assert found is not None and not found.built
    shutil.rmtree(found.venv)  # type: ignore[arg-type]
    assert published_env(store, env.env_id) is None  # incomplete: not usable


def test_run_config_env_uses_the_run_config_id(store: ds.Store, wheelhouse: Path) -> None:
    class Cfg(ds.RunConfig):
        ENV_FIELDS = ("pkg",)
        pkg: str
        x: int = 0

        def env(self) -> ds.Env:
            return ds.Env(requirements=[self.pkg], find_links=[wheelhouse], offline=True,
                          image="dir")

    cfg = Cfg(pkg="dstest-base")
    built = build_env(store, cfg.env())
    assert built.env_id == cfg.env_id and built.digest == cfg.env_digest
    assert store.env(cfg.env_id).record.is_file()


# -- exactly once ------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    import dscheduler as ds
    root, go, reqs, kind = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    env = ds.Env(requirements=reqs.split(","), find_links=[sys.argv[5]], offline=True,
                 image=kind)
    (go.parent / f"ready-{os.getpid()}").touch()
    while not go.exists():
        time.sleep(0.005)
    built = ds.Store(root).build_env(env, ttl=float(sys.argv[6]))
    print(json.dumps({"built": built.built, "env_id": built.env_id, "digest": built.digest,
                      "image": str(built.image), "lock_digest": built.lock_digest}))
    """
)


def start_builders(
    n: int, store: ds.Store, wheelhouse: Path, go: Path, reqs: str, kind: str = "squashfs",
    ttl: float = 30, extra_env: dict[str, str] | None = None,
) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(store.root), str(go), reqs, kind, str(wheelhouse),
             str(ttl)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(extra_env or {})}, start_new_session=True,
        )
        for _ in range(n)
    ]


@needs_squashfs
def test_four_processes_build_once(
    store: ds.Store, wheelhouse: Path, tmp_path: Path, squashfs_tools: None
) -> None:
    go = tmp_path / "go"
    procs = start_builders(4, store, wheelhouse, go, "dstest-app")
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < 4:  # all four started, then all at once
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    assert sum(r["built"] for r in results) == 1
    assert len({(r["env_id"], r["digest"], r["image"], r["lock_digest"]) for r in results}) == 1
    env_id = results[0]["env_id"]
    assert phase_count(store, env_id, "venv") == 1
    assert phase_count(store, env_id, "squash") == 1
    assert len(list(store.images_dir.glob("*.sqsh"))) == 1


# -- content-addressed, reproducible images --------------------------------------------


@needs_squashfs
def test_identical_locks_share_one_image(
    store: ds.Store, make_env: MakeEnv, squashfs_tools: None
) -> None:
    first = make_env("dstest-app")
    second = make_env("dstest-app", "dstest-base>=1.1")  # another env_id, the same packages
    assert first.env_id != second.env_id
    a, b = build_env(store, first), build_env(store, second)
    assert a.built and b.built
    assert a.lock_digest == b.lock_digest and a.image == b.image
    assert not a.record["image_reused"] and b.record["image_reused"]
    assert "$ mksquashfs" in a.paths.log.read_text()
    assert "$ mksquashfs" not in b.paths.log.read_text()
    assert "mksquashfs skipped" in b.paths.log.read_text()
    assert len(list(store.images_dir.glob("*.sqsh"))) == 1


@needs_squashfs
def test_same_lock_gives_a_byte_identical_image(
    tmp_path: Path, make_env: MakeEnv, squashfs_tools: None
) -> None:
    env = make_env("dstest-app")
    # Two stores, two scratch dirs, two uv caches (the second one cold).
    one = build_env(ds.Store(tmp_path / "s1"), env, scratch=tmp_path / "scratch1")
    two = build_env(ds.Store(tmp_path / "s2"), env, scratch=tmp_path / "scratch2",
                    uv_cache=tmp_path / "cold-cache")
    assert one.image is not None and two.image is not None
    assert one.image.name == two.image.name
    assert sha256(one.image) == sha256(two.image)


# -- failures ----------------------------------------------------------------------------


def assert_nothing_published(store: ds.Store, scratch: Path, env_id: str) -> None:
    assert published_env(store, env_id) is None
    assert not store.env(env_id).record.exists()
    assert not list(store.images_dir.glob("*"))
    assert leftovers(store, scratch, env_id) == []
    assert not (store.locks_dir / f"env-{env_id}.lease").exists()  # released


@pytest.mark.parametrize(
    ("requirements", "named"),
    [(["dstest-nothere"], "dstest-nothere"), (["dstest-app>=2"], "dstest-app>=2")],
)
def test_bad_requirement_is_named(
    store: ds.Store, make_env: MakeEnv, node_dirs: dict[str, Path],
    requirements: list[str], named: str,
) -> None:
    env = make_env(*requirements)
    with pytest.raises(EnvBuildError) as info:
        build_env(store, env)
    message = str(info.value)
    assert f"requirement {named!r}" in message
    assert "last lines of output" in message and "No solution found" in message
    assert info.value.log_path == str(store.env(env.env_id).failed_log)
    assert Path(info.value.log_path).read_text().count("== install") == 1
    assert_nothing_published(store, node_dirs["scratch"], env.env_id)


def test_next_attempt_starts_clean(
    store: ds.Store, wheelhouse: Path, tmp_path: Path, node_dirs: dict[str, Path]
) -> None:
    # A find-links directory that lacks dstest-app at first, then gets it.
    links = tmp_path / "links"
    links.mkdir()
    shutil.copy(next(wheelhouse.glob("dstest_base-1.1-*.whl")), links)
    env = ds.Env(requirements=["dstest-app"], find_links=[links], offline=True, image="dir")
    with pytest.raises(EnvBuildError, match="dstest-app"):
        build_env(store, env)
    assert_nothing_published(store, node_dirs["scratch"], env.env_id)
    shutil.copy(next(wheelhouse.glob("dstest_app-1.0-*.whl")), links)
    built = build_env(store, env)
    assert built.built and built.record["lock"].split() == ["dstest-app==1.0", "dstest-base==1.1"]
    assert not built.paths.failed_log.exists()
    assert built.paths.log.read_text().count("== install") == 1


def test_failing_smoke_import_is_named(
    store: ds.Store, make_env: MakeEnv, node_dirs: dict[str, Path]
) -> None:
    env = make_env("dstest-broken", image="dir")
    with pytest.raises(EnvBuildError) as info:
        build_env(store, env)
    assert "`import dstest_broken` failed" in str(info.value)
    assert "broken on purpose" in info.value.tail
    assert_nothing_published(store, node_dirs["scratch"], env.env_id)

    other = make_env("dstest-base", image="dir")
    with pytest.raises(EnvBuildError, match="`import dstest_nope` failed"):
        build_env(store, other, smoke_imports=["dstest_base", "dstest_nope"])
    assert build_env(store, other, smoke_imports=[]).record["smoke_imports"] == []


@needs_squashfs
def test_mksquashfs_memory_is_bounded(tmp_path: Path, squashfs_tools: None) -> None:
    """Unbounded, mksquashfs holds about as much memory as it reads (too much beside a
    SLURM job's memory limit for a large env); the build bounds it to 64 MB."""
    tree = tmp_path / "tree"
    tree.mkdir()
    rng, alphabet = random.Random(0), bytes.maketrans(bytes(range(256)), b"ABCDEFGHIJKLMNOP" * 16)
    for i in range(64):  # 128 MiB that zstd compresses slowly enough for mksquashfs to queue
        (tree / f"part{i}.bin").write_bytes(rng.randbytes(2 << 20).translate(alphabet))
    # A child's peak counts its parent's memory at the fork: measured from a small parent.
    measure = ("import resource, subprocess, sys; "
               "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    cmd = [str(c) for c in squash_command(tree, tmp_path / "tree.sqsh", 3)]
    out = subprocess.run([sys.executable, "-I", "-S", "-c", measure, *cmd], check=True,
                         capture_output=True, text=True)
    peak = int(out.stdout)  # KiB
    assert peak < 64 * 1024, f"mksquashfs peaked at {peak} KiB"


@pytest.fixture
def package_index(tmp_path: Path) -> Iterator[tuple[str, Callable[[str], None]]]:
    """A real package index over HTTP (PEP 503 pages, http.server): its URL, and a function
    that publishes a version of dstest-index on it."""
    root = tmp_path / "index"
    page = root / "simple" / "dstest-index" / "index.html"
    page.parent.mkdir(parents=True)
    versions: list[str] = []

    def publish(version: str) -> None:
        write_wheel(page.parent, "dstest-index", version, [], f"__version__ = {version!r}\n")
        versions.append(version)
        links = "".join(f'<a href="dstest_index-{v}-py3-none-any.whl">'
                        f"dstest_index-{v}-py3-none-any.whl</a>\n" for v in versions)
        atomic_page = page.with_suffix(".partial")
        atomic_page.write_text(f"<html><body>\n{links}</body></html>\n")
        atomic_page.replace(page)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def end_headers(self) -> None:
            self.send_header("Cache-Control", "no-cache")  # as an index that never says
            super().end_headers()  # (else uv takes a just-fetched page as fresh)

        def do_GET(self) -> None:
            time.sleep(0.5)  # a distant index: the install from the cache is done first
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Handler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.handle_error = lambda request, address: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple", publish
    finally:
        server.shutdown()
        server.server_close()


def test_install_from_the_uv_cache_is_checked_against_the_index(
    store: ds.Store, node_dirs: dict[str, Path],
    package_index: tuple[str, Callable[[str], None]],
) -> None:
    """Envs install from the node's uv cache while `uv pip compile` asks the index; an
    install the index disagrees with (a cache behind a newer release) is done again."""
    url, publish = package_index
    publish("1.0")
    first = build_env(store, ds.Env(requirements=["dstest-index"], index_url=url, image="dir"))
    assert "dstest-index==1.0" in first.record["lock"]
    log = first.paths.log.read_text()
    assert "uv pip compile" in log and "--offline" in log  # (the first from the index)

    publish("1.1")  # the cache's copy of the index page still lists 1.0 alone
    newer = build_env(store, ds.Env(requirements=["dstest-index>=0.1"], index_url=url,
                                    image="dir"))
    assert "dstest-index==1.1" in newer.record["lock"]
    log = newer.paths.log.read_text()
    assert "the index resolves otherwise than the node's uv cache did (dstest-index==1.0, " \
        "dstest-index==1.1): building again" in log

    same = build_env(store, ds.Env(requirements=["dstest-index==1.1"], index_url=url,
                                   image="dir"))
    log = same.paths.log.read_text()
    assert "dstest-index==1.1" in same.record["lock"] and "building again" not in log
    assert "the node's uv cache lacks" not in log  # installed from the cache, then checked


def test_missing_python_lists_interpreters(store: ds.Store, make_env: MakeEnv) -> None:
    env = make_env("dstest-base", python="3.99", image="dir")
    with pytest.raises(EnvBuildError) as info:
        build_env(store, env)
    message = str(info.value)
    running = ".".join(map(str, sys.version_info[:3]))
    assert "no Python 3.99 interpreter" in message and f"{running} at " in message
    assert "never downloads" in message


@needs_squashfs
def test_killed_builder_is_taken_over_after_ttl(
    store: ds.Store, wheelhouse: Path, tmp_path: Path, node_dirs: dict[str, Path],
    squashfs_tools: None,
) -> None:
    go = tmp_path / "go"
    go.touch()
    env = ds.Env(requirements=["dstest-slow"], find_links=[wheelhouse], offline=True)
    [proc] = start_builders(1, store, wheelhouse, go, "dstest-slow", ttl=1.5,
                            extra_env={"DSTEST_SLOW_SECONDS": "120"})
    try:
        deadline = time.monotonic() + 60
        # Its command is logged when it starts: in its own phase, or beside the
        # compile when the node's bytecode cache held most of the env.
        while not any("dscheduler_smoke.py" in p.read_text()
                      for p in store.envs_dir.glob(f".{env.env_id}.*/build.log")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the builder never reached its smoke test"
            time.sleep(0.05)
        assert published_env(store, env.env_id) is None
        assert not store.env(env.env_id).dir.exists()  # nothing half-built is visible
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the builder and its smoke-test child
        proc.communicate()
    assert list(store.envs_dir.glob(f".{env.env_id}.*"))  # its temporary dir is left

    start = time.monotonic()
    built = build_env(store, env, ttl=1.5)
    assert built.built and time.monotonic() - start >= 1.0  # waited for the stale lease
    assert phase_count(store, env.env_id, "venv") == 1  # a fresh log, not the dead one's
    assert leftovers(store, node_dirs["scratch"], env.env_id) == []


# -- disk full -----------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``small_tmpfs("64k")``: a fresh tmpfs of that size (root only)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def make(size: str) -> Path:
        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", where],
                       check=True)
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", where], check=False)


def test_disk_full_in_scratch(
    store: ds.Store, make_env: MakeEnv, small_tmpfs: Callable[[str], Path]
) -> None:
    scratch = small_tmpfs("48k")
    env = make_env("dstest-app")
    with pytest.raises(EnvBuildError, match="no space left on device") as info:
        build_env(store, env, scratch=scratch)
    assert info.value.log_path is not None  # the store had room for the log
    assert list(scratch.iterdir()) == []
    assert_nothing_published(store, scratch, env.env_id)


def test_disk_full_in_store(
    make_env: MakeEnv, small_tmpfs: Callable[[str], Path], node_dirs: dict[str, Path]
) -> None:
    root = small_tmpfs("64k")
    store = ds.Store(root / "store").ensure()
    env = make_env("dstest-app", image="dir")  # the venv is built in the store
    with pytest.raises(EnvBuildError, match="no space left on device"):
        build_env(store, env)
    assert_nothing_published(store, node_dirs["scratch"], env.env_id)
    assert list(store.envs_dir.iterdir()) == []


# -- pieces ------------------------------------------------------------------------------


def test_explain_uv_failure_names_the_requirement() -> None:
    missing = (
        "error: No solution found when resolving dependencies\n"
        "  cause: Because foo-bar was not found in the cache and you require foo-bar, we can "
        "conclude that your requirements are unsatisfiable.\n"
    )
    assert explain_uv_failure(missing, ["foo-bar>=1", "numpy"]).startswith(
        "requirement 'foo-bar>=1' cannot be installed: Because foo-bar was not found"
    )
    conflict = (
        "  cause: Because all versions of app depend on base>=1.1 and you require app, we can "
        "conclude that you require base>=1.1.\n"
        "         And because you require base<1.1, we can conclude that your requirements "
        "are unsatisfiable.\n"
    )
    assert explain_uv_failure(conflict, ["app", "base<1.1", "other"]).startswith(
        "requirements 'app', 'base<1.1' cannot be installed together: Because all versions"
    )
    # names as uv spells them (case, "_" or "."), and at the end of a sentence
    assert explain_uv_failure("cause: Because base<1 conflicts with Foo_Bar.",
                              ["foo.bar", "base<1", "base-extra"]).startswith(
        "requirements 'base<1', 'foo.bar' cannot be installed together")
    assert "a dependency" in explain_uv_failure(
        "Because zlib-ng was not found", ["app"]
    )


def test_uv_cache_timestamp_is_zeroed_and_record_read_as_csv(tmp_path: Path) -> None:
    info = tmp_path / "pkg-1.0.dist-info"
    info.mkdir()
    stamp = {"timestamp": {"secs_since_epoch": 5, "nanos_since_epoch": 1}}
    (info / "uv_cache.json").write_text(json.dumps(stamp))
    rows = [["pkg/a,b.py", "sha256=x", "1"], ["pkg-1.0.dist-info/uv_cache.json", "sha256=y", "9"],
            ["pkg-1.0.dist-info/RECORD", "", ""]]
    with (info / "RECORD").open("w", newline="") as f:  # every field quoted: valid CSV
        csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows)
    assert normalise_uv_cache_records(tmp_path) == 1
    body = (info / "uv_cache.json").read_bytes()
    assert json.loads(body)["timestamp"] == {"secs_since_epoch": 0, "nanos_since_epoch": 0}
    files = {str(f): f for f in importlib.metadata.PathDistribution(info).files or []}
    assert set(files) == {"pkg/a,b.py", "pkg-1.0.dist-info/uv_cache.json",
                          "pkg-1.0.dist-info/RECORD"}
    entry = files["pkg-1.0.dist-info/uv_cache.json"]
    assert entry.size == len(body) and entry.hash is not None
    assert entry.hash.value == base64.urlsafe_b64encode(
        hashlib.sha256(body).digest()).rstrip(b"=").decode()
    assert files["pkg/a,b.py"].size == 1
    assert normalise_uv_cache_records(tmp_path) == 0  # zeroed already: left alone


def test_top_level_modules(tmp_path: Path) -> None:
    site = tmp_path
    tops_of = {"torch-2.0": "torch\nfunctorch\ntorchgen\n", "PyYAML-6.0": "_yaml\nyaml\n"}
    for dist, tops in tops_of.items():
        info = site / f"{dist}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Name: {dist.split('-')[0]}\n")
        (info / "top_level.txt").write_text(tops)
    record_only = site / "scikit_learn-1.5.dist-info"
    record_only.mkdir()
    (record_only / "METADATA").write_text("Name: scikit-learn\n")
    (site / "sklearn").mkdir()  # installed files, as RECORD lists them
    (site / "sklearn" / "__init__.py").write_text("")
    (site / "sklearn" / "x.py").write_text("")
    (record_only / "RECORD").write_text(
        "sklearn/__init__.py,,\nsklearn/x.py,,\nscikit_learn-1.5.dist-info/METADATA,,\n"
        "../../bin/tool,,\n"
    )
    assert top_level_modules(site, ["torch", "pyyaml", "scikit-learn", "absent"]) == [
        "torch", "yaml", "sklearn",
    ]


# -- Env.from_checkpoint -----------------------------------------------------------------

META = {"python": "3.11", "requirements": ["dstest-app==1.0"]}


def test_from_checkpoint_sidecar(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"weights")
    (tmp_path / "model.ckpt.dscheduler-env.json").write_text(json.dumps(META))
    env = ds.Env.from_checkpoint(ckpt, extra_requirements=["dstest-base"])
    assert env.python == "3.11"
    assert env.requirements == ("dstest-app==1.0", "dstest-base")
    assert env.env_id == ds.Env(python="3.11",
                                requirements=["dstest-base", "dstest-app==1.0"]).env_id


def test_from_checkpoint_directory_and_zip_member(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt_dir"
    directory.mkdir()
    (directory / "dscheduler-env.json").write_text(json.dumps(META))
    archive = tmp_path / "model.pt"  # torch.save files are zips
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("model/data.pkl", b"...")
        zf.writestr("model/dscheduler-env.json", json.dumps(META))
    assert ds.Env.from_checkpoint(directory).env_id == ds.Env.from_checkpoint(archive).env_id


def test_from_checkpoint_without_metadata_says_what_to_write(tmp_path: Path) -> None:
    ckpt = tmp_path / "bare.ckpt"
    ckpt.write_bytes(b"weights")
    with pytest.raises(ConfigError, match=r"bare\.ckpt\.dscheduler-env\.json"):
        ds.Env.from_checkpoint(ckpt)
    with pytest.raises(ConfigError, match="does not exist"):
        ds.Env.from_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "bare.ckpt.dscheduler-env.json").write_text('{"pythn": "3.11"}')
    with pytest.raises(ConfigError, match="unknown keys"):
        ds.Env.from_checkpoint(ckpt)
    (tmp_path / "bare.ckpt.dscheduler-env.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ds.Env.from_checkpoint(ckpt)
