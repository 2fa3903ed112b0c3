"""Running one node on a worker: lease, record, call, persist (docs/design.md §5.4).

:func:`run_node` is what a ``{task}-{key16}`` Dask task calls. Under the lease
``locks/node-{key16}.lease`` (or the claim of a directory it made, §7) it returns ``"cached"``
for a succeeded record with this key (restoring link and index entry), marks a record left
``running`` failed (killed), then: an index entry dropping any stored result (fsynced) before
the ``.done`` link goes; the record ``running``; the call, in this worker or the env's Python,
and the value stored; the record ``succeeded``, then the link, then the index entry; or
``failed``/``cancelled`` with every attempt kept. Each record's ``seq`` is above its
predecessor's (:func:`~dscheduler.store.records.next_seq`); the index entry also returns to the
driver in the :data:`Outcome`, so its next plan sees it where the worker's writes are not yet
visible (NFS).

A failed attempt raises :class:`~dscheduler.errors.TaskError` so that Dask's ``retries=`` runs
the next one.  Tasks without an env run in the worker's thread (§5.5).
"""

from __future__ import annotations

import datetime as dt
import heapq
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from .. import settings
from ..envs import BuiltEnv, Env, build_env
from ..errors import LeaseError, TaskError, tail
from ..store import TASK_STORE, Lease, Store, atomic
from ..store.index import Entry
from ..store.lease import claim_ttl, claimed_at
from ..store.record import CANCELLED, FAILED, RUNNING, SUCCEEDED, Attempt, Record
from ..store.records import (
    clear_done,
    next_seq,
    read_node,
    record_text,
    write_record,
    write_record_text,
)
from ..store.values import load_value, remove_partials
from . import tracking
from .envcall import call_in_env
from .nodespec import NodeSpec
from .payload import Ref, load_function, map_nested

log = logging.getLogger("dscheduler.execute")

#: What a node's Dask task gives the driver: its state ("succeeded", or "cached"
#: when it was found finished) and its index entry as a segment line.  Two
#: strings, not a dict: the driver gathers one per node, and Dask moves a tuple
#: of strings about twice as fast as a small nested dict (docs/design.md §14.2).
Outcome = tuple[str, str]


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


def _hold(spec: NodeSpec) -> tuple[Lease, bool, Record | None]:
    """The node, held: its lease, whether this attempt made the node's directory, and
    the record stored there (None when this attempt made the directory).

    A node with a directory of its own (``tasks/{task}/{key16}``) is first claimed
    by making that directory: the one ``mkdir`` that makes it holds the node with no
    lease file (:meth:`Lease.claim`, docs/design.md §7).  Otherwise the lease file is
    taken; a holder on this host whose process died is broken at once (a worker killed
    with kill -9 leaves a lease whose process is gone; its task, which Dask
    reschedules at once, should not wait a TTL for it).  A directory found with
    neither lease nor record is another attempt's claim: waited for while it is
    younger than its ttl (:func:`~dscheduler.store.lease.claim_ttl`), broken after.
    """
    own = spec.paths.dir.name == spec.key16
    holder = {"owner": f"{spec.name} {_worker_address() or ''}".strip(),
              "details": {k: v for k, v in _slurm_fields().items() if v}}

    def abort() -> str | None:  # only while waiting: the path is made then
        return "its submission was cancelled" if spec.cancel_path.exists() else None

    while True:
        lease = spec.store.node_lease(spec.key16, **holder)
        if own and atomic.make_new_dir(spec.paths.dir):
            return lease.claim(time.time(), spec.paths.record.exists), True, None
        try:
            lease.acquire(abort=abort)
        except LeaseError as err:
            raise TaskError(f"{spec.name}: {err}") from None
        try:
            previous = read_node(spec.paths.record)
        except BaseException:
            lease.release()
            raise
        if previous is not None or not own or lease.broken_holder is not None:
            return lease, False, previous
        made = claimed_at(spec.paths.dir)
        if made is None or time.time() - made >= claim_ttl(lease.ttl):
            if made is not None:  # its first attempt died before it took its lease
                lease.broken_holder = {"claimed": made}
            return lease, False, None
        lease.release()  # another attempt's claim, young: let it take its lease
        if abort():
            raise TaskError(f"{spec.name}: gave up waiting for another attempt's claim "
                            f"on {spec.paths.dir}: its submission was cancelled")
        time.sleep(lease.poll)


def _earlier_attempts(spec: NodeSpec, previous: Record | None) -> list[Attempt] | None:
    """Attempts of the stored record with this key; None when it already succeeded."""
    if previous is None or previous.key != spec.key:
        return []
    if previous.state == SUCCEEDED and not spec.rerun:
        return None
    attempts = list(previous.attempts)
    if previous.state == RUNNING and attempts:
        last = attempts[-1]
        last.state, last.error = FAILED, _interrupted(last)
    return attempts


def _interrupted(attempt: Attempt) -> str:
    return (f"attempt interrupted: the process running it (host {attempt.host}, "
            f"pid {attempt.pid}, worker {attempt.worker}) died, or stalled past its "
            "lease, before finishing")


def _broken_attempt(attempts: list[Attempt], holder: dict[str, Any]) -> list[Attempt]:
    """``attempts`` and the attempt whose lease this one broke, unless listed already.

    A first attempt killed before its "running" record was written
    (:func:`_mark_running`) leaves only its lease, which names its host, pid
    and worker.
    """
    if "claimed" in holder:
        return [*attempts, _claim_attempt(len(attempts) + 1, float(holder["claimed"]))]
    if any(a.host == holder.get("host") and a.pid == holder.get("pid") for a in attempts):
        return attempts
    owner = str(holder.get("owner") or "").split(" ", 1)
    attempt = Attempt(attempt=len(attempts) + 1, state=FAILED, host=holder.get("host"),
                      pid=holder.get("pid"), worker=owner[1] if len(owner) > 1 else None,
                      slurm_job_id=holder.get("slurm_job_id"),
                      slurm_node=holder.get("slurm_node"), worker_log=holder.get("worker_log"))
    attempt.error = _interrupted(attempt)
    return [*attempts, attempt]


def _claim_attempt(number: int, claimed: float) -> Attempt:
    """The attempt that made the node's directory at ``claimed`` and left neither lease
    nor record: killed or stopped within its first ``task.running_record_after`` s."""
    when = dt.datetime.fromtimestamp(claimed, dt.UTC).isoformat(timespec="milliseconds")
    return Attempt(attempt=number, state=FAILED, start=when, error=(
        f"attempt interrupted: an attempt made the node's directory at {when} and left "
        "neither lease nor record (its process died, or stalled, within its first "
        f"{settings.get('task.running_record_after')} s); where it ran is not known"))


def _slurm_fields() -> dict[str, str | None]:
    """On a SLURM worker (docs/design.md §13.4): its job, the job's node and its log file."""
    return {"slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "slurm_node": os.environ.get("SLURMD_NODENAME"),
            "worker_log": os.environ.get("DSCHEDULER_WORKER_LOG")}


def _start_attempt(spec: NodeSpec, attempts: list[Attempt], previous: Record | None = None
                   ) -> tuple[Record, Attempt]:
    """The record "running" with a new attempt (:func:`_mark_running` writes it)."""
    slurm = _slurm_fields()
    attempt = Attempt(attempt=len(attempts) + 1, state=RUNNING, host=socket.gethostname(),
                      pid=os.getpid(), worker=_worker_address(),
                      slurm_job_id=slurm["slurm_job_id"], slurm_node=slurm["slurm_node"],
                      worker_log=slurm["worker_log"], submission=spec.submission, start=_now(),
                      log=str(spec.paths.log) if spec.env_id is not None else None)
    record = Record(task=spec.task, version=spec.version, key=spec.key, name=spec.name,
                    env_id=spec.env_id, run_id=spec.run_id, case=spec.case,
                    upstream=spec.upstream, state=RUNNING, attempts=[*attempts, attempt])
    record.describe(spec.info)  # label, config, env, call: what the node is (graph/calls.py)
    tracking.begin(spec.paths)  # ds.log_* and ds.output of this attempt (run/tracking.py)
    _drop_result(spec, record, previous)
    return record, attempt


def _mark_running(spec: NodeSpec, record: Record, first: bool, announce: bool,
                  lease: Lease) -> _Later:
    """Write the record "running": the marker a killed attempt leaves; with
    ``announce``, its index entry too (for listings; a dropped result's entry was
    appended already, before its link went: :func:`_drop_result`).

    The first attempt of a node without an env writes it only once it has run
    ``task.running_record_after`` seconds: a tiny task then writes its record
    once, not twice (docs/design.md §14).  One killed in that first moment is
    still listed by the next attempt, from the lease or the claimed directory it
    leaves (:func:`_broken_attempt`); until then the node has no record.  Every
    other attempt writes it at once, before any output moves: a stored
    record must never say "succeeded" over another attempt's value.
    """
    def write() -> None:
        # Nothing changes the record while the task's function runs, and the attempt
        # cancels this call (waiting for it, if it runs) before it goes on.
        lease.hold_file()  # a claim's lease file comes with its first marker
        lease.check()  # deferred: this process may have been stopped meanwhile
        write_record_text(spec.paths, record_text(record), final=False)
        if announce:
            spec.store.index.note(spec.paths, record)

    delay = float(settings.get("task.running_record_after")) if first and spec.env is None \
        else 0.0
    if delay <= 0:
        write()
        return _Later(0.0, lambda: None, cancelled=True)
    return _later(delay, write)


@dataclass(order=True)
class _Later:
    """A call :func:`_later` makes after a delay, unless :meth:`cancel` came first."""

    when: float
    call: Callable[[], None] = field(compare=False)
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        """Prevent the call; if it is running, return when it has finished."""
        with self.lock:
            self.cancelled = True


_queue: list[_Later] = []
_queue_cond = threading.Condition()
_queue_thread: dict[int, threading.Thread] = {}  # by pid: a forked child starts its own


def _later(delay: float, call: Callable[[], None]) -> _Later:
    """Call ``call`` in ``delay`` seconds, on one thread per process (one thread per
    task would cost a tiny task more than the write it saves)."""
    item = _Later(time.monotonic() + delay, call)
    with _queue_cond:
        if os.getpid() not in _queue_thread:
            _queue_thread[os.getpid()] = threading.Thread(
                target=_run_later, name="dscheduler-later", daemon=True)
            _queue_thread[os.getpid()].start()
        heapq.heappush(_queue, item)
        if _queue[0] is item:
            _queue_cond.notify()
    return item


#: Seconds at least between the timer thread's wakes: a tiny task's deferred write is
#: cancelled long before it is due, and a wake per task (thousands a second) would cost
#: the worker's other threads the GIL; a write due meanwhile waits at most this long.
_LATER_GAP = 0.05


def _run_later() -> None:
    while True:
        with _queue_cond:
            while not _queue:
                _queue_cond.wait()
            wait = _queue[0].when - time.monotonic()
            if wait > 0:
                _queue_cond.wait(max(wait, _LATER_GAP))
                continue
            now, due = time.monotonic(), []
            while _queue and _queue[0].when <= now:
                due.append(heapq.heappop(_queue))
        for item in due:
            with item.lock:
                if not item.cancelled:
                    try:
                        item.call()
                    except Exception:  # a marker that could not be written: the attempt goes on
                        log.warning("deferred write failed", exc_info=True)
                item.cancelled = True


def _drop_result(spec: NodeSpec, record: Record, previous: Record | None) -> None:
    """Before an attempt: the stored result, if any, is no longer this node's (a
    rerun, or another key at this path since a version bump or a changed input).

    The index hears of a dropped result first, durably, then the .done link
    goes, before any output moves (docs/design.md §14).  A node never run
    before has no link, result or partial files: nothing is touched, and its
    "running" entry goes with its running record (:func:`_mark_running`).
    """
    record.seq = next_seq(previous)
    if previous is not None and previous.state == SUCCEEDED:
        spec.store.index.undone(spec.paths, record)
    elif previous is not None:
        clear_done(spec.paths)  # a link a damaged or edited record may have left
    if previous is not None:
        remove_partials(spec.paths)


def _load_arguments(spec: NodeSpec) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    fn = load_function(spec.function)
    args, kwargs = cloudpickle.loads(spec.payload)
    cache: dict[str, Any] = {}

    def resolve(value: Any) -> Any:
        if not isinstance(value, Ref):
            return value
        if value.key not in cache:
            record = read_node(value.paths.record) or Record()
            if record.key != value.key or record.state != SUCCEEDED:
                raise TaskError(
                    f"{spec.name}: upstream {value.name} has no succeeded record at "
                    f"{value.paths.record}; was it removed while the graph ran? (after "
                    "removing results by hand, run `dscheduler index rebuild`)"
                )
            cache[value.key] = load_value(value.paths, record.output, load=True)
        return cache[value.key]

    return fn, map_nested(args, resolve), map_nested(kwargs, resolve)


#: Seconds a worker process believes a submission's missing cancel file before it
#: looks again: a tiny task's stat per task becomes one per second per worker.
#: ``Handle.cancel`` also cancels the futures, so Dask starts no task that has not
#: begun; this check only closes the race with tasks already handed to a worker.
CANCEL_CHECK_EVERY = 1.0
_not_cancelled: dict[str, float] = {}  # submission -> when its cancel file was missing


def _cancelled(spec: NodeSpec) -> bool:
    """Whether ``spec``'s submission was cancelled, as of at most
    :data:`CANCEL_CHECK_EVERY` seconds ago (a missing file is remembered per process)."""
    now = time.monotonic()
    if now - _not_cancelled.get(spec.submission, -CANCEL_CHECK_EVERY) < CANCEL_CHECK_EVERY:
        return False
    if spec.cancel_path.exists():
        return True
    if len(_not_cancelled) > 64:  # one per submission: forget old ones
        _not_cancelled.clear()
    _not_cancelled[spec.submission] = now
    return False


def _call(spec: NodeSpec, built: BuiltEnv | None, attempt: Attempt) -> Any:
    if _cancelled(spec):
        raise TaskError(f"{spec.name}: cancelled before it started")
    fn, args, kwargs = _load_arguments(spec)
    if spec.env is None:
        return fn(*args, **kwargs)
    if built is None:  # published before planning: no build task ran
        built = build_env(spec.store, spec.env)
    return call_in_env(spec, built, attempt, fn, args, kwargs)


def _succeed(spec: NodeSpec, record: Record, attempt: Attempt, output: dict[str, Any],
             started: float) -> Entry:
    attempt.state, attempt.end = SUCCEEDED, _now()
    attempt.seconds = round(time.monotonic() - started, 3)
    record.state, record.output = SUCCEEDED, output
    tracking.end(record, succeeded=True)
    record.seq = next_seq(record)
    write_record(spec.paths, record, announce=False)  # after the value
    return spec.store.index.done(spec.paths, record)  # the link, then the index entry


def _fail(spec: NodeSpec, record: Record, attempt: Attempt, err: BaseException,
          started: float) -> None:
    attempt.state = CANCELLED if spec.cancel_path.exists() else FAILED
    attempt.end = _now()
    attempt.seconds = round(time.monotonic() - started, 3)
    # call_in_env may have said already what went wrong in the env's process
    attempt.error = attempt.error or f"{type(err).__name__}: {err}"
    attempt.traceback = attempt.traceback or _user_traceback(err)
    if attempt.log is not None:
        attempt.log_tail = _log_tail(spec)
    record.state = attempt.state
    tracking.end(record, succeeded=False)
    record.seq = next_seq(record)
    write_record(spec.paths, record)  # and its index entry


# -- running -----------------------------------------------------------------------


def run_node(spec: NodeSpec, built: BuiltEnv | None = None) -> Outcome:
    """Run ``spec`` once under its lease; its :data:`Outcome` for the driver."""
    lease, made, previous = _hold(spec)
    try:
        attempts = _earlier_attempts(spec, previous)
        if attempts is not None and lease.broken_holder is not None:
            attempts = _broken_attempt(attempts, lease.broken_holder)
        if attempts is None and previous is not None:
            # Finished before (by another driver, or by one that crashed before its
            # index entry was written): restore the link and the entry.
            entry = spec.store.index.done(spec.paths, previous, seq=next_seq(previous))
            return _stored_state(spec, previous), entry.text()
        record, attempt = _start_attempt(spec, attempts or [], previous)
        # No record and no lease broken: no earlier attempt left anything here.
        fresh = previous is None and lease.broken_holder is None
        if previous is None and not fresh and not made:
            remove_partials(spec.paths)  # of a first attempt killed before its record
        running = _mark_running(spec, record, first=fresh,
                                announce=previous is None or previous.state != SUCCEEDED,
                                lease=lease)
        started = time.monotonic()
        try:
            value = _call(spec, built, attempt)
            lease.check()  # never store a value under a lease that was broken meanwhile
            output = tracking.save(spec.paths, value, fresh=fresh, here=spec.env is None,
                                   new_dir=made)
            lease.check()  # nor commit under one (docs/design.md §7: fencing)
            running.cancel()
        except BaseException as err:
            running.cancel()
            if isinstance(err, Exception) and _lost(lease):  # the node's record is not ours
                raise TaskError(f"{spec.name}: {err}") from None
            _fail(spec, record, attempt, err, started)
            if isinstance(err, Exception):  # Dask retries on it; the record has the details
                raise TaskError(_failure_message(spec, attempt), record.to_json()) from None
            raise
        entry = _succeed(spec, record, attempt, output, started)
        return "succeeded", entry.text()
    finally:
        lease.release()


def _lost(lease: Lease) -> bool:
    """Whether another attempt may hold the node now (free while the lease is fresh)."""
    try:
        lease.check()
    except LeaseError:
        return True
    return False


def _stored_state(spec: NodeSpec, record: Record) -> str:
    """"succeeded" when this submission's own attempt made the stored result, else "cached".

    Dask runs a task again when the worker holding its outcome left (a
    worker retiring at its lifetime with nowhere to move its data); the
    rerun finds the result its first run stored.
    """
    return SUCCEEDED if spec.submission and record.last.submission == spec.submission \
        else "cached"


def _user_traceback(err: BaseException) -> str:
    """The traceback without dscheduler's own frames above the task's function."""
    tb = err.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    if tb is None or isinstance(err, TaskError):
        return ""  # our own error (timeout, missing result): its message says it all
    return "".join(traceback.format_exception(type(err), err, tb))


def _failure_message(spec: NodeSpec, attempt: Attempt) -> str:
    parts = [f"{spec.name} failed (attempt {attempt.attempt}): {attempt.error}"]
    if attempt.traceback:
        parts.append(str(attempt.traceback).rstrip())
    if attempt.log:
        parts.append(f"log: {attempt.log}")
    return "\n".join(parts)


# -- the Dask task functions ---------------------------------------------------------


def node_task(spec: NodeSpec, built: BuiltEnv | None = None, *upstream: Any) -> Outcome:
    """The function behind a ``{task}-{key16}`` key; upstream outcomes only order it."""
    running = TASK_STORE.set(spec.store)  # ds.checkpoint(ref) in the task: this store
    try:
        return run_node(spec, built)
    finally:
        TASK_STORE.reset(running)


def build_task(store: Store, env: Env) -> BuiltEnv:
    """The function behind a ``build_env-{env_id}`` key."""
    return build_env(store, env)
