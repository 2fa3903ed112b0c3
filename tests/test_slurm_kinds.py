"""Named kinds of SLURM job on one scheduler: partition, memory, walltime and GPUs per kind.

docs/design.md §13.2.  Two named kinds, on the partitions ``preempt`` and ``shared`` that
ci/slurm/up makes, with different memory and walltime; a third with both fake GPUs of the
node.  Each task reads its own job with ``scontrol show job`` from inside it (no sacct
needed).  Jobs are one core each; every test ends with none of its jobs in ``squeue``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from helpers import our_jobs, run, wait_for, wait_until_gone

import dscheduler as ds

pytestmark = pytest.mark.slurm

KINDS = {
    "pre": {"partition": "preempt", "memory": "1GB", "walltime": "20min", "max_jobs": 1},
    "shr": {"partition": "shared", "memory": "2GiB", "walltime": "1h30m", "max_jobs": 1},
    "twogpu": {"partition": "shared", "memory": "1GB", "walltime": "00:10:00", "gpus": 2,
               "max_jobs": 1},
    # two worker processes sharing the node's two GPUs: one each
    "split": {"partition": "shared", "memory": "1GB", "walltime": "00:10:00", "gpus": 2,
              "cores": 2, "processes": 2, "max_jobs": 1},
}
OPTIONS = {"cores": 1, "memory": "1GB", "max_jobs": 1, "walltime": "00:15:00",
           "idle_timeout": 2, "interval": 0.5, "gpu": {"max_jobs": 0}, "kinds": KINDS}


def my_job() -> dict[str, str]:
    """This task's job as ``scontrol show job`` shows it: Partition, TimeLimit, MinMemoryNode..."""
    out = subprocess.run(["scontrol", "show", "job", "-o", os.environ["SLURM_JOB_ID"]],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    fields = dict(part.split("=", 1) for part in out.split() if "=" in part)
    return {**fields, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES", "")}


@ds.task(version="1", env=None, resources={"job": "pre"})
def on_pre(i: int) -> dict[str, str]:
    import time

    time.sleep(2)
    return my_job()


@ds.task(version="1", env=None, resources={"job": "shr"})
def on_shr(i: int) -> dict[str, str]:
    import time

    time.sleep(2)
    return my_job()


@ds.task(version="1", env=None, resources={"job": "twogpu", "GPU": 2})
def on_two_gpus(i: int) -> dict[str, str]:
    return my_job()


@ds.task(version="1", env=None, resources={"job": "split", "GPU": 1})
def on_half(i: int) -> dict[str, str]:
    import time

    from distributed import get_worker

    time.sleep(2)
    return {**my_job(), "worker": str(get_worker().name)}


@pytest.fixture(scope="module")
def cluster(slurm_available: str, node_dirs: Any,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    store = ds.Store(tmp_path_factory.mktemp("kinds") / "data")
    held = ds.slurm_cluster(store, partition=slurm_available, **OPTIONS)
    try:
        yield held
    finally:
        held.close()
        wait_until_gone(set(held.history), 60)


@pytest.mark.timeout(900)
def test_each_kind_runs_in_jobs_of_its_partition_memory_and_walltime(cluster: Any) -> None:
    nodes = {"pre": [on_pre(i) for i in range(3)], "shr": [on_shr(i) for i in range(3)]}
    # One graph per kind, waited for at once: a finished graph's results leave its worker,
    # so its job can go and the other kind's job get the core it waits for (the node has
    # two, shared with other tests).
    handles = [ds.submit(kind_nodes, store=cluster.store, cluster=cluster)
               for kind_nodes in nodes.values()]
    # both queues scaled on the one scheduler: a job of each kind asked for at once
    wait_for(lambda: {s.kind for s in list(cluster.scaler.jobs.values())} >= {"pre", "shr"}
             or None, 120, "jobs of both kinds in the worker spec")
    with ThreadPoolExecutor(2) as pool:
        pre, shr = pool.map(lambda h: h.wait(timeout=600, progress=False), handles)
    for results in (pre, shr):
        assert results.counts() == {"succeeded": 3}, results.errors
    mem = {kind: next(line.split("=")[1] for line in cluster.job_script(kind).splitlines()
                      if line.startswith("#SBATCH --mem=")) for kind in nodes}
    assert mem == {"pre": "954M", "shr": "2G"}  # 1GB and 2GiB, as dask-jobqueue writes them
    expected = {"pre": ("preempt", "00:20:00", mem["pre"]),
                "shr": ("shared", "01:30:00", mem["shr"])}
    for kind, kind_nodes in nodes.items():
        for node in kind_nodes:
            job = (pre if kind == "pre" else shr).value(node)
            assert (job["Partition"], job["TimeLimit"], job["MinMemoryNode"]) == \
                expected[kind], job
            assert cluster.history[job["JobId"]] == kind  # recorded as a job of that kind
            assert job["JobName"] == f"dscheduler-{kind}-{cluster.cluster_id}"
    assert "cpu" not in cluster.history.values()  # nothing asked for the default kind


@pytest.mark.timeout(900)
def test_a_task_asking_for_two_gpus_sees_exactly_its_jobs_two(cluster: Any) -> None:
    node = on_two_gpus(0)
    results = run([node], cluster.store, cluster, timeout=600)
    assert results.counts() == {"succeeded": 1}, results.errors
    job = results.value(node)
    assert job["Partition"] == "shared" and "gpu:2" in job.get("TresPerNode", ""), job
    assert sorted(job["cuda"].split(",")) == ["0", "1"], job  # SLURM's gres, both of them


@pytest.mark.timeout(900)
def test_each_worker_of_a_gpu_job_sees_only_its_share(cluster: Any) -> None:
    """A 2-GPU job of two worker processes (it needs both cores of the node): worker
    ``{job}-0`` sees GPU 0, worker ``{job}-1`` GPU 1, whichever ran the tasks."""
    nodes = [on_half(i) for i in range(4)]
    results = run(nodes, cluster.store, cluster, timeout=600)
    assert results.counts() == {"succeeded": 4}, results.errors
    for node in nodes:
        value = results.value(node)
        assert "gpu:2" in value.get("TresPerNode", ""), value
        assert value["cuda"] == value["worker"].rsplit("-", 1)[1], value


def test_an_unknown_kind_or_too_many_gpus_fail_before_anything_is_submitted(
        cluster: Any, tmp_path: Path) -> None:
    before, history = set(our_jobs()), dict(cluster.history)
    typo = ds.task(version="1", env=None, name="typo", resources={"job": "preemt"})(my_job)
    with pytest.raises(ds.ConfigError, match=r"task 'typo' asks for the job kind 'preemt', "
                       r"which this SLURM cluster does not have; known kinds: cpu, gpu, pre, "
                       r"shr, twogpu, split"):
        ds.submit(typo(), store=cluster.store, cluster=cluster)
    greedy = ds.task(version="1", env=None, name="greedy",
                     resources={"job": "pre", "GPU": 1})(my_job)
    with pytest.raises(ds.ConfigError, match=r"task 'greedy' asks for 1 GPU\(s\) of job kind "
                       r"'pre', whose workers have 0"):
        ds.submit(greedy(), store=cluster.store, cluster=cluster)
    assert cluster.history == history and set(our_jobs()) <= before
    assert not [k for k in cluster.scheduler.tasks if "typo" in str(k) or "greedy" in str(k)]
