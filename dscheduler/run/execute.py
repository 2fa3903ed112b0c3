"""Running one node on a worker: lease, record, call, persist (docs/design.md §5.4).

:func:`run_node` is what a ``{task}-{key16}`` Dask task calls::

    take the lease locks/node-{key16}.lease      (_take_lease)
    a succeeded record with this key?  -> "cached"; a record left "running":
      its attempt was killed, mark it failed      (_earlier_attempts)
    write the record "running" with this attempt, drop the .done link
                                                  (_start_attempt)
    run the function, in this worker or in its env's Python; store the value
                                                  (_call, values.save_value)
    write the record "succeeded", then the .done link   (_succeed)
      or "failed"/"cancelled", every attempt kept       (_fail)

A failed attempt raises :class:`~dscheduler.errors.TaskError` so that Dask's
``retries=`` runs the next one; the record gains one attempt per try.  Tasks
without an env run in the worker's thread: their output is not captured and
a time limit cannot be enforced there (Python cannot kill a thread); give
the task an env when it needs either.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
import traceback
from typing import Any

import cloudpickle

from .. import settings
from ..envs import BuiltEnv, Env, build_env
from ..errors import LeaseError, TaskError, tail
from ..store import Lease, Store
from ..store.records import clear_done, read_record, set_done, write_record
from ..store.values import load_value, remove_partials
from . import tracking
from .envcall import call_in_env
from .payload import Ref, load_function, map_nested
from .spec import NodeSpec


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _worker_address() -> str | None:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return None


def _log_tail(spec: NodeSpec, lines: int = 30) -> str:
    try:
        with open(spec.paths.log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 16384))
            return tail(f.read().decode(errors="replace"), lines)
    except OSError:
        return ""


# -- the steps -------------------------------------------------------------------------


def _take_lease(spec: NodeSpec) -> Lease:
    """The node's lease; a holder on this host whose process died is broken at once.

    A worker killed with kill -9 leaves a lease whose process is gone; its
    task, which Dask reschedules at once, should not wait a TTL for it.
    """
    lease = spec.store.lease(f"node-{spec.key16}", ttl=settings.get("task.lease_ttl"),
                             break_dead_local=True,
                             owner=f"{spec.name} {_worker_address() or ''}".strip())
    cancelled = spec.cancel_path

    def abort() -> str | None:
        return "its submission was cancelled" if cancelled.exists() else None

    try:
        return lease.acquire(abort=abort)
    except LeaseError as err:
        raise TaskError(f"{spec.name}: {err}") from None


def _earlier_attempts(spec: NodeSpec) -> list[dict[str, Any]] | None:
    """Attempts of the stored record with this key; None when it already succeeded."""
    record = read_record(spec.paths.record)
    if record is None or record.get("key") != spec.key:
        return []
    if record.get("state") == "succeeded" and not spec.rerun:
        return None
    attempts = list(record.get("attempts", []))
    if record.get("state") == "running" and attempts:
        last = attempts[-1]
        last.update(
            state="failed",
            error=(f"attempt interrupted: the process running it (host {last.get('host')}, "
                   f"pid {last.get('pid')}, worker {last.get('worker')}) died before "
                   "finishing"),
        )
        last.setdefault("end", None)
    return attempts


def _start_attempt(spec: NodeSpec, attempts: list[dict[str, Any]]
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the record "running" with a new attempt: the marker a killed attempt leaves."""
    attempt: dict[str, Any] = {
        "attempt": len(attempts) + 1,
        "state": "running",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "worker": _worker_address(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        # SLURM workers (docs/design.md §13.4): the job's node and its log file
        "slurm_node": os.environ.get("SLURMD_NODENAME"),
        "worker_log": os.environ.get("DSCHEDULER_WORKER_LOG"),
        "submission": spec.submission,
        "start": _now(),
    }
    if spec.env_id is not None:
        attempt["log"] = str(spec.paths.log)
    record = {
        "task": spec.task, "version": spec.version, "key": spec.key, "name": spec.name,
        "env_id": spec.env_id, "run_id": spec.run_id, "case": spec.case,
        "upstream": spec.upstream, "state": "running", "attempts": [*attempts, attempt],
    }
    record.update(spec.info)  # label, config, env, call: what the node is (graph/calls.py)
    tracking.begin(spec.paths)  # ds.log_* and ds.output of this attempt (run/tracking.py)
    # A new key at this path (version bump, changed input): the old result is
    # no longer this node's.  Drop its .done link before any output moves.
    clear_done(spec.paths)
    write_record(spec.paths, record, final=False)  # lives only while the attempt runs
    remove_partials(spec.paths)
    return record, attempt


def _load_arguments(spec: NodeSpec) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    fn = load_function(spec.function)
    args, kwargs = cloudpickle.loads(spec.payload)
    cache: dict[str, Any] = {}

    def resolve(value: Any) -> Any:
        if not isinstance(value, Ref):
            return value
        if value.key not in cache:
            record = read_record(value.paths.record) or {}
            if record.get("key") != value.key or record.get("state") != "succeeded":
                raise TaskError(
                    f"{spec.name}: upstream {value.name} has no succeeded record at "
                    f"{value.paths.record}; was it removed while the graph ran?"
                )
            cache[value.key] = load_value(value.paths, record.get("output"), load=True)
        return cache[value.key]

    return fn, map_nested(args, resolve), map_nested(kwargs, resolve)


def _call(spec: NodeSpec, built: BuiltEnv | None, attempt: dict[str, Any]) -> Any:
    if spec.cancel_path.exists():
        raise TaskError(f"{spec.name}: cancelled before it started")
    fn, args, kwargs = _load_arguments(spec)
    if spec.env is None:
        return fn(*args, **kwargs)
    if built is None:  # published before planning: no build task ran
        built = build_env(spec.store, spec.env)
    return call_in_env(spec, built, attempt, fn, args, kwargs)


def _succeed(spec: NodeSpec, record: dict[str, Any], attempt: dict[str, Any],
             output: dict[str, Any], started: float) -> None:
    attempt.update(state="succeeded", end=_now(), seconds=round(time.monotonic() - started, 3))
    record.update(state="succeeded", output=output)
    tracking.end(record, succeeded=True)
    write_record(spec.paths, record)  # after the value
    set_done(spec.paths, spec.key)  # after the record


def _fail(spec: NodeSpec, record: dict[str, Any], attempt: dict[str, Any],
          err: BaseException, started: float) -> None:
    attempt.update(
        state="cancelled" if spec.cancel_path.exists() else "failed",
        end=_now(),
        seconds=round(time.monotonic() - started, 3),
        error=attempt.get("error") or f"{type(err).__name__}: {err}",
        traceback=attempt.get("traceback") or _user_traceback(err),
    )
    if "log" in attempt:
        attempt["log_tail"] = _log_tail(spec)
    record["state"] = attempt["state"]
    tracking.end(record, succeeded=False)
    write_record(spec.paths, record)


# -- running -----------------------------------------------------------------------


def run_node(spec: NodeSpec, built: BuiltEnv | None = None) -> dict[str, Any]:
    """Run ``spec`` once under its lease; the outcome (small) for the driver."""
    lease = _take_lease(spec)
    try:
        attempts = _earlier_attempts(spec)
        if attempts is None:
            set_done(spec.paths, spec.key)  # heal a missing link
            return {"name": spec.name, "state": _stored_state(spec), "attempts": 0}
        record, attempt = _start_attempt(spec, attempts)
        started = time.monotonic()
        try:
            output = tracking.save(spec.paths, _call(spec, built, attempt))
            lease.check()  # never commit under a lease that was broken meanwhile
        except BaseException as err:
            _fail(spec, record, attempt, err, started)
            if isinstance(err, Exception):  # Dask retries on it; the record has the details
                raise TaskError(_failure_message(spec, attempt), record) from None
            raise
        _succeed(spec, record, attempt, output, started)
        return {"name": spec.name, "state": "succeeded", "attempts": len(record["attempts"])}
    finally:
        lease.release()


def _stored_state(spec: NodeSpec) -> str:
    """"succeeded" when this submission's own attempt made the stored result, else "cached".

    Dask runs a task again when the worker holding its outcome left (a
    worker retiring at its lifetime with nowhere to move its data); the
    rerun finds the result its first run stored.
    """
    record = read_record(spec.paths.record) or {}
    last = (record.get("attempts") or [{}])[-1]
    return "succeeded" if spec.submission and last.get("submission") == spec.submission \
        else "cached"


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


# -- the Dask task functions ---------------------------------------------------------


def node_task(spec: NodeSpec, built: BuiltEnv | None = None, *upstream: Any) -> dict[str, Any]:
    """The function behind a ``{task}-{key16}`` key; upstream outcomes only order it."""
    return run_node(spec, built)


def build_task(store: Store, env: Env) -> BuiltEnv:
    """The function behind a ``build_env-{env_id}`` key."""
    return build_env(store, env)
