"""Running one node on a worker: lease, record, call, persist (DESIGN section 5).

:func:`run_node` is what a ``{task}-{key16}`` Dask task calls::

    take the lease locks/node-{key16}.lease
      (a holder on this host whose process is gone is broken at once; a
       holder elsewhere after its TTL, see dscheduler.lease)
    a succeeded record with this key?  -> return it (another driver did it)
    a record left "running"?           -> its attempt was killed: mark it failed
    write the record: state "running", this attempt appended   (the marker a
      killed attempt leaves for the next one)
    run the function:
      no env   -> in this worker process
      an env   -> mount it; ENV/bin/python -m _dscheduler_runner PAYLOAD RESULT
                  (cloudpickle payload; stdout+stderr to logs/{task}.log;
                   own process group, killed on timeout or cancellation)
    persist the value (dscheduler.results), then the record (state
    "succeeded" or "failed", every attempt kept), then the .done link.

A failed attempt raises :class:`~dscheduler.errors.TaskError` so that Dask's
``retries=`` runs the next one; the record gains one attempt per try.

Cost per tiny task matters (thousands per graph): node leases share one
heartbeat thread per process (:mod:`dscheduler.lease`), records are compact JSON
and fsynced only when the setting ``task.fsync`` says so, the ``.done`` link
is created in place.  See ``bench/throughput.py``.

Functions and arguments travel as cloudpickles (:mod:`dscheduler.payload`);
a task with an env runs in a subprocess of the env's Python
(:mod:`dscheduler.envcall`).  Tasks without an
env run in the worker's thread: their output is not captured and a time
limit cannot be enforced there (Python cannot kill a thread); give the task
an env when it needs either.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle

from . import atomic, settings
from .env import Env
from .envcall import call_in_env
from .errors import TaskError
from .lease import Lease
from .payload import FunctionRef, Ref, map_nested
from .results import load_value, remove_partials, save_value
from .store import NodePaths, Store

# -- what travels to the worker ------------------------------------------------------



@dataclass
class NodeSpec:
    """Everything a worker needs to run one node; plain data plus one pickle."""

    name: str  # the Dask key, f"{task}-{key16}"
    key: str
    task: str
    version: str
    store: Store
    paths: NodePaths
    payload: bytes  # cloudpickle of (function, args, kwargs) with Refs for upstream nodes
    env: Env | None
    env_id: str | None
    run_id: str | None = None
    case: str | None = None
    upstream: list[str] = field(default_factory=list)  # full keys
    timeout: float | None = None
    submission: str = ""  # id of the ds.compute/ds.submit call, for cancellation
    rerun: bool = False  # forced or cache=False: run even if a success is stored

    @property
    def key16(self) -> str:
        return self.key[:16]

    @property
    def cancel_path(self) -> Path:
        return cancel_path(self.store, self.submission)


def cancel_path(store: Store, submission: str) -> Path:
    """The file whose existence cancels every task of one submission."""
    return store.locks_dir / f"cancel-{submission}"


# -- records -----------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _worker_address() -> str | None:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return None


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 16384))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _take_lease(spec: NodeSpec) -> Lease:
    """The node's lease; a holder on this host whose process died is broken at once.

    A worker killed with kill -9 leaves a lease whose pid no longer exists,
    and its task, which Dask reschedules at once, should not wait a TTL for
    it (``break_dead_local``); a holder on another host is broken after its TTL.
    """
    lease = Lease(spec.store.lease(f"node-{spec.key16}").path,
                  ttl=settings.get("task.lease_ttl"), break_dead_local=True,
                  owner=f"{spec.name} {_worker_address() or ''}".strip())
    while not lease.try_acquire():
        if spec.cancel_path.exists():
            raise TaskError(f"{spec.name}: cancelled while waiting for its lease")
        time.sleep(lease.poll)
    return lease


def _base_record(spec: NodeSpec) -> dict[str, Any]:
    return {
        "task": spec.task,
        "version": spec.version,
        "key": spec.key,
        "name": spec.name,
        "env_id": spec.env_id,
        "run_id": spec.run_id,
        "case": spec.case,
        "upstream": spec.upstream,
        "state": "running",
        "attempts": [],
    }


def _write_record(paths: NodePaths, record: dict[str, Any], final: bool = True) -> None:
    """Write the record atomically; fsync only when the setting task.fsync says so.

    A record is rewritten two or three times per task; concurrent fsyncs
    serialise on the filesystem journal and halved small-task throughput
    here.  Without fsync a record is still never seen half-written; only a
    machine crash may lose it (Zarr outputs are not fsynced by zarr either).
    Records are compact JSON: indented JSON goes through json's pure-Python
    encoder, 5x slower, a third of a tiny task's cost on the worker
    (``python -m json.tool`` or ``dscheduler status`` show them to people).
    """
    text = json.dumps(record, separators=(",", ":"), default=str)
    atomic.write_bytes(paths.record, text.encode(),
                       durable=bool(final and settings.get("task.fsync")))


def _set_done(paths: NodePaths, key: str) -> None:
    """Point ``.{task}.done`` at ``key``; creating a symlink is atomic by itself.

    Only an existing link (healing after a crash) needs one made aside and
    renamed over it.
    """
    done = paths.done
    try:
        os.symlink(key, done)
    except FileExistsError:
        tmp = atomic.temp_sibling(done)
        os.symlink(key, tmp)
        os.replace(tmp, done)


# -- running -----------------------------------------------------------------------


def run_node(spec: NodeSpec, built: Any = None) -> dict[str, Any]:
    """Run ``spec`` once under its lease; the outcome (small) for the driver."""
    paths = spec.paths
    lease = _take_lease(spec)
    try:
        record = atomic.read_json(paths.record)
        if isinstance(record, dict) and record.get("key") == spec.key:
            if record.get("state") == "succeeded" and not spec.rerun:
                _set_done(paths, spec.key)  # heal a missing index entry
                return {"name": spec.name, "state": "cached", "attempts": 0}
            attempts = list(record.get("attempts", []))
            if record.get("state") == "running" and attempts:
                _mark_interrupted(attempts[-1])
        else:
            attempts = []
        record = _base_record(spec)
        attempt: dict[str, Any] = {
            "attempt": len(attempts) + 1,
            "state": "running",
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "worker": _worker_address(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "start": _now(),
        }
        if spec.env_id is not None:
            attempt["log"] = str(paths.log)
        record["attempts"] = [*attempts, attempt]
        # A new key at this path (version bump, changed input): the old result
        # is no longer this node's.  Drop its index entry before any output moves.
        paths.done.unlink(missing_ok=True)
        _write_record(paths, record, final=False)  # lives only while the attempt runs
        remove_partials(paths)
        started = time.monotonic()
        try:
            if spec.cancel_path.exists():
                raise TaskError(f"{spec.name}: cancelled before it started")
            value = _call(spec, built, attempt)
            output = save_value(paths, value)
            lease.check()  # never commit under a lease that was broken meanwhile
        except BaseException as err:
            cancelled = spec.cancel_path.exists()
            attempt.update(
                state="cancelled" if cancelled else "failed",
                end=_now(),
                seconds=round(time.monotonic() - started, 3),
                error=attempt.get("error") or f"{type(err).__name__}: {err}",
                traceback=attempt.get("traceback") or _user_traceback(err),
            )
            if "log" in attempt:
                attempt["log_tail"] = _log_tail(paths.log)
            record["state"] = attempt["state"]
            _write_record(paths, record)
            if isinstance(err, Exception):  # Dask retries on it; the record has the details
                raise TaskError(_failure_message(spec, attempt), record) from None
            raise
        attempt.update(state="succeeded", end=_now(),
                       seconds=round(time.monotonic() - started, 3))
        record.update(state="succeeded", output=output)
        _write_record(paths, record)
        _set_done(paths, spec.key)
        return {"name": spec.name, "state": "succeeded", "attempts": len(record["attempts"])}
    finally:
        lease.release()


def _mark_interrupted(attempt: dict[str, Any]) -> None:
    attempt.update(
        state="failed",
        error=(
            f"attempt interrupted: the process running it (host {attempt.get('host')}, "
            f"pid {attempt.get('pid')}, worker {attempt.get('worker')}) died before finishing"
        ),
    )
    attempt.setdefault("end", None)


def _user_traceback(err: BaseException) -> str:
    """The traceback without dscheduler's own frames above the task's function."""
    tb = err.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    if tb is None or isinstance(err, TaskError):
        return ""  # our own error (timeout, missing result): its message says it all
    return "".join(traceback.format_exception(type(err), err, tb))


def _failure_message(spec: NodeSpec, attempt: dict[str, Any]) -> str:
    parts = [f"{spec.name} failed (attempt {attempt['attempt']}): {attempt.get('error')}"]
    if attempt.get("traceback"):
        parts.append(str(attempt["traceback"]).rstrip())
    if attempt.get("log"):
        parts.append(f"log: {attempt['log']}")
    return "\n".join(parts)


def _load_arguments(spec: NodeSpec) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    fn, args, kwargs = cloudpickle.loads(spec.payload)
    if isinstance(fn, FunctionRef):
        fn = fn.resolve()
    cache: dict[str, Any] = {}

    def resolve(value: Any) -> Any:
        if not isinstance(value, Ref):
            return value
        if value.key not in cache:
            record = atomic.read_json(value.paths.record) or {}
            if record.get("key") != value.key or record.get("state") != "succeeded":
                raise TaskError(
                    f"{spec.name}: upstream {value.name} has no succeeded record at "
                    f"{value.paths.record}; was it removed while the graph ran?"
                )
            cache[value.key] = load_value(value.paths, record.get("output"), load=True)
        return cache[value.key]

    return fn, map_nested(args, resolve), map_nested(kwargs, resolve)


def _call(spec: NodeSpec, built: Any, attempt: dict[str, Any]) -> Any:
    fn, args, kwargs = _load_arguments(spec)
    if spec.env is None:
        return fn(*args, **kwargs)
    return call_in_env(spec, built, attempt, fn, args, kwargs)


# -- the Dask task functions ---------------------------------------------------------


def node_task(spec: NodeSpec, built: Any = None, *upstream: Any) -> dict[str, Any]:
    """The function behind a ``{task}-{key16}`` key; upstream outcomes only order it."""
    return run_node(spec, built)


def build_task(store: Store, env: Env) -> Any:
    """The function behind a ``build_env-{env_id}`` key."""
    from .build import build_env

    return build_env(store, env)
