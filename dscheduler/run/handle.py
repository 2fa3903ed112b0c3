"""What a submitted graph did: :class:`Handle` while it runs, :class:`Results` after.

Per-node states, in graph order: ``succeeded`` (ran now), ``cached``
(stored before, or finished by another driver meanwhile), ``failed`` (its
own attempts failed), ``blocked`` (an upstream node or its env build
failed; Dask never ran it), ``cancelled``.  Failure and blocking are told
apart by the graph, not by the exception Dask propagates, so the
distinction survives Dask's error propagation.  The store has the last word:
a node whose future erred (Dask gave up after losing workers, KilledWorker)
but whose record says it succeeded with its key is reported so (§5.6).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

from ..errors import StoreError, TaskError
from ..graph import Node, Plan, html
from ..store import atomic
from ..store.record import SUCCEEDED, Record
from ..store.records import read_node
from ..store.values import load_value
from . import progress as progress_bar
from .clusters import is_local
from .dashboard import links

STATES = ("succeeded", "cached", "failed", "blocked", "cancelled")

log = logging.getLogger("dscheduler.results")


class Results:
    """What a ``ds.compute`` did: per-node state, values, records and errors."""

    def __init__(self, p: Plan, states: dict[str, str], errors: dict[str, str],
                 envs: dict[str, str], env_errors: dict[str, str],
                 dashboard: str | None = None) -> None:
        self.plan = p
        self.store = p.store
        self.states = states  # node key -> state
        self.errors = errors  # node key -> error text (failed and blocked nodes)
        self.envs = envs  # env_id -> built | reused | failed | cancelled
        self.env_errors = env_errors
        self.dashboard = dashboard  # the scheduler's dashboard link; None: no cluster used
        self.notes: list[str] = []  # sentences for the summary (dscheduler.run.compute)
        self._by_key = {n.key: n for n in p.nodes}

    def _node(self, node: Node | str) -> Node:
        key = node.key if isinstance(node, Node) else node
        found = self._by_key.get(key) or next(
            (n for n in self.plan.nodes if n.name == key), None)
        if found is None:
            raise KeyError(f"{node!r} is not a node of this graph")
        return found

    def state(self, node: Node | str) -> str:
        return self.states[self._node(node).key]

    def record(self, node: Node | str) -> dict[str, Any] | None:
        """The node's stored record, as its JSON reads (docs/design.md §3, §11); a
        StoreError naming the file when it is damaged."""
        stored = self._stored(node)
        return stored.to_json() if stored is not None else None

    def _stored(self, node: Node | str) -> Record | None:
        """The node's stored record as a :class:`~dscheduler.store.record.Record`."""
        return read_node(self._node(node).paths(self.store).record)

    def value(self, node: Node | str) -> Any:
        """The stored value (Zarr results open lazily); a StoreError when it is damaged."""
        found = self._node(node)
        state = self.states[found.key]
        record = self._stored(found)
        if state not in ("succeeded", "cached"):
            raise TaskError(f"{found.name} has no value: it {state}",
                            record.to_json() if record is not None else None)
        paths = found.paths(self.store)
        return load_value(paths, record.output if record is not None else None)

    def __getitem__(self, node: Node | str) -> Any:
        return self.value(node)

    def values(self) -> list[Any]:
        """Values of the nodes passed to compute, in order."""
        return [self.value(n) for n in self.plan.targets]

    def nodes(self, state: str) -> list[Node]:
        return [n for n in self.plan.nodes if self.states[n.key] == state]

    @property
    def failed(self) -> list[Node]:
        return self.nodes("failed")

    @property
    def blocked(self) -> list[Node]:
        return self.nodes("blocked")

    def counts(self) -> dict[str, int]:
        c = Counter(self.states.values())
        return {s: c[s] for s in STATES if c[s]}

    @property
    def ok(self) -> bool:
        return all(s in ("succeeded", "cached") for s in self.states.values())

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items()) or "empty"
        builds = Counter(self.envs.values())
        envs = ", ".join(f"{n} {s}" for s, n in sorted(builds.items()))
        return f"<Results {counts}{'; envs: ' + envs if envs else ''}>"

    def env_use(self) -> dict[str, list[str]]:
        """env_ids by what this call did with them: built, reused, failed, cancelled.

        "reused": published before (by an earlier run, or another driver
        meanwhile) and used by a node that ran now.
        """
        out: dict[str, list[str]] = {"built": [], "reused": [], "failed": [], "cancelled": []}
        for env_id, state in sorted(self.envs.items()):
            out[state].append(env_id)
        ran = {n.env_id for n in self.plan.nodes
               if n.env_id and self.states[n.key] in ("succeeded", "failed")}
        out["reused"] = sorted(set(out["reused"]) | (ran - set(self.envs)))
        return out

    def summary(self) -> str:
        """A few lines for people: what ran, what was cached, envs, where things are."""
        counts = self.counts()
        ran = sum(counts.get(s, 0) for s in ("succeeded", "failed", "blocked", "cancelled"))
        if not ran:
            lines = [f"nothing to run: all {len(self.states)} nodes were cached"]
        else:
            detail = ", ".join(f"{counts[s]} {s}" for s in STATES
                               if s != "cached" and counts.get(s))
            lines = [f"ran {ran} of {len(self.states)} nodes ({detail}); "
                     f"{counts.get('cached', 0)} cached"]
        use = self.env_use()
        envs = ", ".join(f"{len(ids)} {what}" for what, ids in use.items() if ids)
        if envs:
            lines.append(f"envs: {envs}")
        lines += self.notes
        lines.append(f"store: {self.store.root}")
        if self.dashboard:
            lines.append(f"dashboard: {self.dashboard}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """Jupyter's view: counts by state, envs, failures with their log tail, the links."""
        return html_report(self)

    def raise_for_status(self) -> Results:
        """Raise TaskError listing every failure with its traceback; else return self."""
        if self.ok and not self.env_errors:
            return self
        parts = []
        for env_id, err in self.env_errors.items():
            parts.append(f"build_env-{env_id} failed:\n{err}")
        for node in self.failed:
            parts.append(self.errors.get(node.key, f"{node.name} failed"))
        blocked = self.blocked
        if blocked:
            names = ", ".join(n.name for n in blocked[:10])
            more = f" and {len(blocked) - 10} more" if len(blocked) > 10 else ""
            parts.append(f"{len(blocked)} node(s) blocked by these failures: {names}{more}")
        cancelled = self.nodes("cancelled")
        if cancelled:
            parts.append(f"{len(cancelled)} node(s) cancelled")
        summary = f"{len(self.failed)} failed, {len(blocked)} blocked: " + repr(self)
        raise TaskError(summary + "\n\n" + "\n\n".join(parts))


class Handle:
    """A submitted graph: ``wait()``, ``status()``, ``cancel()``."""

    def __init__(self, p: Plan, client: Any, futures: dict[str, Any],
                 builds: dict[str, Any], submission: str) -> None:
        self.plan = p
        self.client = client
        self.futures = futures  # node key -> Future
        self.builds = builds  # env_id -> Future
        self.submission = submission
        self.notes: list[str] = []  # passed on to the Results
        self._results: Results | None = None

    def _all(self) -> list[Any]:
        return [*self.builds.values(), *self.futures.values()]

    def status(self) -> dict[str, int]:
        """Counts of node states: while running, cached, pending, finished, error and
        cancelled (Dask's future states); after :meth:`wait`, the final states."""
        if self._results is not None:
            return self._results.counts()
        c: Counter[str] = Counter()
        c["cached"] = len(self.plan.nodes) - len(self.futures)
        by_key = {n.key: n for n in self.plan.nodes}
        for key, future in self.futures.items():
            stored = self._stored_success(by_key[key], future)
            c["finished" if stored == SUCCEEDED else stored or future.status] += 1
        return {k: v for k, v in c.items() if v}

    def cancel(self) -> None:
        """Stop the graph: cancel its futures and kill its running task subprocesses."""
        atomic.write_bytes(self.plan.store.cancel_path(self.submission), b"cancelled\n")
        if self.client is not None:
            self.client.cancel(self._all(), force=True)

    def wait(self, timeout: float | None = None, progress: bool | None = None) -> Results:
        """Wait for every node, then collect states; the futures are released."""
        if self._results is not None:
            return self._results
        futures = self._all()
        if futures:
            from distributed import wait

            if progress_bar.wanted(progress):
                progress_bar.show(futures)
            try:
                wait(futures, timeout=timeout)
            except _cancelled_errors():
                pass  # cancelled futures are reported per node below
        self._results = self._collect()
        self._results.notes = list(self.notes)
        for future in futures:
            future.release()  # a later compute of the same keys must run afresh
        self.futures, self.builds = {}, {}
        if self.client is not None:
            flush_releases(self.client)
        return self._results

    def _collect(self) -> Results:
        p = self.plan
        envs: dict[str, str] = {}
        env_errors: dict[str, str] = {}
        done_builds = {e: f for e, f in self.builds.items() if f.status == "finished"}
        built = dict(zip(done_builds, self.client.gather(list(done_builds.values())),
                         strict=True)) if done_builds else {}
        for env_id, future in self.builds.items():
            if env_id in built:
                envs[env_id] = "built" if getattr(built[env_id], "built", False) else "reused"
            elif future.status == "cancelled":
                envs[env_id] = "cancelled"
            else:
                envs[env_id] = "failed"
                env_errors[env_id] = _error_text(future)

        finished = {k: f for k, f in self.futures.items() if f.status == "finished"}
        outcomes = _outcomes(self.client, finished)
        _index_outcomes(p, outcomes.values())
        states: dict[str, str] = {}
        errors: dict[str, str] = {}
        for node in p.nodes:
            future = self.futures.get(node.key)
            if future is None:
                states[node.key] = "cached"
                continue
            if node.key in outcomes:
                states[node.key] = outcomes[node.key][0]
                continue
            stored = self._stored_success(node, future)
            if stored is not None:
                states[node.key] = stored
                continue
            bad = [up for up in node.upstream if states.get(up.key) not in ("succeeded", "cached")]
            given_up = [up for up in node.upstream if up.key in self.futures
                        and self.futures[up.key].status == "error"]
            if node.env_id in env_errors:
                states[node.key] = "blocked"
                errors[node.key] = f"{node.name} blocked: build_env-{node.env_id} failed"
            elif bad:
                states[node.key] = "blocked"
                why = f"upstream {bad[0].name} {states[bad[0].key]}"
                errors[node.key] = f"{node.name} blocked: {why}"
            elif given_up and future.status == "error":
                states[node.key] = "blocked"
                errors[node.key] = (
                    f"{node.name} blocked: Dask gave up on upstream {given_up[0].name} "
                    f"({_error_text(self.futures[given_up[0].key]).splitlines()[0]}), "
                    "whose result is stored all the same: run the graph again")
            elif future.status == "cancelled":
                states[node.key] = "cancelled"
            else:
                states[node.key] = "failed"
                errors[node.key] = _error_text(future)
        return Results(p, states, errors, envs, env_errors,
                       dashboard=links(self.client)[0] if self.client is not None else None)

    def _stored_success(self, node: Node, future: Any) -> str | None:
        """"succeeded" (by this submission) or "cached" when ``future`` erred but the
        node's record says it succeeded with its key; else None.

        Dask gives a task up (KilledWorker) once workers holding it died more often
        than its ``allowed-failures``: a job cancelled or preempted after the task
        committed, or while it waited there.  The record is the truth (§5.6).  A
        forced rerun counts only a success of this submission.  One read per erred
        future: none while all goes well.
        """
        if future.status not in ("error", "lost"):
            return None
        try:
            record = read_node(node.paths(self.plan.store).record)
        except StoreError:
            return None  # damaged: not a success
        if record is None or record.key != node.key or record.state != SUCCEEDED \
                or not record.attempts:
            return None
        if record.last.submission == self.submission:
            return SUCCEEDED
        why = self.plan.reason(node)
        return "cached" if why is None or not why.forces_rerun else None


def _outcomes(client: Any, futures: dict[str, Any]) -> dict[str, Any]:
    """The values of finished ``futures`` (by node key).

    On the embedded cluster they are read from the workers' memory, one call per
    worker, and the rest gathered from the workers directly (through its
    scheduler, which runs in this process, each would travel twice).
    ``client.gather`` asks for every key apart: 2,000 tiny outcomes took 0.2 to
    0.35 s, one read per worker 0.08 s (docs/benchmarks.md, Throughput).
    """
    if not futures:
        return {}
    local = is_local(client)
    by_name = {f.key: key for key, f in futures.items()}
    found: dict[str, Any] = {}
    if local:
        for part in client.run(_held, list(by_name), on_error="return").values():
            if isinstance(part, dict):
                found.update(part)
    rest = [f for f in futures.values() if f.key not in found]
    if rest:
        found.update(zip([f.key for f in rest], client.gather(rest, direct=local),
                         strict=True))
    return {by_name[name]: value for name, value in found.items() if name in by_name}


def _held(keys: list[str], dask_worker: Any = None) -> dict[str, Any]:
    """Run on a worker by :func:`_outcomes`: the values of ``keys`` it holds.

    ``Worker.data`` is distributed's documented mapping of the results a worker holds,
    and ``client.run`` passes the worker as ``dask_worker``: public API, kept for its
    measured reason (docs/design.md §14.2)."""
    data = dask_worker.data
    return {key: data[key] for key in keys if key in data}


def _index_outcomes(p: Plan, outcomes: Iterable[tuple[str, str]]) -> None:
    """Append the index entries the workers made to this driver's own segment.

    The workers appended them already; this copy makes the driver's next plan
    see them even where the workers' writes reach this host late (NFS).  The
    lines are our workers' own, and a reader skips any line that is not an entry.
    """
    lines = [line for _, line in outcomes if line.endswith("\n")]
    try:
        p.store.index.append_lines("".join(lines).encode())
    except OSError as err:
        log.warning("could not add %d entries to the index of %s: %s", len(lines),
                    p.store.root, err)


async def _noop() -> None:
    return None


def flush_releases(client: Any) -> None:
    """Let the client's loop process pending future releases before we go on.

    ``Future.release`` only queues the release on the client's event loop;
    a graph submitted before it runs would find the old future of the same
    key (same content hash) still held and get its stale result instead of a
    new run.  Running a no-op on that loop waits for every queued callback.
    """
    client.sync(_noop)


def _cancelled_errors() -> tuple[type[BaseException], ...]:
    """What ``distributed.wait`` raises for cancelled futures (newer releases only)."""
    from distributed import client

    found = getattr(client, "FuturesCancelledError", None)
    return (found,) if isinstance(found, type) else ()


def _error_text(future: Any) -> str:
    try:
        err = future.exception(timeout=30)
    except Exception as exc:  # cancelled or lost meanwhile
        return f"{future.key}: {type(exc).__name__}: {exc}"
    return f"{type(err).__name__}: {err}" if not isinstance(err, TaskError) else str(err)




def html_report(results: Results) -> str:
    """:meth:`Results._repr_html_`: counts by task and state, envs, failures, links."""
    parts = [html.heading(results.summary().splitlines()[0]),
             html.by_task(results.plan.nodes, lambda n: results.states[n.key], STATES)]
    labels: dict[str, Counter[str]] = {}
    for node in results.plan.nodes:
        if node.cfg is not None:
            labels.setdefault(html.label_of(node), Counter())[results.states[node.key]] += 1
    if labels:
        shown = [s for s in STATES if any(c[s] for c in labels.values())]
        parts.append(html.table(["run label", *shown],
                                [[label, *[c[s] or "" for s in shown]]
                                 for label, c in sorted(labels.items())]))
    use = results.env_use()
    if any(use.values()):
        parts.append(html.table(["env", "this call"],
                                [[e, what] for what, ids in use.items() for e in ids]))
    for node in (results.failed + results.blocked)[:5]:
        record = results._stored(node) if node in results.failed else None
        tail = record.last.log_tail if record is not None else None
        text = results.errors.get(node.key, "") + (
            "\n--- log tail ---\n" + tail if tail else "")
        parts.append(html.heading(f"{node.name}: {results.states[node.key]}") + html.pre(text))
    foot = f"store: {results.store.root}"
    parts.append(f"<p>{html.text(foot)}" + (
        f"; dashboard: {html.link(results.dashboard)}" if results.dashboard else "") + "</p>")
    return "".join(parts)
