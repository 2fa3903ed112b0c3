"""Incremental env builds: the node's bytecode cache, and images that do not depend on it.

Real uv, real compileall and mksquashfs, envs from the local wheelhouse
(tests/wheelhouse.py), offline.  Two envs differing in one package share
every other installed file; the second build restores their ``.pyc`` files
from the cache and compiles only what is new.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from helpers import sha256
from wheelhouse import STRAY_BYTES, STRAY_PYC, MakeEnv, write_wheel

import dscheduler as ds
from dscheduler.envs.build import build_env
from dscheduler.envs.buildlog import BuildLog
from dscheduler.envs.compile_worker import entry_name
from dscheduler.envs.compiling import Compilers, cores
from dscheduler.envs.reproducible import PycCache

pytestmark = pytest.mark.squashfs


def test_warm_build_uses_the_cache_and_gives_the_same_image(
    tmp_path: Path, make_env: MakeEnv, squashfs_tools: None,
) -> None:
    env = make_env("dstest-app")
    other = make_env("dstest-app", "dstest-slow")  # one package more
    cold = build_env(ds.Store(tmp_path / "cold"), env, pyc_cache=tmp_path / "empty-cache")
    cache = tmp_path / "cache"
    filled = build_env(ds.Store(tmp_path / "other"), other, pyc_cache=cache)
    warm = build_env(ds.Store(tmp_path / "warm"), env, pyc_cache=cache)

    assert cold.record["bytecode_cache"]["cached"] == 0
    assert filled.record["bytecode_cache"]["stored"] == filled.record["bytecode_cache"]["sources"]
    used = warm.record["bytecode_cache"]
    assert used["sources"] >= 2 and used["cached"] == used["sources"] and used["stored"] == 0
    assert "0 to compile" in warm.paths.log.read_text()
    assert cold.image is not None and warm.image is not None
    assert sha256(cold.image) == sha256(warm.image)  # the cache leaves no trace in the image
    with ds.mount(warm) as prefix:  # and what it restored is the env's own bytecode
        cached = list((prefix / "lib").rglob("dstest_app/__pycache__/*.pyc"))
        assert len(cached) == 1


def test_a_changed_file_is_compiled_not_taken_from_the_cache(
    tmp_path: Path, make_env: MakeEnv, squashfs_tools: None,
) -> None:
    cache = tmp_path / "cache"
    old = build_env(ds.Store(tmp_path / "a"), make_env("dstest-base==1.0"), pyc_cache=cache)
    new = build_env(ds.Store(tmp_path / "b"), make_env("dstest-base==1.1"), pyc_cache=cache)
    # Same path inside the venv, other source: its own entry, compiled afresh.
    assert new.record["bytecode_cache"]["stored"] >= 1
    assert new.record["bytecode_cache"]["cached"] == new.record["bytecode_cache"]["sources"] - \
        new.record["bytecode_cache"]["stored"]
    cold = build_env(ds.Store(tmp_path / "c"), make_env("dstest-base==1.1"), pyc_cache=False)
    assert cold.record["bytecode_cache"] == {"dir": None, "sources": 0, "cached": 0, "stored": 0}
    assert old.image is not None and new.image is not None and cold.image is not None
    assert sha256(new.image) == sha256(cold.image) != sha256(old.image)


def test_a_pyc_shipped_in_a_wheel_is_replaced_as_compileall_would(
    tmp_path: Path, make_env: MakeEnv, squashfs_tools: None,
) -> None:
    cache = tmp_path / "cache"
    build_env(ds.Store(tmp_path / "a"), make_env("dstest-stray"), pyc_cache=cache)
    env = make_env("dstest-stray", "dstest-base==1.0")
    warm = build_env(ds.Store(tmp_path / "warm"), env, pyc_cache=cache)  # restores over it
    cold = build_env(ds.Store(tmp_path / "cold"), env, pyc_cache=False)
    assert warm.record["bytecode_cache"]["cached"] >= 1
    assert warm.image is not None and cold.image is not None
    assert sha256(warm.image) == sha256(cold.image)
    with ds.mount(warm) as prefix:
        [pyc] = (prefix / "lib").rglob(STRAY_PYC)
        assert pyc.read_bytes() != STRAY_BYTES and b"__version__" in pyc.read_bytes()


def many_modules(directory: Path, version: str) -> Path:
    """dstest-many: 40 modules, one that changes with the version, and one (Python 2) that
    never compiles."""
    modules = {f"dstest_many/m{i:02d}.py": f"def f{i}(x):\n    return x + {i}\n".encode()
               for i in range(40)}
    modules["dstest_many/m07.py"] = f"VERSION = {version!r}\n".encode()
    modules["dstest_many/legacy.py"] = b"print 'Python 2'\n"
    directory.mkdir(exist_ok=True)
    return write_wheel(directory, "dstest-many", version, [], "", extra=modules)


def test_files_are_spread_over_workers_and_bad_ones_kept_as_compileall_keeps_them(
    tmp_path: Path, node_dirs: dict[str, Path], squashfs_tools: None,
) -> None:
    wheels = tmp_path / "wheels"
    many_modules(wheels, "1.0")
    many_modules(wheels, "1.1")
    cache = tmp_path / "cache"
    build_env(ds.Store(tmp_path / "a"), ds.Env(requirements=["dstest-many==1.0"],
                                               find_links=[wheels], offline=True),
              pyc_cache=cache)
    env = ds.Env(requirements=["dstest-many==1.1"], find_links=[wheels], offline=True)
    warm = build_env(ds.Store(tmp_path / "warm"), env, pyc_cache=cache)
    cold = build_env(ds.Store(tmp_path / "cold"), env, pyc_cache=False)  # compileall itself

    used = warm.record["bytecode_cache"]
    # Of the 42 sources, m07.py changed and legacy.py never compiles: both looked up in vain.
    assert (used["sources"], used["cached"], used["stored"]) == (42, 40, 1)
    log = warm.paths.log.read_text()
    assert "40 of 42 .py files compiled before, 2 to compile" in log
    assert log.count("compile_worker.py") == cores()  # one worker a core
    assert "legacy.py" in log and "some files did not compile" in log
    assert warm.image is not None and cold.image is not None
    assert sha256(warm.image) == sha256(cold.image)
    with ds.mount(warm) as prefix:
        pycs = (prefix / "lib").rglob("dstest_many/__pycache__/*")
        compiled = {p.name.split(".")[0] for p in pycs}
    assert compiled == {"__init__", *(f"m{i:02d}" for i in range(40))}  # no legacy


def test_files_the_cache_lacks_are_dealt_out_again_over_the_workers(tmp_path: Path) -> None:
    """Misses cluster in the changed package: were they compiled by whichever worker
    looked them up, one worker could get them all.  Here the cache has every file the
    second worker looks up, so all 10 misses are the first worker's."""
    venv, cache, work = tmp_path / "venv", tmp_path / "cache", tmp_path / "work"
    package = venv / "lib" / "python3" / "site-packages" / "dstest_misses"
    package.mkdir(parents=True)
    work.mkdir()
    names = []
    for i in range(20):
        source = package / f"m{i:02d}.py"
        source.write_text(f"X = {i}  # same size\n")
        names.append(source)
        if i % 2:  # sent to the second worker (the least loaded): cached
            entry = cache / entry_name(str(source.relative_to(venv)).encode(),
                                       source.read_bytes())
            entry.parent.mkdir(parents=True, exist_ok=True)
            entry.write_bytes(b"cached")
    blog = BuildLog(work / "build.log", "test")
    compilers = Compilers(blog, Path(sys.executable), venv, "/env", cache, work,
                          dict(os.environ), 2)
    for source in names:
        compilers.send(str(source), source.stat().st_size)
    found = compilers.looked_up()
    stored, failed = compilers.finish()
    blog.close()
    assert (found.sources, found.restored, found.missing, stored, failed) == (20, 10, 10, 10, [])
    shares = [int(re.findall(r"stored=(\d+)", (work / f"compile-{i}.out").read_text())[0])
              for i in range(2)]
    assert shares == [5, 5]  # without the second deal: [10, 0]
    assert all((package / "__pycache__").glob(f"m{i:02d}.*.pyc") for i in range(20))


def test_dir_envs_compile_in_full_with_their_own_path(
    tmp_path: Path, make_env: MakeEnv,
) -> None:
    cache = tmp_path / "cache"
    store = ds.Store(tmp_path / "s")
    built = build_env(store, make_env("dstest-app", image="dir"), pyc_cache=cache)
    assert built.record["bytecode_cache"]["cached"] == 0 and not cache.exists()
    venv = store.env(built.env_id).venv
    [pyc] = (venv / "lib").rglob("dstest_app/__pycache__/*.pyc")
    assert str(venv).encode() in pyc.read_bytes()  # its real path, which no other env has


def test_cache_entries_name_interpreter_prefix_path_and_source(tmp_path: Path) -> None:
    one = PycCache(tmp_path / "c", tag="cpython-311", magic="a70d0d0a", version="3.11.7",
                   prefix="/env", mode="unchecked-hash")
    other_prefix = PycCache(tmp_path / "c", tag="cpython-311", magic="a70d0d0a",
                            version="3.11.7", prefix="/elsewhere", mode="unchecked-hash")
    assert one.dir != other_prefix.dir
    path = b"lib/python3.11/site-packages/m.py"
    entry = entry_name(path, b"x = 1\n")
    assert entry_name(path, b"x = 2\n") != entry
    assert entry_name(b"lib/python3.11/site-packages/n.py", b"x = 1\n") != entry
