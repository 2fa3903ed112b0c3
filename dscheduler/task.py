"""``ds.task`` and ``Node``: lazy calls whose keys are content hashes.

Calling a task returns a :class:`Node`; nothing runs until ``ds.compute``.
A node's key (DESIGN section 2) is::

    digest("node", {"task": name, "version": version, "env": env_id or None,
                    "args": {parameter: canonical value}})

with each argument canonicalised by :func:`_canon`:

* an upstream ``Node``       -> ``{"\\u0000node": its full key}``, so a change
  anywhere upstream changes every key downstream;
* a ``pathlib.Path`` naming an existing file -> ``{"\\u0000file": sha256 of its
  bytes}`` (cached in-process by path, mtime and size); other paths hash as
  their POSIX string.  A ``str`` is always just a string: pass a ``Path`` to
  make a file's content part of the key;
* a ``RunConfig``           -> ``{"\\u0000config": cfg.identity_fields()}``, its
  two digests (computed once when the config was made);
* anything else must have a canonical JSON form (:mod:`dscheduler.identity`);
  a value without one fails at call time, naming the task and the argument.

The ``\\u0000`` tags cannot come from a hand-written config, so an argument
can never be mistaken for a node, a file or a config.  Arguments are bound to
the function's signature first (defaults applied), so ``f(cfg, "x")`` and
``f(cfg, init_time="x")`` are the same node.  Options that cannot change a
result (resources, retries, timeout, priority, cache) are not hashed: where
and how often a task runs must not move its outputs.

Where outputs go: a task "bound to a run" has a RunConfig as its first
argument.  Its case is the parameter named by ``@ds.task(case="init_time")``
or, by default, the second argument when it is a ``str``.  Its outputs go to
``runs/{env_id}/{config_hash}/{case}/`` (``runs/{env_id}/{config_hash}/``
when it has no case); every other task's to ``tasks/{task}/{key16}/``.

Which environment runs it: ``env=`` an ``ds.Env`` runs it there; ``env=None``
runs it in the worker process (the driver's environment); left at its
default, a task bound to a run runs in ``cfg.env()`` (whose env_id is the
config's) and any other task in the worker process.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePath
from typing import Any, Generic, ParamSpec, TypeVar

from . import identity
from .env import Env
from .errors import ConfigError, GraphError, IdentityError
from .runconfig import RunConfig
from .store import NodePaths, Store, check_name

P = ParamSpec("P")
R = TypeVar("R")

NODE_TAG = "\u0000node"
FILE_TAG = "\u0000file"
CONFIG_TAG = "\u0000config"


class _Auto:
    """The default ``env``: the RunConfig's env for a run-bound task, else none."""

    def __repr__(self) -> str:
        return "auto"

    def __reduce__(self) -> str:
        return "AUTO"


AUTO: Any = _Auto()


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    """How a task runs; none of these is part of its key."""

    env: Any = AUTO  # ds.Env | None | AUTO
    resources: Mapping[str, float] | None = None
    retries: int | None = None  # None: the setting task.retries
    timeout: float | None = None  # None: the setting task.timeout
    cache: bool = True
    priority: int = 0


_OPTION_HELP = {
    "env": "auto: cfg.env() when the first argument is a RunConfig, else the worker's own "
    "Python; or a ds.Env; or None for the worker's own Python",
    "resources": "None, or a dict such as {'GPU': 1} (dask worker resources)",
    "retries": "None (setting task.retries), or how often to retry a failed attempt",
    "timeout": "None (setting task.timeout), or seconds an attempt in an env may run",
    "cache": "True: skip when a finished result is stored; False: always run",
    "priority": "0; higher runs first when workers are busy",
}


def _check_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    valid = {f.name for f in dataclasses.fields(TaskOptions)}
    unknown = sorted(set(options) - valid)
    if unknown:
        lines = "\n".join(f"  {k}: {_OPTION_HELP[k]}" for k in sorted(valid))
        raise ConfigError(f"task {name!r}: unknown option(s) {unknown}; valid options:\n{lines}")
    out = dict(options)
    env = out.get("env", AUTO)
    if env is not AUTO and env is not None and not isinstance(env, Env):
        raise ConfigError(
            f"task {name!r}: env={env!r} is not a ds.Env; pass ds.Env(...), or None to run "
            "in the worker's own Python"
        )
    retries = out.get("retries")
    if retries is not None and (not isinstance(retries, int) or retries < 0):
        raise ConfigError(f"task {name!r}: retries={retries!r} must be an int >= 0")
    timeout = out.get("timeout")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise ConfigError(f"task {name!r}: timeout={timeout!r} must be seconds > 0, or None")
    resources = out.get("resources")
    if resources is not None:
        if not isinstance(resources, Mapping) or not all(
            isinstance(k, str) and isinstance(v, int | float) for k, v in resources.items()
        ):
            raise ConfigError(
                f"task {name!r}: resources={resources!r} must map names to amounts, "
                "e.g. {'GPU': 1}"
            )
        out["resources"] = dict(resources)
    if not isinstance(out.get("cache", True), bool):
        raise ConfigError(f"task {name!r}: cache must be True or False")
    if not isinstance(out.get("priority", 0), int):
        raise ConfigError(f"task {name!r}: priority must be an int")
    return out


class Task(Generic[P, R]):
    """A function made lazy: calling it returns a :class:`Node`."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        version: str = "0",
        name: str | None = None,
        case: str | None = None,
        options: TaskOptions | None = None,
    ) -> None:
        self.fn = fn
        self.name: str = name or str(getattr(fn, "__name__", ""))
        try:
            check_name(self.name, "task name")
        except ConfigError as err:
            raise ConfigError(f"{err}; give the task a name: @ds.task(name='...')") from None
        if not isinstance(version, str | int):
            raise ConfigError(f"task {self.name!r}: version={version!r} must be a str")
        self.version = str(version)
        self.signature = inspect.signature(fn)
        params = list(self.signature.parameters.values())
        if case is not None and case not in self.signature.parameters:
            raise ConfigError(
                f"task {self.name!r}: case={case!r} is not a parameter of {self.name}; "
                f"its parameters are {[p.name for p in params]}"
            )
        self.case = case
        self.options_ = options or TaskOptions()
        # Positional-only fast path: binding by zip is 10x cheaper than
        # Signature.bind, and node creation is on the planning hot path.
        simple = all(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params
        )
        self._names = tuple(p.name for p in params) if simple else None
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<ds.task {self.name} version={self.version!r}>"

    def options(self, **options: Any) -> Task[P, R]:
        """A copy with other options (env, resources, retries, timeout, cache, priority)."""
        checked = _check_options(self.name, options)
        new = Task.__new__(Task)
        new.__dict__.update(self.__dict__)
        new.options_ = dataclasses.replace(self.options_, **checked)
        return new

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = self._names
        if names is not None and not kwargs and len(args) == len(names):
            return dict(zip(names, args, strict=True))
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as err:
            raise ConfigError(f"{self.name}(): {err}") from None
        bound.apply_defaults()
        return dict(bound.arguments)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Node:
        return Node(self, self._bind(args, kwargs))


def task(
    fn: Callable[..., Any] | None = None,
    *,
    version: str = "0",
    name: str | None = None,
    case: str | None = None,
    **options: Any,
) -> Any:
    """Make a task: ``@ds.task(version="1")``; bump ``version`` to invalidate results.

    ``case`` names the parameter that holds the run's case (e.g. an init time);
    other keywords are options (see :meth:`Task.options`).
    """

    def make(f: Callable[..., Any]) -> Task[Any, Any]:
        label = name or str(getattr(f, "__name__", "?"))
        return Task(
            f, version=version, name=name, case=case,
            options=TaskOptions(**_check_options(label, options)),
        )

    return make(fn) if fn is not None else make


# -- canonical arguments ---------------------------------------------------------

_SCALARS = (str, int, float, bool, type(None))
_file_cache: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str | None:
    """sha256 of a file's bytes, cached by (path, mtime, size); None if not a file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    import stat as stat_mod

    if not stat_mod.S_ISREG(st.st_mode):
        return None
    cache_key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
    found = _file_cache.get(cache_key)
    if found is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        found = _file_cache[cache_key] = h.hexdigest()
    return found


def _canon(value: Any, upstream: list[Node]) -> tuple[Any, Any]:
    """(canonical stand-in for the key, copy to run with) of one argument."""
    if type(value) in _SCALARS:
        return value, value
    if isinstance(value, Node):
        upstream.append(value)
        return {NODE_TAG: value.key}, value
    if isinstance(value, RunConfig):
        return {CONFIG_TAG: value.identity_fields()}, value
    if isinstance(value, PurePath):
        found = file_digest(Path(value))
        return ({FILE_TAG: found} if found else value), value
    if isinstance(value, list | tuple):
        pairs = [_canon(v, upstream) for v in value]
        copy = [p[1] for p in pairs]
        return [p[0] for p in pairs], (copy if isinstance(value, list) else tuple(copy))
    if isinstance(value, dict):
        canon_d: dict[Any, Any] = {}
        copy_d: dict[Any, Any] = {}
        for k, v in value.items():
            canon_d[k], copy_d[k] = _canon(v, upstream)
        return canon_d, copy_d
    return value, value


# -- nodes -------------------------------------------------------------------------


class Node:
    """One call of a task: lazy, immutable, identified by ``key``.

    ``key`` is the full digest, ``key16`` its first 16 characters and
    ``name`` the Dask key ``f"{task}-{key16}"``.
    """

    __slots__ = ("_env", "arguments", "case", "cfg", "env_id", "key", "key16", "name",
                 "task", "upstream")

    def __init__(self, task: Task[Any, Any], arguments: dict[str, Any]) -> None:
        self.task = task
        upstream: list[Node] = []
        canon: dict[str, Any] = {}
        copy: dict[str, Any] = {}
        for param, value in arguments.items():
            canon[param], copy[param] = _canon(value, upstream)
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
            self.key = identity.digest(
                "node",
                {"task": task.name, "version": task.version, "env": self.env_id, "args": canon},
            )
        except IdentityError:
            _raise_bad_argument(task.name, canon)
        self.key16 = identity.short_id(self.key)
        self.name = f"{task.name}-{self.key16}"

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
        """Where this node's outputs and record live in ``store``."""
        if self.cfg is None:
            return store.task(self.task.name, self.key16)
        run = store.run(self.cfg.run_id)
        if self.case is None:
            return NodePaths(run.dir, self.task.name)
        return run.node(self.case, self.task.name)

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


def _raise_bad_argument(name: str, canon: dict[str, Any]) -> None:
    """Name the argument that has no canonical form (the slow path, errors only)."""
    for param, value in canon.items():
        try:
            identity.canonical_json(value, param)
        except IdentityError as err:
            raise ConfigError(
                f"{name}(): argument {err.path}: {err.problem}. Task arguments must be JSON "
                "values, Paths, datetimes, RunConfigs, Envs or other nodes: they are hashed "
                "into the node's key"
            ) from None
    raise ConfigError(f"{name}(): arguments have no canonical form")  # pragma: no cover


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
