"""pytest plugin: a local wheelhouse of tiny packages and fixtures to build envs from it.

Loaded through ``pytest_plugins`` in tests/conftest.py.  The wheels are written
directly with :mod:`zipfile` (no build backend, no network), byte for byte the
same in every session (fixed timestamps), so uv's cache stays warm across
tests::

    dstest-base 1.0, 1.1        module dstest_base
    dstest-app 1.0              module dstest_app, requires dstest-base>=1.1
    dstest-broken 1.0           module dstest_broken, whose import raises
    dstest-slow 1.0             module dstest_slow, sleeps $DSTEST_SLOW_SECONDS on import

Envs are made with ``find_links=[wheelhouse], offline=True``: nothing leaves
the machine.  ``node_dirs`` points dscheduler's node-local directories (uv
cache, build scratch, mount root) at session temporary directories, also for
child processes (through ``DASK_DSCHEDULER__...`` environment variables).
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask.config
import pytest

import dscheduler as ds

# (distribution, version, requirements, module source)
PACKAGES: list[tuple[str, str, list[str], str]] = [
    ("dstest-base", "1.0", [], '__version__ = "1.0"\n'),
    ("dstest-base", "1.1", [], '__version__ = "1.1"\n\ndef hello():\n    return "base"\n'),
    (
        "dstest-app",
        "1.0",
        ["dstest-base>=1.1"],
        '__version__ = "1.0"\nimport dstest_base\n\ndef hello():\n'
        '    return "app+" + dstest_base.hello()\n',
    ),
    ("dstest-broken", "1.0", [], 'raise ImportError("dstest_broken is broken on purpose")\n'),
    # Sleeps on import for $DSTEST_SLOW_SECONDS: holds a build in its smoke test.
    (
        "dstest-slow",
        "1.0",
        [],
        'import os, time\ntime.sleep(float(os.environ.get("DSTEST_SLOW_SECONDS", "0")))\n',
    ),
]

STRAY_PYC = f"dstest_stray/__pycache__/__init__.{sys.implementation.cache_tag}.pyc"
STRAY_BYTES = b"stale bytecode shipped in the wheel"

_EPOCH = (1980, 1, 1, 0, 0, 0)


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def write_wheel(directory: Path, dist: str, version: str, requires: list[str], source: str,
                extra: dict[str, bytes] | None = None) -> Path:
    """One pure-Python wheel ``{dist}-{version}-py3-none-any.whl`` in ``directory``
    (``extra``: more files, by their path in the wheel)."""
    module = dist.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    metadata = "".join(
        [
            "Metadata-Version: 2.1\n",
            f"Name: {dist}\n",
            f"Version: {version}\n",
            *(f"Requires-Dist: {r}\n" for r in requires),
        ]
    )
    files = {
        f"{module}/__init__.py": source.encode(),
        f"{info}/METADATA": metadata.encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: dscheduler-tests\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/top_level.txt": f"{module}\n".encode(),
        **(extra or {}),
    }
    record = [_record_line(name, data) for name, data in files.items()]
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = directory / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, date_time=_EPOCH)
            entry.external_attr = 0o644 << 16
            zf.writestr(entry, data)
    return path


def build_wheelhouse(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for dist, version, requires, source in PACKAGES:
        write_wheel(directory, dist, version, requires, source)
    # Ships a stale .pyc of its own, as numpy 2.2.6's wheel does
    # (numpy/distutils/__pycache__/conv_template.cpython-311.pyc).
    write_wheel(directory, "dstest-stray", "1.0", [], '__version__ = "1.0"\n',
                extra={STRAY_PYC: STRAY_BYTES})
    return directory


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the tiny test wheels (see the module docstring)."""
    return build_wheelhouse(tmp_path_factory.mktemp("wheelhouse"))


@pytest.fixture(scope="session")
def node_dirs() -> Iterator[dict[str, Path]]:
    """Session-wide node-local dirs for uv's cache, build scratch and mounts.

    Set as environment variables too, so that builder subprocesses use them.
    """
    # In /tmp, not under pytest's basetemp (in /var/tmp, shared with the SLURM nodes of
    # the multi-node cluster): each node has a /tmp of its own, so these stay node-local
    # there too (made on first use on a node), as on a real cluster.
    base = Path(tempfile.mkdtemp(prefix="dscheduler-test-node-", dir="/tmp"))
    dirs = {"uv_cache": base / "uv-cache", "scratch": base / "scratch", "mounts": base / "mounts"}
    for d in dirs.values():
        d.mkdir()
    variables = {
        "DASK_DSCHEDULER__ENV__UV_CACHE": str(dirs["uv_cache"]),
        "DASK_DSCHEDULER__ENV__SCRATCH": str(dirs["scratch"]),
        "DASK_DSCHEDULER__MOUNT__ROOT": str(dirs["mounts"]),
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in variables.items():
            mp.setenv(key, value)
        with dask.config.set(
            {
                "dscheduler.env.uv_cache": str(dirs["uv_cache"]),
                "dscheduler.env.scratch": str(dirs["scratch"]),
                "dscheduler.mount.root": str(dirs["mounts"]),
            }
        ):
            yield dirs
    if str(base) not in Path("/proc/self/mounts").read_text():  # never into a live mount
        shutil.rmtree(base, ignore_errors=True)


MakeEnv = Callable[..., ds.Env]  # the type of the make_env fixture


@pytest.fixture
def squashfs_tools() -> None:
    """Skips when mksquashfs is missing (under CI=true such a skip fails the run)."""
    if shutil.which("mksquashfs") is None:
        pytest.skip("mksquashfs not installed (apt-get install squashfs-tools)")


@pytest.fixture
def make_env(wheelhouse: Path, node_dirs: dict[str, Path]) -> MakeEnv:
    """``make_env("dstest-app", image="dir")``: an offline Env over the wheelhouse."""

    def make(*requirements: str, **fields: Any) -> ds.Env:
        return ds.Env(
            requirements=list(requirements), find_links=[wheelhouse], offline=True, **fields
        )

    return make


@pytest.fixture
def store(tmp_path: Path) -> ds.Store:
    """A fresh, empty store in the test's temporary directory."""
    return ds.Store(tmp_path / "store").ensure()

