"""``dscheduler explain``: why a node would run again, field by field (docs/design.md §11).

For a node that would run, :func:`explain` names every identity input (§2) that differs from the
stored record it succeeds (``config.members: 4 -> 8``): the record at the node's own path, else
among the task's records in the same case those of runs with the same label, else of any run,
the one with the fewest differences (the newest on a tie).  A node that would not run is still
checked for code drift (:mod:`dscheduler.graph.drift`).

:func:`explain_stored` explains stored runs or nodes by name, each rebuilt from its record with
today's code (:func:`~.calls.rebuild`): what this process has loaded and the files or modules the
user names (``code``); a record never makes it import anything (§15).  A node whose code is not
at hand is explained from its record alone (:class:`StoredExplanation`: its state and input
files), saying what was not compared and how to name the code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, StoreError
from ..store import Store, store_of
from ..store.catalogue.runs import find, node_summaries
from ..store.record import SUCCEEDED, Record
from ..store.records import read_node
from . import drift
from .calls import CONFIG, ENV, JSON, NODE, PATH, TIMES, TUPLE, describe, rebuild
from .files import content_identity
from .imports import module_files
from .node import Node, file_digest
from .plan import plan

#: Env fields that do not decide an env's content (not hashed, docs/design.md §2).
_ENV_UNHASHED = ("image", "smoke_imports")


@dataclass
class Change:
    """One identity input that differs from the stored record."""

    field: str
    stored: Any
    current: Any

    def __str__(self) -> str:
        return f"{self.field}: {_show(self.stored)} -> {_show(self.current)}"


@dataclass
class Explanation:
    """Why ``node`` would run (``reason``, None: it would not) and what changed."""

    node: Node
    reason: str | None
    compared: Path | None = None  # the record compared with
    how: str = ""  # which record that is: same path, same label, same task
    changes: list[Change] = field(default_factory=list)
    drift: bool = False

    def text(self) -> str:
        node = self.node
        head = f"{node.name}{f' [{node.case}]' if node.case else ''}"
        lines = [f"{head}: {self.reason or 'would not run (its stored result is current)'}"]
        if self.drift:
            lines.append(f"  code: {drift.DRIFT}")
        if self.compared is not None:
            lines.append(f"  compared with {self.how}: {self.compared}")
            lines += [f"  {change}" for change in self.changes]
            if not self.changes and self.reason:
                lines.append("  no identity input differs; it runs for the reason above")
        elif self.reason:
            lines.append(f"  no stored record of task {node.task.name!r} to compare with")
        return "\n".join(lines)


def _show(value: Any) -> str:
    return "(none)" if value is None else repr(value)


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    """Leaves of typed JSON (graph/calls.py) by dotted path; tagged values as one leaf."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            _flatten(item, f"{prefix}[{i}]", out)
        return
    if not isinstance(value, dict):
        out[prefix] = value
        return
    tag = next((k for k in value if k.startswith("\u0000")), None)
    if tag == NODE:
        out[prefix] = f"upstream {value[NODE]['name']}"
    elif tag == CONFIG:
        if "fields" in value[CONFIG]:
            _flatten(value[CONFIG]["fields"], prefix, out)
    elif tag == PATH:
        digest = value.get("sha256")
        out[prefix] = f"{value[PATH]}" + (f" (sha256 {digest[:12]})" if digest else "")
    elif tag == TUPLE:
        _flatten(value[TUPLE], prefix, out)
    elif tag in (ENV, JSON, *TIMES):
        out[prefix] = value[tag]
    else:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else key, out)


def identity_view(info: Record, node: Node) -> dict[str, Any]:
    """The identity inputs of a record (a stored one, or one made of :func:`describe`'s
    fields), by field name.

    Config fields are those ``node``'s config class hashes (a run it is on field by
    field); env fields those that decide an env's content.
    """
    call = info.call or {}
    out: dict[str, Any] = {"version": info.version, "function": call.get("fn"),
                           "env_id": info.env_id}
    cfg = node.cfg
    if cfg is not None:
        hashed = [f for f in type(cfg).model_fields if f not in cfg.HASH_EXCLUDE]
        config = info.config or {}
        runs = cfg.runs_on()
        for name in hashed:
            inner = runs.get(name)
            value = config.get(name)
            if inner is not None and isinstance(value, dict):  # a run it is on: by field
                kept = {k: v for k, v in value.items() if k not in inner.HASH_EXCLUDE}
                _flatten(kept, f"config.{name}", out)
            else:
                out[f"config.{name}"] = value
        for name, file in (call.get("files") or {}).items():  # ds.File fields: by content
            out[name] = _file_text(file.get("path"), file.get("digest"))
    env = info.env or {}
    for name, value in env.items():
        if name not in _ENV_UNHASHED:
            out[f"env.{name}"] = value
    _flatten(call.get("args") or {}, "args", out)
    return out


def _file_text(path: Any, digest: Any) -> str:
    return f"{path} (content {str(digest)[:12]})" if digest else f"{path} (no such file)"


def diff(stored: dict[str, Any], current: dict[str, Any]) -> list[Change]:
    """Fields whose values differ, in the order of ``current`` then stored-only ones."""
    names = list(current) + [n for n in stored if n not in current]
    return [Change(n, stored.get(n), current.get(n)) for n in names
            if stored.get(n) != current.get(n)]


def _candidates(store: Store, node: Node) -> list[tuple[str, Path]]:
    """(how, record path) of stored records of ``node``'s task in its case."""
    label = getattr(node.cfg, "label", "") if node.cfg is not None else ""
    same_label, others = [], []
    for s in node_summaries(store):
        if s["task"] != node.task.name or s["case"] != node.case or not s["record"]:
            continue
        if label and s["label"] == label:
            same_label.append(("the stored record with the same label", s))
        else:
            others.append(("a stored record of the same task", s))
    chosen = same_label or others
    chosen.sort(key=lambda pair: pair[1]["end"] or "", reverse=True)
    return [(how, store.root / s["record"]) for how, s in chosen]


def explain(node: Node, store: Store | str | os.PathLike[str] | None = None,
            reason: str | None = None, *, planned: bool = False) -> Explanation:
    """Why ``node`` would run, and which identity inputs differ from its stored record.

    ``reason``: the plan's reason, when the caller planned already (else one plan
    of ``node`` is made); ``planned``: the caller planned, and None means it would
    not run.
    """
    store = store_of(store)
    if reason is None and not planned:
        reason = plan(node, store=store).reason(node)
    current_info = Record(version=node.task.version, env_id=node.env_id)
    current_info.describe(describe(node, store, None))
    env = node.env() if node.env_id is not None else None
    current_info.env = env.model_dump(mode="json") if env is not None else None
    current = identity_view(current_info, node)
    out = Explanation(node, reason)
    own = node.paths(store).record
    try:
        record = read_node(own)
    except StoreError:
        record = None
    if record is not None and record.call:
        candidates = [("the stored record at its path", own)]
    elif reason is None:
        return out
    else:
        candidates = _candidates(store, node)
    best: tuple[int, str, Path, list[Change], Record] | None = None
    for how, path in candidates:
        try:
            stored_record = read_node(path)
        except StoreError:
            continue
        if not stored_record or not stored_record.call:
            continue
        changes = diff(identity_view(stored_record, node), current)
        if best is None or len(changes) < best[0]:
            best = (len(changes), how, path, changes, stored_record)
    if best is not None:
        _, out.how, out.compared, out.changes, stored_record = best
        out.drift = drift.differs(drift.stored_code(current_info),
                                  drift.stored_code(stored_record))
        if out.drift and not any(c.field == "version" for c in out.changes):
            out.changes.append(Change("code (version unchanged)", "stored digest",
                                      "edited since"))
    return out


def explain_plan(nodes: list[Node], store: Store | str | os.PathLike[str] | None = None,
                 *, every: bool = False) -> list[Explanation]:
    """:func:`explain` for ``nodes`` that would run or whose code drifted (one plan);
    ``every``: for all of ``nodes``, those that would not run too."""
    store = store_of(store)
    p = plan(nodes, store=store)
    chosen = {n.key for n in nodes}
    return [explain(n, store, p.reason(n), planned=True) for n in p.nodes
            if n.key in chosen and (every or n.key in p.reasons or n.key in p.drift)]


@dataclass
class StoredExplanation:
    """A stored node explained from its record alone, its code not being at hand."""

    name: str
    case: str
    task: str
    record: Path
    missing: str  # why its code was not loaded
    reason: str | None = None
    changes: list[Change] = field(default_factory=list)
    drift: bool = False

    def text(self) -> str:
        head = f"{self.name}{f' [{self.case}]' if self.case else ''}"
        lines = [f"{head}: {self.reason or 'nothing in its record says it would run'}"]
        lines += [f"  {change}" for change in self.changes]
        lines.append(
            f"  not compared: the version, code and function of task {self.task!r}, its "
            f"config and env, which only today's code decides ({self.missing}); name the "
            "file or module that defines it: dscheduler explain REF --code FILE")
        return "\n".join(lines)


def explain_record(path: Path, record: Record, missing: str) -> StoredExplanation:
    """What the record at ``path`` says without its code: its state, and the files its
    arguments name whose content changed since (read, never run)."""
    out = StoredExplanation(str(record.name), str(record.case or ""), str(record.task), path,
                            missing)
    state = record.state
    if state != SUCCEEDED:
        out.reason = f"its stored state is {state!r}"
    args = (record.call or {}).get("args") or {}
    for name, value in _paths(args, "args"):
        digest = value.get("sha256")
        if not digest:
            continue
        now = file_digest(Path(value[PATH]))
        if now != digest:
            out.changes.append(Change(name, f"sha256 {digest[:12]}",
                                      f"sha256 {now[:12]}" if now else "(no such file)"))
    for name, file in ((record.call or {}).get("files") or {}).items():
        found = content_identity(Path(file.get("path", "")))
        now = next(iter(found.values())) if found else None
        if now != file.get("digest"):
            out.changes.append(Change(name, _file_text(file.get("path"), file.get("digest")),
                                      _file_text(file.get("path"), now)))
    if out.changes and out.reason is None:
        out.reason = "a file it read changed"
    return out


def _paths(value: Any, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    """The ``\\u0000path`` values of typed JSON, by dotted name."""
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _paths(v, f"{prefix}[{i}]")]
    if not isinstance(value, dict):
        return []
    if PATH in value and isinstance(value[PATH], str):
        return [(prefix, value)]
    if TUPLE in value:
        return _paths(value[TUPLE], prefix)
    if any(k.startswith("\u0000") for k in value):
        return []
    return [p for k, v in value.items() for p in _paths(v, f"{prefix}.{k}")]


def named_code(code: list[str]) -> set[Path]:
    """The files of the Python files or modules the user names (``--code``)."""
    files: set[Path] = set()
    for item in code:
        if item.endswith(".py") or os.sep in item or Path(item).is_file():
            if not Path(item).is_file():
                raise ConfigError(f"--code {item!r}: no such file")
            files.add(Path(item).resolve())
            continue
        found = module_files(item)
        if found is None:
            raise ConfigError(f"--code {item!r}: no such module (name a file.py or an "
                              "importable module)")
        files.update(f.resolve() for f in found)
    return files


def explain_stored(refs: list[str], store: Store | str | os.PathLike[str] | None = None,
                   code: list[str] | None = None
                   ) -> list[Explanation | StoredExplanation]:
    """Why the stored runs or nodes ``refs`` name (run_ids, labels, node names or keys)
    would run again: each rebuilt from its record with today's code, then explained,
    whether it would run or not.

    Today's code: what this process has loaded, and the files or modules ``code``
    names.  A node whose code is neither is explained from its record alone.

    Raises
    ------
    ConfigError
        a ref names nothing, or ``code`` names no file or module.
    """
    store = store_of(store)
    allowed = named_code(code or [])

    def gate(file: Path) -> None:
        if file.resolve() not in allowed:
            raise ConfigError(f"{file} is not loaded: you did not name it (--code)")

    built: dict[str, Node] = {}
    nodes: dict[str, Node] = {}
    alone: list[StoredExplanation] = []
    for ref in refs:
        for path, record in find(store, ref):
            if not record.task:  # not a run without a node record yet
                continue
            try:
                node = rebuild(store, record, built, gate)
            except ConfigError as err:
                alone.append(explain_record(path, record, str(err)))
                continue
            nodes.setdefault(node.key, node)
    if not nodes and not alone:
        raise ConfigError(f"{', '.join(map(repr, refs))} names no node record to explain")
    found: list[Explanation | StoredExplanation] = []
    if nodes:
        found += explain_plan(list(nodes.values()), store, every=True)
    return found + alone
