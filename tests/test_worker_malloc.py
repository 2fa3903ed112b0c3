"""Workers dscheduler starts keep glibc's own malloc tuning (docs/design.md §11).

Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` in its workers through
``distributed.nanny.pre-spawn-environ``; setting it at all also fixes glibc's mmap
threshold at 128 KiB, so every buffer of a Zarr write was mapped, faulted in and
unmapped again.  The embedded cluster's and SLURM jobs' nannies are told, through
that same config, not to set it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

import dscheduler as ds
from dscheduler import settings
from dscheduler.run.slurm.jobs import job_script
from dscheduler.run.slurm.options import resolve

NANNY_ENV = ("from distributed.nanny import _get_env_variables; "
             "print(sorted(_get_env_variables('distributed.nanny.pre-spawn-environ')))")


@ds.task(version="1", env=None)
def ramp(rows: int) -> Any:
    return np.arange(rows * 1000, dtype="float32").reshape(rows, 1000)


@ds.task(version="1", env=None)
def worker_environ(tag: str) -> dict[str, Any]:
    import dask.config

    return {"trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
            "config": dask.config.get("distributed.nanny.pre-spawn-environ")}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_embedded_cluster_workers_reuse_freed_buffers(cluster: Any,
                                                      graph_store: ds.Store) -> None:
    """Without the nanny's trim threshold glibc hands freed buffers out again: 16 buffers
    of 1 MiB fault in fewer than a quarter of their pages (with it, every page, each
    time), and writing a 12 MB value faults each of its pages in about once, as in a
    driver (with it, about 2.4 times)."""
    def in_worker() -> dict[str, Any]:
        """Run on a worker: its environment, and page faults of freeing and making buffers."""
        import ctypes
        import resource
        import tempfile
        from pathlib import Path

        from dscheduler.store.layout import NodePaths
        from dscheduler.store.values import save_value

        libc = ctypes.CDLL(None)
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]

        def faults(who: int = resource.RUSAGE_THREAD) -> int:
            return resource.getrusage(who).ru_minflt

        start = faults()
        for _ in range(16):  # making, filling and freeing a 1 MiB buffer 16 times
            block = libc.malloc(2**20)
            ctypes.memset(block, 1, 2**20)
            libc.free(block)
        churn = faults() - start
        value = np.random.default_rng(0).standard_normal((3000, 1000), dtype="float32")
        saves = []
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(4):  # the first one grows the heap
                start = faults(resource.RUSAGE_SELF)  # zarr's threads too
                save_value(NodePaths(Path(tmp), f"v{i}"), value, fresh=True)
                saves.append(faults(resource.RUSAGE_SELF) - start)
        return {"trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"), "page": resource.getpagesize(),
                "churn": churn, "saves": saves}

    if "MALLOC_TRIM_THRESHOLD_" in os.environ:  # the driver's own: it reaches the workers
        pytest.fail("run the tests without MALLOC_TRIM_THRESHOLD_ in the environment")
    node = ramp(3000)  # 12 MB, two chunks
    ds.compute(node, store=graph_store, cluster=cluster, progress=False).raise_for_status()
    np.testing.assert_array_equal(
        graph_store.open(node), np.arange(3_000_000, dtype="float32").reshape(3000, 1000))
    for worker, got in cluster.run(in_worker).items():
        pages = 16 * 2**20 // got["page"]
        assert got["trim"] is None, (worker, got)
        assert got["churn"] < pages / 4, (worker, got)
        assert min(got["saves"][1:]) < 1.5 * 12e6 / got["page"], (worker, got)


@pytest.mark.fast
def test_slurm_job_scripts_tell_the_nanny_not_to_set_the_trim_threshold() -> None:
    """A job's workers get the driver's config through DASK_INTERNAL_INHERIT_CONFIG; with
    it, a nanny's pre-spawn environment holds no MALLOC_TRIM_THRESHOLD_ (without it,
    Dask's default does)."""
    settings.dask_config()
    script = job_script(resolve(), "cpu")
    [encoded] = re.findall(r"export DASK_INTERNAL_INHERIT_CONFIG=(\S+)", script)
    config = json.loads(base64.urlsafe_b64decode(encoded))
    assert config["distributed"]["nanny"]["pre-spawn-environ"] == {
        "MALLOC_TRIM_THRESHOLD_": None}
    env = {k: v for k, v in os.environ.items()
           if k != "MALLOC_TRIM_THRESHOLD_" and not k.startswith("DASK_")}
    seen = {}
    for name, extra in (("ours", {"DASK_INTERNAL_INHERIT_CONFIG": encoded}), ("dask's", {})):
        out = subprocess.run([sys.executable, "-c", NANNY_ENV], env={**env, **extra},
                             capture_output=True, text=True, timeout=120, check=True)
        seen[name] = out.stdout
    assert "MALLOC_TRIM_THRESHOLD_" not in seen["ours"], seen
    assert "MALLOC_TRIM_THRESHOLD_" in seen["dask's"], seen  # what the config undoes


@pytest.mark.slurm
def test_slurm_workers_run_without_the_trim_threshold(slurm_available: str, node_dirs: Any,
                                                      tmp_path: Any) -> None:
    store = ds.Store(tmp_path / "data")
    options = {"cores": 1, "memory": "1GB", "max_jobs": 1, "walltime": "00:05:00",
               "idle_timeout": 2, "interval": 0.5}
    node = worker_environ("slurm")
    with ds.slurm_cluster(store, partition=slurm_available, **options) as slurm:
        results = ds.compute(node, store=store, cluster=slurm, progress=False)
    results.raise_for_status()
    got = results.value(node)
    assert got["trim"] is None, got
    assert got["config"].get("MALLOC_TRIM_THRESHOLD_", "unset") is None, got
