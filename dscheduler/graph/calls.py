"""What a record keeps of a node's call: enough to explain it and to run it again.

:func:`describe` gives the record fields ``format`` (2), ``label``, ``model``, ``config`` (the
RunConfig's fields), ``env`` and ``call``: ``fn`` (the key's location), ``module``, ``qualname``,
``file``, ``code`` (``digest``, ``scheme``), ``files`` (the config's ``ds.File`` fields:
``path`` and content ``digest``, when it has any) and ``args``, each argument as typed JSON
(docs/design.md §11): JSON values as they are, others as a one-key object tagged ``\\u0000node``
(key, name, record path), ``\\u0000config`` (class and fields; the run's own config by reference),
``\\u0000path`` (with the file's sha256), ``\\u0000tuple``, ``\\u0000datetime``/``date``/``time``,
``\\u0000env`` or ``\\u0000json`` (the canonical form the key saw).  :func:`rebuild` turns a record
back into a Node from the task's current code; its key equals the stored one exactly when
nothing that identifies the node changed.

A record is data: code comes from modules already loaded, another file is loaded only if the
caller's ``gate`` lets it through (§15): ``rerun`` the user's own files, ``explain`` those named.
"""

from __future__ import annotations

import datetime as dt
import importlib
import sys
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import Any

from .. import identity
from ..envs import Env
from ..errors import ConfigError, StoreError
from ..store import Store
from ..store.record import FORMAT as FORMAT  # the record format (store/record.py)
from ..store.record import Record
from ..store.records import read_node
from .drift import code_digest
from .files import hashed_paths
from .imports import BY_PATH_PREFIX, load_file, loaded_module, module_files
from .node import Node, file_digest
from .runconfig import RunConfig
from .task import Task

NODE, CONFIG, PATH, TUPLE, ENV, JSON = (f"\u0000{t}" for t in (
    "node", "config", "path", "tuple", "env", "json"))
TIMES = {f"\u0000{t.__name__}": t for t in (dt.datetime, dt.date, dt.time)}


def class_ref(obj: Any) -> dict[str, Any]:
    """Where a function or class is defined: module, qualname and file."""
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    return {"module": obj.__module__, "qualname": obj.__qualname__,
            "file": getattr(module, "__file__", None)}


def encode(value: Any, store: Store, own: RunConfig | None = None) -> Any:
    """``value`` as typed JSON (see the module docstring)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list):
        return [encode(v, store, own) for v in value]
    if isinstance(value, tuple):
        return {TUPLE: [encode(v, store, own) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: encode(v, store, own) for k, v in value.items()}
    if isinstance(value, Node):
        record = value.paths(store).record
        return {NODE: {"key": value.key, "name": value.name,
                       "record": record.relative_to(store.root).as_posix()}}
    if isinstance(value, RunConfig):
        ref: dict[str, Any] = {**class_ref(type(value)), "run_id": value.run_id}
        if value is not own:
            ref["fields"] = value.model_dump(mode="json")
        return {CONFIG: ref}
    if isinstance(value, PurePath):
        return {PATH: value.as_posix(), "sha256": file_digest(Path(value))}
    if isinstance(value, Env):
        return {ENV: value.model_dump(mode="json")}
    for tag, kind in TIMES.items():
        if type(value) is kind:
            return {tag: value.isoformat()}
    return {JSON: identity.canonical_json(value)}


def config_files(cfg: RunConfig) -> dict[str, dict[str, str]]:
    """The ``ds.File`` values of ``cfg`` (nested runs' too) by dotted field name: the
    path as written and the content digest its ids were made of."""
    return {name: {"path": value.as_posix(), "digest": value.content_digest()}
            for name, value in hashed_paths(cfg, "config")}


def describe(node: Node, store: Store, env: Env | None,
             configs: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The record fields that say what ``node`` is (``configs``: dumps by id(cfg), shared
    across the nodes of one submission)."""
    cfg = node.cfg
    config = None
    if cfg is not None:
        cache = configs if configs is not None else {}
        config = cache.get(id(cfg))
        if config is None:
            config = cache[id(cfg)] = cfg.model_dump(mode="json")
    fn = node.task.fn
    call = {"fn": node.task.location, **class_ref(fn), "code": code_digest(fn),
            "args": {p: encode(v, store, cfg) for p, v in node.arguments.items()}}
    files = config_files(cfg) if cfg is not None else {}
    if files:
        call["files"] = files
    return {
        "format": FORMAT,
        "label": str(getattr(cfg, "label", "") or "") if cfg is not None else "",
        "model": f"{type(cfg).__module__}.{type(cfg).__qualname__}" if cfg is not None
        else None,
        "config": config,
        "env": env.model_dump(mode="json") if env is not None else None,
        "call": call,
    }


# -- back from a record ------------------------------------------------------------------


#: Called with each file before it is loaded (each Python file an import would run);
#: raises to refuse it.
Gate = Callable[[Path], None]


def no_loading(file: Path) -> None:
    """The default gate: code a record names is never loaded."""
    raise ConfigError(f"{file} is not loaded: a record names it, and dscheduler loads no "
                      "code a store names (docs/design.md §15 Trust model)")


def load_object(ref: dict[str, Any], what: str, gate: Gate = no_loading) -> Any:
    """The function or class ``ref`` (:func:`class_ref`) names, from today's code: from
    modules already loaded, else from files ``gate`` lets through."""
    module_name, qualname, file = ref.get("module"), ref.get("qualname"), ref.get("file")
    if not isinstance(module_name, str) or not isinstance(qualname, str) or \
            not module_name or not qualname or not isinstance(file, str | None):
        raise ConfigError(f"the record names no {what}")
    module = loaded_module(module_name, file) if module_name != "__main__" else None
    if module is not None:
        pass
    elif module_name == "__main__" and not file:
        raise ConfigError(
            f"{what} {qualname} was defined in a notebook or an interactive session; run "
            "it again from there"
        )
    elif module_name == "__main__":
        raise ConfigError(
            f"{what} {qualname} was defined in the script {file}, run as __main__; loading "
            "it again would run the script: move it to a module, or run the script again"
        )
    elif module_name.startswith(BY_PATH_PREFIX):
        if not file or not Path(file).exists():
            raise ConfigError(f"{what} {qualname}: its file {file} is gone")
        gate(Path(file))
        module = load_file(Path(file))
    else:
        module = _import(module_name, file, what, gate)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"{what} {module_name}:{qualname} no longer exists")
    return obj


def _import(module_name: str, file: str | None, what: str, gate: Gate) -> Any:
    files = module_files(module_name)
    if files is not None:
        for found in files:
            gate(found)
        try:
            return importlib.import_module(module_name)
        except ImportError as err:
            raise ConfigError(f"{what}: cannot import {module_name} ({err})") from None
    if not file:
        raise ConfigError(f"{what}: no module {module_name} to import")
    # A module imported from a directory on the driver's sys.path (a test module, a
    # project not installed): its root is the file's ancestor the module's depth up.
    root = Path(file).resolve().parents[module_name.count(".")]
    if Path(file).name == "__init__.py":
        root = root.parent
    files = module_files(module_name, [str(root)])
    if files is None:
        raise ConfigError(f"{what}: no module {module_name} under {root}")
    for found in files:
        gate(found)
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{what}: cannot import {module_name} from {root} ({err})") from None
    finally:
        sys.path.remove(str(root))


def load_task(record: Record, gate: Gate = no_loading) -> Task[Any, Any]:
    """The Task whose function the record's call names, as the code defines it today."""
    call = record.call or {}
    obj = load_object(call, f"task {record.task!r}", gate)
    if not isinstance(obj, Task):
        raise ConfigError(
            f"{call.get('module')}:{call.get('qualname')} is no longer a @ds.task"
        )
    return obj


def decode(value: Any, store: Store, record: Record,
           built: dict[str, Node], gate: Gate = no_loading) -> Any:
    """Typed JSON -> the value (upstream nodes rebuilt from their records)."""
    if isinstance(value, list):
        return [decode(v, store, record, built, gate) for v in value]
    if not isinstance(value, dict):
        return value
    tag = next((k for k in value if k.startswith("\u0000")), None)
    if tag == TUPLE:
        return tuple(decode(v, store, record, built, gate) for v in value[TUPLE])
    if tag == NODE:
        ref = value[NODE]
        path = store.root / ref["record"]
        upstream = read_node(path)
        if upstream is None:
            raise StoreError(f"upstream {ref['name']} has no record at {path}")
        return rebuild(store, upstream, built, gate)
    if tag == CONFIG:
        ref = value[CONFIG]
        cls = load_object(ref, "config class", gate)
        if not (isinstance(cls, type) and issubclass(cls, RunConfig)):
            raise ConfigError(f"config class {ref.get('module')}:{ref.get('qualname')} is "
                              "not a RunConfig")
        fields = ref.get("fields", record.config)
        return cls.model_validate(fields)
    if tag == PATH:
        return Path(value[PATH])
    if tag == ENV:
        return Env(**value[ENV])
    if tag in TIMES:
        return TIMES[tag].fromisoformat(value[tag])
    if tag == JSON:
        import json

        return json.loads(value[JSON])
    return {k: decode(v, store, record, built, gate) for k, v in value.items()}


def rebuild(store: Store, record: Record, built: dict[str, Node] | None = None,
            gate: Gate = no_loading) -> Node:
    """The node ``record`` describes, made again from today's code and its recorded
    arguments (upstream nodes from their own records); code not loaded yet only from
    files ``gate`` lets through."""
    built = {} if built is None else built
    key = str(record.key)
    if key in built:
        return built[key]
    if record.call is None:
        raise ConfigError(
            f"the record of {record.name} keeps no call (written before records "
            "did); run its graph again instead"
        )
    task = load_task(record, gate)
    args = {p: decode(v, store, record, built, gate)
            for p, v in record.call["args"].items()}
    node = task(**args)
    built[key] = node
    return node
