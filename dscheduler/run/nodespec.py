"""``NodeSpec``: everything a worker needs to run one node, made in the driver.

Specs are made (and their payloads pickled) before anything is submitted,
so a graph whose functions or arguments cannot travel fails whole, with
nothing half-sent.  A task's function is pickled once per submission and
the bytes are shared by all its nodes' specs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..envs import Env
from ..errors import GraphError
from ..graph import Node, Plan
from ..graph.calls import describe
from ..store import NodePaths, Store
from .payload import Ref, dumps, function_for, map_nested


@dataclass
class NodeSpec:
    """One node as the worker sees it: plain data plus two pickles."""

    name: str  # the Dask key, f"{task}-{key16}"
    key: str
    task: str
    version: str
    store: Store
    paths: NodePaths
    function: bytes  # cloudpickle of the task's function (shared by the task's nodes)
    payload: bytes  # cloudpickle of (args, kwargs), with Refs for upstream nodes
    env: Env | None
    env_id: str | None
    run_id: str | None = None
    case: str | None = None
    upstream: list[str] = field(default_factory=list)  # full keys
    timeout: float | None = None
    submission: str = ""  # id of the ds.compute/ds.submit call, for cancellation
    rerun: bool = False  # forced, cache=False or drift: run even if a success is stored
    info: dict[str, Any] = field(default_factory=dict)  # what the node is (graph/calls.py)

    @property
    def key16(self) -> str:
        return self.key[:16]

    @cached_property
    def cancel_path(self) -> Path:
        return self.store.cancel_path(self.submission)

    def __getstate__(self) -> dict[str, Any]:
        # Made where the spec is used (a tiny task asks for it several times).
        return {k: v for k, v in self.__dict__.items() if k != "cancel_path"}


def _refs(value: Any, store: Store) -> Any:
    """Upstream nodes inside ``value`` -> Refs the worker resolves from the store."""
    return map_nested(
        value, lambda v: Ref(v.name, v.key, v.paths(store)) if isinstance(v, Node) else v
    )


def _cannot_travel(node: Node, what: str, err: Exception) -> GraphError:
    return GraphError(
        f"{node.name}: the task's {what} cannot be sent to a worker "
        f"({type(err).__name__}: {err})"
    )


def make_specs(p: Plan, submission: str) -> dict[str, NodeSpec]:
    """Specs of the nodes ``p`` runs, by key; a GraphError if one cannot travel."""
    store = p.store
    functions: dict[int, bytes] = {}  # id(task.fn) -> its pickle
    configs: dict[int, dict[str, Any]] = {}  # id(cfg) -> its fields, for the records
    specs = {}
    for node in p.to_run:
        fn = node.task.fn
        if id(fn) not in functions:
            try:
                functions[id(fn)] = dumps(function_for(node.task))
            except Exception as err:
                raise _cannot_travel(node, "function", err) from None
        bound = inspect.BoundArguments(node.task.signature, _refs(node.arguments, store))
        try:
            payload = dumps((bound.args, bound.kwargs))
        except Exception as err:
            raise _cannot_travel(node, "arguments", err) from None
        specs[node.key] = NodeSpec(
            name=node.name,
            key=node.key,
            task=node.task.name,
            version=node.task.version,
            store=store,
            paths=node.paths(store),
            function=functions[id(fn)],
            payload=payload,
            env=p.envs.get(node.env_id) if node.env_id else None,
            env_id=node.env_id,
            run_id=node.run_id,
            case=node.case,
            upstream=[up.key for up in node.upstream],
            timeout=node.task.options_.timeout,
            submission=submission,
            rerun=p.reasons[node.key].forces_rerun,
            info=describe(node, store, p.envs.get(node.env_id) if node.env_id else None,
                          configs),
        )
    return specs
