"""Per-kind scaling without SLURM: demand in slots, jobs wanted per kind.

docs/design.md §13.2.  :func:`~dscheduler.run.slurm.scaler.demand` reads the
scheduler's ``unrunnable``, ``queued`` and each worker's ``processing``;
:func:`~dscheduler.run.slurm.scaler.targets` turns the slots into jobs, as
``Scaler.adapt`` does every ``interval`` seconds.  The fast tests hand them a
small stand-in for the scheduler made of distributed's own ``TaskState`` and
``WorkerState`` objects, in the collections the scheduler keeps them in; the
last test lets a real in-process scheduler (no SLURM, no job) put the tasks
there, so the stand-in cannot drift from what distributed does.
"""

from __future__ import annotations

import asyncio
import operator
import threading
import time
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import pytest
from distributed import Client, Scheduler, Worker
from distributed.collections import HeapSet
from distributed.core import Status
from distributed.scheduler import TaskGroup, TaskPrefix, TaskState, TaskStateState, WorkerState

from dscheduler.errors import ConfigError
from dscheduler.run.slurm.options import resolve
from dscheduler.run.slurm.routing import (
    RoutingPlugin,
    _scheduler_kinds,
    check_resources,
    kinds_of,
    route,
)
from dscheduler.run.slurm.scaler import demand, slot_caps, targets

CPU, GPU = {"CPU": 1}, {"GPU": 1}


def task(key: str, state: TaskStateState, resources: Mapping[str, float] | None = None,
         inputs: tuple[TaskState, ...] = ()) -> TaskState:
    """A scheduler TaskState in ``state``, depending on ``inputs``."""
    prefix = key.rsplit("-", 1)[0]
    ts = TaskState(key, None, state, TaskGroup(prefix, TaskPrefix(prefix)), validate=False)
    ts.resource_restrictions = dict(resources) if resources is not None else None
    for dep in inputs:
        ts.add_dependency(dep)
    if state == "waiting":
        ts.waiting_on = {dep for dep in inputs if dep.state != "memory"}
    return ts


def worker(address: str, processing: list[TaskState],
           resources: Mapping[str, float]) -> WorkerState:
    ws = WorkerState(address=address, status=Status.running, pid=1, name=address,
                     nthreads=1, memory_limit=0, local_directory="/tmp", nanny=None,
                     server_id=address)
    ws.resources = dict(resources)
    for ts in processing:
        ws.processing.add(ts)
        ts.processing_on = ws
    return ws


def scheduler(tasks: list[TaskState], workers: tuple[WorkerState, ...] = ()) -> Any:
    """What ``demand`` reads of a Scheduler, laid out as the scheduler lays it out:
    no-worker tasks in ``unrunnable``, queued ones in ``queued``, processing ones on
    their worker; waiting, released and memory tasks in ``tasks`` only."""
    queued: HeapSet[TaskState] = HeapSet(key=operator.attrgetter("priority"))
    for i, ts in enumerate(t for t in tasks if t.state == "queued"):
        ts.priority = (i,)
        queued.add(ts)
    unrunnable = {ts: 0.0 for ts in tasks if ts.state == "no-worker"}
    processing = {ts for ws in workers for ts in ws.processing}
    assert processing == {ts for ts in tasks if ts.state == "processing"}
    return SimpleNamespace(tasks={ts.key: ts for ts in tasks}, unrunnable=unrunnable,
                           queued=queued, workers={ws.address: ws for ws in workers})


def jobs(state: Any, **options: Any) -> tuple[dict[str, float], dict[str, int]]:
    """(slots wanted, jobs wanted) per kind, as ``Scaler.adapt`` computes them."""
    opts = resolve(**options)
    wanted = demand(state, slot_caps(opts))
    return wanted, targets(wanted, opts)


@pytest.mark.fast
def test_one_runnable_cpu_task_asks_for_one_job_not_max_jobs() -> None:
    state = scheduler([task("a-0", "no-worker", CPU)])
    assert jobs(state, max_jobs=4) == ({"cpu": 1, "gpu": 0}, {"cpu": 1, "gpu": 0})
    assert jobs(scheduler([]), max_jobs=4) == ({"cpu": 0, "gpu": 0}, {"cpu": 0, "gpu": 0})
    # min_jobs keeps CPU jobs; GPU jobs have none
    assert jobs(scheduler([]), max_jobs=4, min_jobs=2)[1] == {"cpu": 2, "gpu": 0}


@pytest.mark.fast
def test_gpu_jobs_stop_at_their_own_max_jobs() -> None:
    state = scheduler([task(f"g-{i}", "no-worker", GPU) for i in range(3)])
    assert jobs(state, max_jobs=4, gpu={"max_jobs": 2}) == (
        {"cpu": 0, "gpu": 3}, {"cpu": 0, "gpu": 2})
    # slots per job: 2 GPUs a job hold two 1-GPU tasks; a 2-GPU task fills one
    assert jobs(state, gpu={"gpus": 2, "max_jobs": 4})[1]["gpu"] == 2
    big = scheduler([task(f"g-{i}", "no-worker", {"GPU": 2}) for i in range(3)])
    assert jobs(big, gpu={"gpus": 2, "max_jobs": 4}) == (
        {"cpu": 0, "gpu": 6}, {"cpu": 0, "gpu": 3})


@pytest.mark.fast
def test_tasks_waiting_for_unfinished_inputs_do_not_count() -> None:
    source = task("src-0", "no-worker", CPU)
    done = task("done-0", "memory", CPU)
    after = [task(f"after-{i}", "waiting", CPU, (source,)) for i in range(5)]
    gpu_after = [task(f"gafter-{i}", "waiting", GPU, (source, done)) for i in range(3)]
    released = task("rel-0", "released", GPU)
    state = scheduler([source, done, *after, *gpu_after, released])
    assert jobs(state, max_jobs=4) == ({"cpu": 1, "gpu": 0}, {"cpu": 1, "gpu": 0})


@pytest.mark.fast
def test_cpu_and_gpu_are_counted_apart() -> None:
    running = [task("c-0", "processing", CPU), task("c-1", "processing", CPU)]
    gpu_running = [task("g-0", "processing", GPU)]
    cpu_ws = worker("tcp://10.0.0.1:1", running, {"CPU": 2})  # a CPU job's worker
    gpu_ws = worker("tcp://10.0.0.2:1", gpu_running, {"GPU": 1})  # a GPU job's worker
    waiting_cpu = [task(f"c-{i}", "no-worker", CPU) for i in range(2, 5)]
    waiting_gpu = [task(f"g-{i}", "no-worker", GPU) for i in range(1, 3)]
    plain = task("plain-0", "queued")  # no restriction (not routed): a CPU task
    state = scheduler([*running, *gpu_running, *waiting_cpu, *waiting_gpu, plain],
                      (cpu_ws, gpu_ws))
    assert jobs(state, max_jobs=8, gpu={"max_jobs": 8}) == (
        {"cpu": 6, "gpu": 3}, {"cpu": 6, "gpu": 3})
    # 2 cores a CPU job: 6 slots, 3 jobs; GPU jobs unchanged
    assert jobs(state, cores=2, max_jobs=8, gpu={"max_jobs": 8, "cores": 1})[1] == \
        {"cpu": 3, "gpu": 3}
    # a kind at its max_jobs leaves the other one alone
    assert jobs(state, max_jobs=1, gpu={"max_jobs": 8})[1] == {"cpu": 1, "gpu": 3}
    assert jobs(state, max_jobs=8, gpu={"max_jobs": 0})[1] == {"cpu": 6, "gpu": 0}


KINDS = {"pre": {"partition": "preempt", "max_jobs": 2},
         "big": {"gpus": 2, "max_jobs": 3, "min_jobs": 1}}


@pytest.mark.fast
def test_each_named_kind_is_scaled_to_its_own_tasks() -> None:
    pre = [task(f"p-{i}", "no-worker", {"job-pre": 1}) for i in range(5)]
    big = [task(f"b-{i}", "no-worker", {"job-big": 2}) for i in range(2)]
    one_gpu = [task("b1-0", "no-worker", {"job-big": 1})]
    cpu = [task("c-0", "queued", CPU)]
    unknown = [task("u-0", "no-worker", {"job-nope": 1})]  # a kind nobody has: no job
    state = scheduler([*pre, *big, *one_gpu, *cpu, *unknown])
    wanted, want = jobs(state, max_jobs=4, kinds=KINDS)
    assert wanted == {"cpu": 1, "gpu": 0, "pre": 5, "big": 5}
    # pre stops at its max_jobs; big: 5 GPUs, 2 a job; its min_jobs kept without tasks
    assert want == {"cpu": 1, "gpu": 0, "pre": 2, "big": 3}
    assert jobs(scheduler([]), kinds=KINDS)[1] == {"cpu": 0, "gpu": 0, "pre": 0, "big": 1}
    # one kind at its max_jobs leaves the others alone
    assert jobs(state, max_jobs=4, kinds={**KINDS, "pre": {"max_jobs": 0}})[1] == \
        {"cpu": 1, "gpu": 0, "pre": 0, "big": 3}


@pytest.mark.fast
def test_routing_sends_each_task_to_its_kinds_resource() -> None:
    kinds = kinds_of(resolve(kinds=KINDS))
    assert route({"job": "pre"}, kinds) == {"job-pre": 1}
    assert route({"job": "big", "GPU": 2}, kinds) == {"job-big": 2}
    assert route({"job": "gpu"}, kinds) == {"GPU": 1}
    assert route({"job": "cpu", "memory": 3}, kinds) == {"CPU": 1, "memory": 3}
    assert route({"GPU": 1}, kinds) == {"GPU": 1}
    assert route(None, kinds) == {"CPU": 1}
    assert route({"job": "nope"}, kinds) == {"job-nope": 1}  # waits: nobody offers it


# -- the same on a real scheduler ------------------------------------------------------------

GO = threading.Event()


def hold(i: int) -> int:
    GO.wait(60)
    return i


def inc(i: int) -> int:
    return i + 1


async def _real_scheduler_demand() -> tuple[dict[str, str], dict[str, float], dict[str, int]]:
    GO.clear()
    async with Scheduler(host="127.0.0.1", port=0, dashboard=False,
                         plugins=[RoutingPlugin()]) as s, \
            Worker(s.address, nthreads=1, resources={"CPU": 1}, name="cpu-0"), \
            Client(s.address, asynchronous=True) as client:
        try:
            # a CPU job's worker with one slot: one task runs, one waits on it for the slot
            running = [client.submit(hold, i, key=f"hold-{i}") for i in range(2)]
            # no GPU job yet: GPU tasks are no-worker
            gpus = [client.submit(inc, i, key=f"gpu-{i}", resources=GPU) for i in range(3)]
            # their inputs unfinished: waiting, not counted
            after = [client.submit(inc, gpus[0], key="after-gpu", resources=GPU),
                     client.submit(operator.add, running[0], gpus[1], key="after-both")]
            expected = {"hold-0": "processing", "hold-1": "processing", "gpu-0": "no-worker",
                        "gpu-1": "no-worker", "gpu-2": "no-worker", "after-gpu": "waiting",
                        "after-both": "waiting"}
            deadline = time.monotonic() + 30
            while True:
                states = {str(k): ts.state for k, ts in s.tasks.items()}
                if states == expected or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            opts = resolve(max_jobs=4, gpu={"max_jobs": 2})
            wanted = demand(s, slot_caps(opts))
            del after  # held until measured: a future dropped is forgotten
            return states, wanted, targets(wanted, opts)
        finally:
            GO.set()


def test_demand_on_a_real_scheduler() -> None:
    """Routed by RoutingPlugin, placed by distributed: what ``demand`` sees is as above."""
    states, wanted, want = asyncio.run(_real_scheduler_demand())
    assert states == {"hold-0": "processing", "hold-1": "processing", "gpu-0": "no-worker",
                      "gpu-1": "no-worker", "gpu-2": "no-worker", "after-gpu": "waiting",
                      "after-both": "waiting"}
    assert wanted == {"cpu": 2, "gpu": 3}
    assert want == {"cpu": 2, "gpu": 2}


async def _real_scheduler_kinds() -> tuple[int, str, dict[str, float], list[str]]:
    options = resolve(kinds=KINDS)
    async with Scheduler(host="127.0.0.1", port=0, dashboard=False,
                         plugins=[RoutingPlugin(kinds_of(options))]) as s, \
            Worker(s.address, nthreads=1, resources={"job-pre": 1}, name="pre-0"), \
            Client(s.address, asynchronous=True) as client:
        ran = client.submit(inc, 1, key="pre-task", resources={"job": "pre"})
        done = await ran  # held: its task stays in the scheduler
        waiting = client.submit(inc, 2, key="big-task", resources={"job": "big", "GPU": 2})
        deadline = time.monotonic() + 30
        while getattr(s.tasks.get("big-task"), "state", None) != "no-worker" \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        wanted = demand(s, slot_caps(options))
        restrictions = str(s.tasks["pre-task"].resource_restrictions)
        errors = []
        for asks in ({"t": {"job": "nope"}}, {"t": {"job": "pre", "GPU": 1}},
                     {"t": {"job": "big", "GPU": 3}}, {"t": {"GPU": 2}}):
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, check_resources, _SyncKinds(await client.run_on_scheduler(
                        _scheduler_kinds)), asks)
            except ConfigError as err:
                errors.append(str(err))
        del waiting, ran
        return done, restrictions, wanted, errors


class _SyncKinds:
    """A stand-in client whose scheduler holds ``kinds`` (check_resources asks it once)."""

    def __init__(self, kinds: Any) -> None:
        self.kinds = kinds

    def run_on_scheduler(self, fn: Any) -> Any:
        return self.kinds


def test_named_kinds_on_a_real_scheduler() -> None:
    """A task of kind ``pre`` runs on the worker offering ``job-pre``; one of kind ``big``
    waits and counts as ``big`` demand; the driver's check names unknown kinds and GPUs a
    kind's workers do not have."""
    done, restrictions, wanted, errors = asyncio.run(_real_scheduler_kinds())
    assert done == 2 and restrictions == "{'job-pre': 1}"
    assert wanted == {"cpu": 0, "gpu": 0, "pre": 0, "big": 2}
    assert errors == [
        "task 't' asks for the job kind 'nope', which this SLURM cluster does not have; known "
        "kinds: cpu, gpu, pre, big (named kinds are set in the settings dscheduler.slurm.kinds)",
        "task 't' asks for 1 GPU(s) of job kind 'pre', whose workers have 0: it would never "
        "run; raise kinds.pre.gpus or lower kinds.pre.processes",
        "task 't' asks for 3 GPU(s) of job kind 'big', whose workers have 2: it would never "
        "run; raise kinds.big.gpus or lower kinds.big.processes",
        "task 't' asks for 2 GPU(s) of job kind 'gpu', whose workers have 1: it would never "
        "run; raise gpu.gpus or lower gpu.processes",
    ]
