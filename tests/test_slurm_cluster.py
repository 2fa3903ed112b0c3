"""Graphs on real SLURM (one node or three): envs on workers, GPU routing, scancel, lifetime.

docs/design.md §13.  Jobs are small (1 core, 1 GB) so that a CPU job and a
GPU job fit a 2-CPU node at once; every test ends with none of its jobs in
``squeue``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.config
import pytest
from graphfixtures import Cfg, count, lines, work
from helpers import assert_loopback_only, our_jobs, page_json, run, wait_for, wait_until_gone

import dscheduler as ds
from dscheduler.envs.mount import BACKENDS, SharedMount, release_unused
from dscheduler.identity import short_id
from dscheduler.run.clusters import close_slurm

pytestmark = pytest.mark.slurm

SMALL = {"cores": 1, "memory": "1GB", "max_jobs": 1, "walltime": "00:15:00",
         "idle_timeout": 2, "interval": 0.5, "gpu": {"gpus": 1, "max_jobs": 1}}


def attempts(results: ds.Results, node: ds.Node) -> list[dict[str, Any]]:
    record = results.record(node)
    assert record is not None, node.name
    return list(record["attempts"])


# -- a graph with two envs, on the process's own SLURM cluster -----------------------------


def _build_starts(dask_scheduler: Any) -> dict[str, int]:
    """Run on the scheduler: how many times each env build task was sent to a worker."""
    starts: dict[str, int] = {}
    for key, _start, finish, *_ in dask_scheduler.transition_log:
        if str(key).startswith("build_env-") and finish == "processing":
            starts[str(key)] = starts.get(str(key), 0) + 1
    return starts


def test_two_envs_ten_tasks_on_slurm_workers(slurm_available: str, node_dirs: Any,
                                             slurm_node_cpus: dict[str, int],
                                             tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "data")
    log = str(tmp_path / "log")
    cfgs = [Cfg(flavor="ab"[i % 2], x=i, log=log, sleep=1.0) for i in range(10)]
    nodes = [work(cfg, "c0") for cfg in cfgs]
    # Two one-core CPU jobs (one 2-CPU node holds both; node_dirs' shared dirs when on
    # two nodes): two workers that could race for the builds and mounts of the two envs.
    settings = {f"dscheduler.slurm.{k}": v for k, v in {**SMALL, "max_jobs": 2}.items()}
    with dask.config.set({**settings, "dscheduler.slurm.partition": slurm_available}):
        try:
            handle = ds.submit(nodes, store=store, cluster="slurm")
            results = handle.wait(timeout=180, progress=False)
            started = handle.client.run_on_scheduler(_build_starts)
        finally:
            close_slurm()  # cancels its jobs
    assert results.counts() == {"succeeded": 10}, results.errors
    assert sorted(results.envs.values()) == ["built", "built"]  # two envs, both built here
    assert count(log, "start") == 10 and [results.value(n)["x"] for n in nodes] == list(range(10))
    env_ids = sorted({cfg.env_id for cfg in cfgs})
    assert sorted(results.envs) == env_ids
    # Each env built once: its build task went to a worker once (no worker ran it
    # again) ...
    assert started == {f"build_env-{env_id}": 1 for env_id in env_ids}, started
    # ... and one build ran: one builder's header in its build log (a build writes it
    # first), one install, nothing a second builder left behind, one env.json.
    assert sorted(p.parent.name for p in store.envs_dir.glob("*/env.json")) == env_ids
    for env_id in env_ids:
        paths = store.env(env_id)
        build_log = paths.log.read_text()
        assert build_log.count(f"env {env_id} (") == 1, build_log
        assert build_log.count("== install") == 1, build_log
        assert store.env_leftovers(env_id) == [] and not paths.failed_log.exists()
    jobs = set()
    for node in nodes:
        [attempt] = attempts(results, node)
        jobs.add(attempt["slurm_job_id"])
        # the node it ran on: the host on the one-node cluster, dsnI on the nodes
        assert attempt["slurm_node"] in slurm_node_cpus, attempt
        assert attempt["slurm_node"] == attempt["host"].split(".")[0], attempt
        worker_log = Path(attempt["worker_log"])
        assert worker_log.parent == store.slurm_logs_dir
        assert worker_log.name.endswith(f"-{attempt['slurm_job_id']}.log")
        assert "distributed.worker" in worker_log.read_text()
    assert None not in jobs
    assert len(jobs) == 2, jobs  # both workers ran tasks of the graph
    wait_until_gone(jobs, 60)
    assert not any(name.startswith("dscheduler-") for _, name in our_jobs().values())
    assert store.slurm_jobs_records() == []  # the cluster's ledger went with it


# -- one held cluster for the next tests -----------------------------------------------------


FIRST_PAGE: dict[str, dict[str, Any] | str] = {}  # cluster id -> page_json as it started


@pytest.fixture(scope="module")
def slurm(slurm_available: str, node_dirs: Any,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    store = ds.Store(tmp_path_factory.mktemp("slurm") / "data")
    cluster = ds.slurm_cluster(store, partition=slurm_available, **SMALL)
    try:
        # the dscheduler page, asked for at once: before any graph was submitted
        FIRST_PAGE[cluster.cluster_id] = page_json(cluster.dashboard_link)
        yield cluster
    finally:
        cluster.close()
        wait_until_gone(set(cluster.history), 60)


def test_job_scripts_hold_the_configured_directives(slurm: Any) -> None:
    cpu, gpu = slurm.job_script(), slurm.job_script("gpu")
    for script in (cpu, gpu):
        lines_ = script.splitlines()
        for line in ["#SBATCH -p debug", "#SBATCH --cpus-per-task=1", "#SBATCH --mem=954M",
                     "#SBATCH -t 00:15:00"]:
            assert line in lines_, (line, script)
        assert f"{sys.executable} -m distributed.cli.dask_worker {slurm.scheduler_address}" \
            in script
        assert f"--output={slurm.store.slurm_logs_dir}/" in script
        assert "--lifetime 810s --lifetime-stagger 45s --no-lifetime-restart" in script
        # SLURM itself accepts the script (--test-only submits nothing)
        proc = subprocess.run(["sbatch", "--test-only"], input=script, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    assert "--resources CPU=1" in cpu and "gres" not in cpu
    assert "#SBATCH --gres=gpu:1" in gpu.splitlines() and "--resources GPU=1" in gpu


def test_dscheduler_page_from_the_start_and_on_loopback_only(slurm: Any) -> None:
    """docs/design.md §12: the page is on a SLURM scheduler's dashboard before any
    submit; §13.7: the dashboard binds to loopback while the scheduler listens widely."""
    first = FIRST_PAGE[slurm.cluster_id]
    assert isinstance(first, dict), first  # 200, and JSON
    assert first["scheduler"] == slurm.scheduler_address and first["graphs"] == []
    assert_loopback_only(slurm.dashboard_link)


@ds.task(version="1", env=None)
def on_cpu(i: int) -> dict[str, Any]:

    return {"i": i, "job": os.environ.get("SLURM_JOB_ID"),
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}


@ds.task(version="1", env=None, resources={"GPU": 1})
def on_gpu(i: int) -> dict[str, Any]:

    return {"i": i, "job": os.environ.get("SLURM_JOB_ID"),
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}


def test_gpu_tasks_run_only_in_gpu_jobs_cpu_tasks_in_the_others(slurm: Any) -> None:
    cpu_nodes, gpu_nodes = [on_cpu(i) for i in range(3)], [on_gpu(i) for i in range(3)]
    results = run(cpu_nodes + gpu_nodes, slurm.store, slurm)
    assert results.counts() == {"succeeded": 6}, results.errors
    kinds = slurm.history  # every job this one scheduler submitted -> cpu | gpu
    for node in gpu_nodes:
        value = results.value(node)
        assert kinds[value["job"]] == "gpu" and value["cuda"] in ("0", "1"), value
    for node in cpu_nodes:
        value = results.value(node)
        assert kinds[value["job"]] == "cpu" and value["cuda"] is None, value


def test_detach_needs_a_scheduler_outside_the_driver(slurm: Any) -> None:
    with pytest.raises(ds.ConfigError, match="detach=True needs a scheduler that outlives"):
        ds.submit(on_cpu(99), store=slurm.store, cluster=slurm, detach=True)


@ds.task(version="1", env=None)
def victim(log: str) -> dict[str, Any]:
    """The first execution waits to be cancelled; the next one finishes at once."""

    with open(log, "a") as f:
        f.write(f"start {os.environ['SLURM_JOB_ID']}\n")
    with open(log) as f:
        starts = sum(1 for line in f if line.startswith("start"))
    if starts == 1:
        time.sleep(120)
    return {"starts": starts, "job": os.environ["SLURM_JOB_ID"]}


def test_scancel_of_a_workers_job_mid_task_runs_it_again_elsewhere(slurm: Any,
                                                                    tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    node = victim(log)
    handle = ds.submit(node, store=slurm.store, cluster=slurm)
    first = wait_for(lambda: next(iter(lines(log)), None), what="the task to start").split()[1]
    # past its first moment (running_record_after): its lease and "running" record name its
    # job; one cancelled before holds its node by its directory alone (docs/design.md §7)
    wait_for(lambda: node.paths(slurm.store).record.exists(), what="its running record")
    subprocess.run(["scancel", first], check=True, timeout=30)
    results = handle.wait(timeout=180, progress=False)
    assert results.state(node) == "succeeded", results.errors
    value = results.value(node)
    assert value["starts"] == 2 and value["job"] != first
    killed, rerun = attempts(results, node)
    assert killed["state"] == "failed" and "interrupted" in killed["error"]
    assert killed["slurm_job_id"] == first
    assert rerun["state"] == "succeeded" and rerun["slurm_job_id"] == value["job"]


def hello(i: int) -> str:
    import dstest_app  # only in the env's image

    return f"{i} {dstest_app.hello()}"


@pytest.mark.squashfs
def test_a_squashfs_env_is_built_once_mounted_on_the_node_and_released(
        slurm: Any, make_env: Any, node_dirs: dict[str, Path]) -> None:
    if shutil.which("mksquashfs") is None or shutil.which("squashfuse") is None:
        pytest.skip("squashfs-tools or squashfuse missing (apt-get install squashfs-tools "
                    "squashfuse fuse3)")
    env = make_env("dstest-app")  # a squashfs image, built by a CPU job's worker
    task = ds.task(version="1", env=env, name="hello_sqsh")(hello)
    nodes = [task(i) for i in range(4)]
    results = run(nodes, slurm.store, slurm)
    assert results.envs == {env.env_id: "built"}, results.env_errors
    assert [results.value(n) for n in nodes] == [f"{i} app+base" for i in range(4)]
    assert all(attempts(results, n)[-1]["slurm_job_id"] in slurm.history for n in nodes)
    # the image was mounted on the node (a shared mount's lock file stays) ...
    assert list(node_dirs["mounts"].glob("*.lock")), list(node_dirs["mounts"].iterdir())
    # ... and nothing of it is mounted any more
    mounts = Path("/proc/mounts").read_text()
    assert str(node_dirs["mounts"]) not in mounts, mounts

    # A mount whose holder was killed mid-task is released when a worker starts or stops.
    built = slurm.store.build_env(env)  # published: returned at once
    shared = SharedMount(BACKENDS["squashfuse"], f"squashfuse-{short_id(built.lock_digest)}")
    holder = shared.enter(built.image)
    holder.rename(holder.with_name("1-1-killed"))  # pid 1 started at another time: dead
    assert str(shared.target) in Path("/proc/mounts").read_text()
    assert release_unused() == [shared.dir]  # what dscheduler.run.slurm.preload calls
    assert str(shared.target) not in Path("/proc/mounts").read_text()


# -- walltime: workers retire at their lifetime, new jobs finish the graph -------------------


@ds.task(version="1", env=None)
def step(i: int, log: str) -> dict[str, Any]:

    with open(log, "a") as f:
        f.write(f"start {i} {os.environ['SLURM_JOB_ID']}\n")
    time.sleep(3)
    return {"i": i, "job": os.environ["SLURM_JOB_ID"]}


@ds.task(version="1", env=None, resources={"GPU": 1})
def gpu_step(i: int, log: str) -> dict[str, Any]:

    with open(log, "a") as f:
        f.write(f"start gpu {i} {os.environ['SLURM_JOB_ID']}\n")
    time.sleep(3)
    return {"i": i, "job": os.environ["SLURM_JOB_ID"],
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}


def test_a_worker_reaching_its_lifetime_retires_and_new_jobs_finish(
        slurm_available: str, node_dirs: Any, tmp_path: Path) -> None:
    """CPU and GPU jobs alike (dask-jobqueue #691: after a lifetime shutdown, adaptive
    did not resubmit GPU jobs): each kind's 12 s of work outlasts a worker's 8 s, with
    one job of each kind at a time, so each kind needs a job asked for after the first
    retired."""
    store = ds.Store(tmp_path / "data")
    log = str(tmp_path / "log")
    cpu_nodes = [step(i, log) for i in range(4)]
    gpu_nodes = [gpu_step(i, log) for i in range(4)]
    options = {**SMALL, "walltime": "00:05:00", "lifetime": "8s", "lifetime_stagger": "0s"}
    with ds.slurm_cluster(store, partition=slurm_available, **options) as cluster:
        results = run(cpu_nodes + gpu_nodes, store, cluster)
        history = cluster.history  # job id -> cpu | gpu
    wait_until_gone(set(history), 60)
    assert results.counts() == {"succeeded": 8}, results.errors  # no task lost
    assert [results.value(n)["i"] for n in cpu_nodes] == [0, 1, 2, 3]
    assert [results.value(n)["i"] for n in gpu_nodes] == [0, 1, 2, 3]
    # Which job ran which node is up to the scheduler (a task cut short by a retiring
    # worker runs again in a later job): read the logs of every job that ran one.
    logs = {a["slurm_job_id"]: Path(a["worker_log"]).read_text()
            for n in cpu_nodes + gpu_nodes for a in attempts(results, n)}
    for kind, nodes in (("cpu", cpu_nodes), ("gpu", gpu_nodes)):
        jobs = [attempts(results, n)[-1]["slurm_job_id"] for n in nodes]
        assert {history[j] for j in jobs} == {kind}, (kind, jobs, history)
        # the graph went on in a job of the kind asked for after the first retired
        assert len(set(jobs)) >= 2, (kind, jobs, history)
        ran = {a["slurm_job_id"] for n in nodes for a in attempts(results, n)}
        retired = [job for job in ran if "worker-lifetime-reached" in logs[job]]
        assert retired, (kind, {job: logs[job] for job in ran})  # a worker retired by itself
    assert all(results.value(n)["cuda"] in ("0", "1") for n in gpu_nodes)
    limited = [job for job, text in logs.items() if "DUE TO TIME LIMIT" in text]
    assert not limited, limited  # ... before SLURM's limit


# -- bad options: errors before any job ----------------------------------------------------


def test_bad_options_fail_before_any_job_is_submitted(slurm_available: str,
                                                      tmp_path: Path) -> None:
    before = set(our_jobs())
    store = ds.Store(tmp_path / "data")
    with pytest.raises(ds.ConfigError, match=r"walltime '1:2:3:4' is not a SLURM time limit"):
        ds.slurm_cluster(store, walltime="1:2:3:4")
    with pytest.raises(ds.ConfigError, match=r"memory='4000': needs a unit"):
        ds.slurm_cluster(store, memory="4000")
    with pytest.raises(ds.ConfigError, match=r"\['walltme'\] in the arguments; valid options"):
        ds.slurm_cluster(store, walltme="01:00:00")
    with dask.config.set({"dscheduler.slurm.walltime": "abc"}), \
            pytest.raises(ds.ConfigError, match=r"walltime 'abc'"):
        ds.compute(on_cpu(7), store=store, cluster="slurm", progress=False)
    proc = subprocess.run([str(Path(sys.executable).with_name("dscheduler")), "cluster", "up",
                           "--store", str(store.root), "-o", "memory=4000"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "needs a unit" in proc.stderr, proc.stderr
    assert not store.slurm_cluster_record.exists() and store.slurm_jobs_records() == []
    assert set(our_jobs()) == before
