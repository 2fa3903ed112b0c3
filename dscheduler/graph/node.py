"""``Node``: one lazy call of a task, identified by a content hash (docs/design.md §2).

The key (node key format 2) is ``digest("node", {"format": 2, "task", "version", "fn", "env",
"args"})``: ``fn`` is ``module:qualname`` (a script's or notebook's file name instead of the
module, :func:`dscheduler.graph.task.function_location`), ``env`` the env_id or None, and each
argument is canonicalised by :func:`canon`: an upstream ``Node`` as ``{"\\u0000node": its
key}``, a ``Path`` naming an existing file as ``{"\\u0000file": sha256 of its bytes}`` (other
paths as POSIX strings; a ``ds.File`` value by its content, a directory too), a ``RunConfig``
by its ``__ds_identity__`` (``{"\\u0000config": its two digests}``, as in a field), anything
else as canonical JSON (:mod:`dscheduler.identity`); a value without one fails at call time,
naming the task and the argument.  A task bound to a run (a RunConfig first argument; its case
is the parameter ``@ds.task(case=...)`` names, else a second ``str`` argument) writes to
``runs/{env_id}/{config_hash}/{case}/`` (``.../{config_hash}/`` without a case), any other task
to ``tasks/{task}/{key16}/``.  ``env=`` an ``ds.Env`` runs it there, ``env=None`` in the worker
process; by default a task bound to a run runs in ``cfg.env()``, any other in the worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import Any

from .. import identity
from ..envs import Env
from ..errors import ConfigError, GraphError, IdentityError
from ..store import NodePaths, Store, check_name
from .files import FILE_TAG, HashedPath, content_identity
from .files import file_digest as file_digest  # where graph/calls.py and explain.py find it
from .options import AUTO
from .runconfig import RunConfig
from .taskdef import TaskDef

#: Version of the node key's structure; bumped when what a key covers changes.
KEY_FORMAT = 2

NODE_TAG = "\u0000node"

_SCALARS = (str, int, float, bool, type(None))


def canon(value: Any, upstream: list[Node]) -> tuple[Any, Any]:
    """(canonical stand-in for the key, copy to run with) of one argument."""
    if type(value) in _SCALARS:
        return value, value
    if isinstance(value, Node):
        upstream.append(value)
        return {NODE_TAG: value.key}, value
    if isinstance(value, RunConfig):
        return value.__ds_identity__(), value
    if isinstance(value, HashedPath) and content_identity(value) is not None:
        return value.__ds_identity__(), value  # a ds.File field's value: its content
    if isinstance(value, PurePath):
        found = file_digest(Path(value))
        return ({FILE_TAG: found} if found else value), value
    if isinstance(value, list | tuple):
        pairs = [canon(v, upstream) for v in value]
        copy = [p[1] for p in pairs]
        return [p[0] for p in pairs], (copy if isinstance(value, list) else tuple(copy))
    if isinstance(value, dict):
        canon_d: dict[Any, Any] = {}
        copy_d: dict[Any, Any] = {}
        for k, v in value.items():
            canon_d[k], copy_d[k] = canon(v, upstream)
        return canon_d, copy_d
    return value, value


def raise_bad_argument(name: str, canonical: dict[str, Any]) -> None:
    """Name the argument that has no canonical form (the slow path, errors only)."""
    for param, value in canonical.items():
        try:
            identity.canonical_json(value, param)
        except IdentityError as err:
            raise ConfigError(
                f"{name}(): argument {err.path}: {err.problem}. Task arguments must be JSON "
                "values, Paths, datetimes, RunConfigs, Envs or other nodes: they are hashed "
                "into the node's key"
            ) from None
    raise ConfigError(f"{name}(): arguments have no canonical form")  # pragma: no cover



class Node:
    """One call of a task: lazy, immutable, identified by ``key``.

    ``key`` is the full digest, ``key16`` its first 16 characters and
    ``name`` the Dask key ``f"{task}-{key16}"``.
    """

    __slots__ = ("_env", "_paths", "arguments", "case", "cfg", "env_id", "key", "key16",
                 "name", "task", "upstream")

    def __init__(self, task: TaskDef[Any, Any], arguments: dict[str, Any]) -> None:
        self.task = task
        upstream: list[Node] = []
        canonical: dict[str, Any] = {}
        copy: dict[str, Any] = {}
        for param, value in arguments.items():
            canonical[param], copy[param] = canon(value, upstream)
        self.arguments = copy
        seen: dict[str, Node] = {}
        node: Node
        for node in upstream:
            seen.setdefault(node.key, node)
        self.upstream: tuple[Node, ...] = tuple(seen.values())

        values = list(copy.values())
        first = values[0] if values else None
        self.cfg: RunConfig | None = first if isinstance(first, RunConfig) else None
        self.case: str | None = None
        if task.case is not None:
            self.case = copy[task.case]
            if not isinstance(self.case, str):
                raise ConfigError(
                    f"{task.name}(): the case argument {task.case}={self.case!r} must be a str"
                )
        elif self.cfg is not None and len(values) > 1 and isinstance(values[1], str):
            self.case = values[1]
        if self.case is not None:
            check_name(self.case, f"{task.name}(): case")
        if self.cfg is not None and self.case is None and task.name == "run":
            raise ConfigError("a task bound to a run without a case cannot be named 'run' "
                              "(its record would be the run's run.json); rename it")

        env = task.options_.env
        self._env: Env | None = None
        self.env_id: str | None
        if isinstance(env, Env):
            self._env, self.env_id = env, env.env_id
        elif env is AUTO and self.cfg is not None:
            self.env_id = self.cfg.env_id  # no I/O: cfg.env() is resolved when needed
        else:
            self.env_id = None

        self.key: str = ""
        try:
            self.key = identity.digest("node", {
                "format": KEY_FORMAT, "task": task.name, "version": task.version,
                "fn": task.location, "env": self.env_id, "args": canonical,
            })
        except IdentityError:
            raise_bad_argument(task.name, canonical)
        self.key16 = identity.short_id(self.key)
        self.name = f"{task.name}-{self.key16}"
        self._paths: tuple[Store, NodePaths] | None = None

    def __repr__(self) -> str:
        where = f" case={self.case}" if self.case else ""
        return f"<Node {self.name}{where} env={self.env_id}>"

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and other.key == self.key

    @property
    def run_id(self) -> str | None:
        return self.cfg.run_id if self.cfg is not None else None

    def env(self) -> Env | None:
        """The Env this node runs in (None: the worker's own Python); may read a checkpoint."""
        if self._env is not None or self.env_id is None:
            return self._env
        if self.cfg is None:  # pragma: no cover - env_id set only with an env or a config
            raise GraphError(f"{self.name}: no environment")
        return resolve_env(self.cfg)

    def paths(self, store: Store) -> NodePaths:
        """Where this node's outputs and record live in ``store`` (kept for the last
        store asked: planning and submitting ask several times per node)."""
        if self._paths is not None and self._paths[0] is store:
            return self._paths[1]
        if self.cfg is None:
            paths = store.task(self.task.name, self.key16)
        else:
            run = store.run(self.cfg.run_id)
            paths = (NodePaths(run.dir, self.task.name, run.root) if self.case is None
                     else run.node(self.case, self.task.name))
        self._paths = (store, paths)
        return paths

    def walk(self) -> Iterator[Node]:
        """This node and everything upstream of it, each once (no order promised)."""
        seen: set[str] = set()
        stack: list[Node] = [self]
        while stack:
            node = stack.pop()
            if node.key in seen:
                continue
            seen.add(node.key)
            yield node
            stack.extend(node.upstream)



_env_cache: dict[tuple[type, str], Env] = {}


def resolve_env(cfg: RunConfig) -> Env:
    """``cfg.env()``, once per (config class, env digest) in this process.

    Configs with the same env fields make the same env by definition of
    env_id, so one call (which may read a checkpoint's metadata) serves all.
    """
    cache_key = (type(cfg), cfg.env_digest)
    found = _env_cache.get(cache_key)
    if found is None:
        try:
            found = cfg.env()
        except ConfigError as err:
            raise GraphError(
                f"cannot make the environment of run {cfg.run_id} "
                f"({type(cfg).__name__}, label {getattr(cfg, 'label', '')!r}): {err}"
            ) from None
        if not isinstance(found, Env):
            raise GraphError(
                f"{type(cfg).__name__}.env() returned {found!r}, not a ds.Env"
            )
        _env_cache[cache_key] = found
    return found
