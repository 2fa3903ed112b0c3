"""Smoke tests of the real SLURM cluster that ci/slurm/up starts (one node or three).

They prove that Dask workers really run inside SLURM jobs (dask-jobqueue's
SLURMCluster) and that GPU requests (--gres=gpu:N, two fake GPUs) are honoured.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

GPU_VARS = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "GPU_DEVICE_ORDINAL")


def test_slurmcluster_worker_runs_in_a_slurm_job(slurm_available: str, slurm_interface: str,
                                                 slurm_node_cpus: dict[str, int],
                                                 tmp_path: Path) -> None:
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    def where(x: int) -> dict[str, object]:
        # runs on the worker; pickled by value since it is a local function
        import os
        import socket

        return {
            "host": socket.gethostname(),
            "job": os.environ.get("SLURM_JOB_ID"),
            "value": x * x,
        }

    t0 = time.monotonic()
    with (
        SLURMCluster(
            queue=slurm_available,
            cores=1,
            processes=1,
            memory="1GB",
            walltime="00:10:00",
            interface=slurm_interface,
            python=sys.executable,
            log_directory=str(tmp_path / "logs"),
            local_directory=str(tmp_path / "worker"),
            job_name="dscheduler-smoke",
        ) as cluster,
        Client(cluster) as client,
    ):
        cluster.scale(jobs=1)
        client.wait_for_workers(1, timeout=120)
        t_worker = time.monotonic() - t0
        result = client.submit(where, 7, pure=False).result(timeout=60)
        job_ids = {job.job_id for job in cluster.workers.values()}

    print(f"SLURMCluster: first worker after {t_worker:.1f} s, result {result}")
    assert result["value"] == 49
    assert result["job"], "the worker is not inside a SLURM job (no SLURM_JOB_ID)"
    assert result["job"] in job_ids
    assert result["host"] in slurm_node_cpus  # a node of the cluster (the host if one node)


def _sbatch(partition: str, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`sbatch --wait`: returns when the job ended, with the job's exit code."""
    # A submitting environment without GPU variables, so that any the job sees
    # were set by SLURM (sbatch exports the caller's environment by default).
    env = {k: v for k, v in os.environ.items() if k not in GPU_VARS}
    return subprocess.run(
        ["sbatch", "--wait", "--parsable", "-p", partition, "-t", "5", "-o", str(out), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


@pytest.mark.parametrize("ngpus", [1, 2])
def test_sbatch_gpu_request_is_granted(slurm_available: str, tmp_path: Path, ngpus: int) -> None:
    # SLURM 22.05 sets, in the batch step of a --gres=gpu:N job, CUDA_VISIBLE_DEVICES,
    # SLURM_JOB_GPUS and GPU_DEVICE_ORDINAL to the GPU indices (SLURM_STEP_GPUS only
    # inside srun steps); the indices are the digits ending gres.conf's File= names.
    out = tmp_path / "gpu.out"
    proc = _sbatch(slurm_available, out, f"--gres=gpu:{ngpus}", "--wrap", "env")
    assert proc.returncode == 0, f"sbatch: {proc.returncode} {proc.stdout} {proc.stderr}"
    job_env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    gpu_env = {k: job_env[k] for k in GPU_VARS if k in job_env}
    print(f"job {proc.stdout.strip()} GPU variables: {gpu_env}")
    assert gpu_env, f"no GPU variable set in a --gres=gpu:{ngpus} job: {sorted(job_env)}"
    visible = job_env.get("CUDA_VISIBLE_DEVICES", "").split(",")
    assert len(visible) == ngpus and set(visible) <= {"0", "1"}, gpu_env
    assert job_env.get("SLURM_JOB_GPUS") == job_env["CUDA_VISIBLE_DEVICES"], gpu_env


def test_sbatch_refuses_more_gpus_than_the_node_has(slurm_available: str, tmp_path: Path) -> None:
    # the node has gpu:2, so gpu:3 can never run: sbatch rejects it at submission
    proc = _sbatch(slurm_available, tmp_path / "gpu3.out", "--gres=gpu:3", "--wrap", "true")
    assert proc.returncode != 0
    assert "node configuration is not available" in proc.stderr.lower(), proc.stderr
