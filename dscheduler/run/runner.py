"""Run one task inside an environment's Python (docs/design.md §5.4)::

    ENV/bin/python -s -m _dscheduler_runner PAYLOAD RESULT PARENT_PID

Run by the *env's* interpreter: the standard library and cloudpickle only
(:mod:`dscheduler.run.envcall` puts it, as ``_dscheduler_runner``, and cloudpickle on
``PYTHONPATH``).  PAYLOAD is a cloudpickle of ``(function, args, kwargs)``; RESULT receives,
atomically, a cloudpickle of ``("success", value, info)`` or ``("error", details, info)``.  The
process group ends when PARENT_PID (the dask worker) dies.  :class:`ConfigView` stands in for a
``RunConfig`` (same fields and ids, read-only, pickled by value).  Tracking (``ds.log_param``,
``log_metric``, ``set_tag``, ``log_artifact``, ``output``) lives here for both sides: the worker
sets :data:`CURRENT` to an in-memory :class:`Tracker`; in an env :func:`current` makes one from
the ``DSCHEDULER_*`` variables that appends a JSON line per call for the worker to merge.
:func:`to_exchange` returns arrays, dicts of arrays and xarray objects as ``.npy`` files and a
JSON manifest, never pickled; the worker makes Zarr of them (docs/design.md §11).
"""

from __future__ import annotations

import contextvars
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any


class ConfigView:
    """A read-only view of a RunConfig's fields and ids, usable without pydantic."""

    _ds_class: str
    _ds_fields: tuple[str, ...]

    def __init__(self, cls_name: str, fields: dict[str, Any], ids: dict[str, str]) -> None:
        object.__setattr__(self, "_ds_class", cls_name)
        object.__setattr__(self, "_ds_fields", tuple(fields))
        for name, value in {**fields, **ids}.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{self._ds_class} is read-only inside a task")

    def model_dump(self) -> dict[str, Any]:
        out = {}
        for name in self._ds_fields:
            value = getattr(self, name)
            out[name] = value.model_dump() if isinstance(value, ConfigView) else value
        return out

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._ds_fields)
        return f"{self._ds_class}({inner})"


# -- tracking inside a task --------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9_.:/ -]{1,250}$")
#: Environment variables through which the worker tells an env task where things go.
ENV_TRACKING, ENV_OUTPUT, ENV_FILES, ENV_ARTIFACTS = (
    "DSCHEDULER_TRACKING", "DSCHEDULER_OUTPUT", "DSCHEDULER_FILES", "DSCHEDULER_ARTIFACTS")


class Tracker:
    """Where one attempt's tracking calls and outputs go.

    ``log`` None keeps entries in :attr:`entries` (the worker's own thread);
    a path appends one JSON line per entry (an env subprocess, whose worker
    reads the file when it ends).  ``output``, ``files`` and ``artifacts`` are
    temporary directories, made on first use, that the worker publishes when
    the task succeeds.
    """

    def __init__(self, log: str | None, output: str, files: str, artifacts: str) -> None:
        self.log = log
        self.output_dir, self.files_dir, self.artifacts_dir = output, files, artifacts
        self.entries: list[dict[str, Any]] = []
        self.params: dict[str, Any] = {}
        self.made: set[str] = set()  # which of the three directories a call asked for
        self._lock = threading.Lock()

    def emit(self, entry: dict[str, Any]) -> None:
        with self._lock:
            if entry["kind"] == "param":
                name, value = entry["name"], entry["value"]
                if name in self.params and self.params[name] != value:
                    raise ValueError(
                        f"param {name!r} was already logged as {self.params[name]!r}, now "
                        f"{value!r}: a param is an input and keeps one value per task; log "
                        "a changing number with ds.log_metric"
                    )
                self.params[name] = value
            if self.log is None:
                self.entries.append(entry)
                return
            with open(self.log, "a") as f:
                f.write(json.dumps(entry) + "\n")


CURRENT: contextvars.ContextVar[Tracker | None] = contextvars.ContextVar(
    "dscheduler_tracker", default=None)
_from_environment: list[Tracker] = []


def current(what: str) -> Tracker:
    """The running task's Tracker; a RuntimeError naming ``what`` outside a task."""
    found = CURRENT.get()
    if found is not None:
        return found
    if os.environ.get(ENV_TRACKING):
        if not _from_environment:
            _from_environment.append(Tracker(
                os.environ[ENV_TRACKING], os.environ[ENV_OUTPUT], os.environ[ENV_FILES],
                os.environ[ENV_ARTIFACTS]))
        return _from_environment[0]
    raise RuntimeError(
        f"ds.{what}() works only inside a running task (a function called by "
        "ds.compute); outside one there is no record to keep it in"
    )


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"{what} name {name!r} is not allowed: use 1 to 250 letters, digits, spaces "
            "and _ . : / -"
        )
    return name


def _plain(value: Any, what: str) -> Any:
    """``value`` as a JSON value (numpy scalars as numbers); a TypeError naming ``what``."""
    if type(value).__module__.startswith("numpy") and hasattr(value, "item") \
            and getattr(value, "ndim", 1) == 0:
        value = value.item()
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"{what} is a {type(value).__qualname__}, which a record cannot keep: use a "
            "str, a number, a bool, None, or lists and dicts of them"
        ) from None
    _distinct_keys(value, what)
    return value


def _distinct_keys(value: Any, what: str) -> None:
    """A ValueError naming the place in ``value`` where two keys are one JSON key
    (``1`` and ``"1"``): the record would keep one.  (This module cannot import
    dscheduler's :func:`~dscheduler.store.records.key_collision`; it runs in envs.)"""
    stack: list[tuple[Any, str]] = [(value, what)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            seen: dict[str, Any] = {}
            for key, inner in item.items():
                text = key if isinstance(key, str) else json.dumps({key: 0})[2:-5]
                if text in seen:
                    raise ValueError(
                        f"{where}[{key!r}]: the keys {seen[text]!r} and {key!r} are both "
                        f"written as the JSON key {text!r}, so one would be lost; use "
                        "distinct str keys")
                seen[text] = key
                stack.append((inner, f"{where}[{key!r}]"))
        elif isinstance(item, list | tuple):
            stack.extend((x, f"{where}[{i}]") for i, x in enumerate(item))


def log_param(name: str, value: Any) -> None:
    """Record an input of this task: ``name`` -> a JSON value, one value per task."""
    tracker = current("log_param")
    tracker.emit({"kind": "param", "name": _check_name(name, "param"),
                  "value": _plain(value, f"param {name!r}")})


def log_metric(name: str, value: float, step: int | None = None) -> None:
    """Record a number this task measured; each call adds to its history (``step``)."""
    tracker = current("log_metric")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"metric {name!r}: {value!r} is not a number") from None
    if step is not None and not isinstance(step, int):
        step = int(_plain(step, f"step of metric {name!r}"))
    tracker.emit({"kind": "metric", "name": _check_name(name, "metric"), "value": number,
                  "step": step, "time": round(time.time(), 3)})


def set_tag(name: str, value: Any) -> None:
    """Label this task's record: ``name`` -> ``str(value)``; the last call wins."""
    tracker = current("set_tag")
    tracker.emit({"kind": "tag", "name": _check_name(name, "tag"), "value": str(value)})


def log_artifact(path: str | os.PathLike[str], name: str | None = None) -> str:
    """Copy a file or directory into this task's artifacts; the name it is kept under.

    The copy is published with the task's outputs (``{task}.artifacts/{name}``)
    when the task succeeds.
    """
    tracker = current("log_artifact")
    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"ds.log_artifact: no file or directory {source}")
    target_name = _check_name(name or source.name, "artifact")
    if "/" in target_name or target_name.startswith("."):
        raise ValueError(f"artifact name {target_name!r} must be one path component")
    folder = Path(tracker.artifacts_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tracker.made.add(tracker.artifacts_dir)
    target = folder / target_name
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    else:
        shutil.copyfile(source, target)
        size = target.stat().st_size
    tracker.emit({"kind": "artifact", "name": target_name, "bytes": size})
    return target_name


def output(kind: str = "zarr") -> Path:
    """A directory for this task's result, published only when the task succeeds.

    ``"zarr"``: write a Zarr group there (``dataset.to_zarr(ds.output())``) and
    return None; it becomes ``{task}.zarr``.  ``"dir"``: any files, kept as
    ``{task}.files/`` beside the returned value.
    """
    tracker = current("output")
    if kind not in ("zarr", "dir"):
        raise ValueError(f"ds.output({kind!r}): kind must be 'zarr' or 'dir'")
    folder = Path(tracker.output_dir if kind == "zarr" else tracker.files_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tracker.made.add(str(folder))
    return folder


def __getattr__(name: str) -> Any:
    """``ds.X`` inside an env, for an X the env does not have: say what it has."""
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError(
        f"ds.{name} is not available inside an env (the env has neither dscheduler nor "
        "pydantic); a task there can call ds.log_param, ds.log_metric, ds.set_tag, "
        "ds.log_artifact and ds.output"
    )


# -- values back to the worker, without pickled arrays ---------------------------------

EXCHANGE = "\u0000dscheduler-exchange"


def _is_numpy_array(value: Any) -> bool:
    return type(value).__module__.startswith("numpy") and type(value).__name__ in (
        "ndarray", "memmap")


def _save_npy(array: Any, folder: Path, name: str, what: str) -> str:
    import numpy

    try:
        numpy.save(folder / f"{name}.npy", numpy.asarray(array), allow_pickle=False)
    except ValueError as err:
        raise TypeError(
            f"{what} has dtype {numpy.asarray(array).dtype}, which cannot leave the env "
            f"without pickling ({err}); convert it to numbers, strings or datetimes"
        ) from None
    return f"{name}.npy"


def _attrs(attrs: dict[Any, Any], what: str) -> dict[str, Any]:
    out = {}
    for key, value in attrs.items():
        if _is_numpy_array(value):
            value = value.tolist()
        out[str(key)] = _plain(value, f"attribute {key!r} of {what}")
    return out


def to_exchange(value: Any, folder: Path) -> Any:
    """``value`` with its arrays written to ``folder`` (``.npy`` plus a manifest)."""
    module = type(value).__module__
    if _is_numpy_array(value):
        folder.mkdir(exist_ok=True)
        return {EXCHANGE: {"type": "numpy.ndarray", "file": _save_npy(value, folder, "0",
                                                                        "the array")}}
    if isinstance(value, dict) and value and all(
            isinstance(k, str) and _is_numpy_array(v) for k, v in value.items()):
        folder.mkdir(exist_ok=True)
        files = {k: _save_npy(v, folder, str(i), f"array {k!r}")
                 for i, (k, v) in enumerate(value.items())}
        return {EXCHANGE: {"type": "dict", "files": files}}
    if module.startswith("xarray") and type(value).__name__ in ("Dataset", "DataArray"):
        folder.mkdir(exist_ok=True)
        name = None
        if type(value).__name__ == "DataArray":
            name = value.name
            value = value.to_dataset(name="__xarray_dataarray_variable__")
            kind = "xarray.DataArray"
        else:
            kind = "xarray.Dataset"
        variables = []
        for i, (var_name, var) in enumerate(value.variables.items()):
            variables.append({
                "name": str(var_name), "dims": [str(d) for d in var.dims],
                "attrs": _attrs(dict(var.attrs), f"variable {var_name!r}"),
                "coord": var_name in value.coords,
                "file": _save_npy(var.values, folder, str(i), f"variable {var_name!r}"),
            })
        return {EXCHANGE: {"type": kind, "name": name, "variables": variables,
                           "attrs": _attrs(dict(value.attrs), "the dataset")}}
    return _scalars(value)


def _scalars(value: Any) -> Any:
    """Numpy scalars in plain containers -> numbers; an array there is an error."""
    if isinstance(value, list | tuple):
        items = [_scalars(v) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        return {k: _scalars(v) for k, v in value.items()}
    if type(value).__module__.startswith("numpy"):
        if _is_numpy_array(value):
            raise TypeError(
                "the task returned a numpy array inside a list or a dict with other "
                "values; return the array itself, a dict of arrays or an xarray object"
            )
        if hasattr(value, "item"):
            return value.item()
    return value


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            # Reparented: the worker died.  Take our own children with us.
            os.killpg(os.getpgid(0), signal.SIGKILL)


def main(argv: list[str]) -> int:
    payload_path, result_path, parent = argv[1], argv[2], int(argv[3])
    # Task code refers to this module as `_dscheduler_runner` (see envcall): one copy.
    sys.modules.setdefault("_dscheduler_runner", sys.modules[__name__])
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    import cloudpickle

    start = time.time()
    code = 0
    try:
        with open(payload_path, "rb") as f:
            fn, args, kwargs = cloudpickle.load(f)
        start = time.time()
        value = fn(*args, **kwargs)
        info = {"seconds": time.time() - start}
        value = to_exchange(value, Path(result_path).with_name("exchange"))
        try:
            data = cloudpickle.dumps(("success", value, info))
        except Exception as err:
            raise TypeError(
                f"the task's return value ({type(value).__qualname__}) cannot be pickled "
                f"back to the worker: {err}"
            ) from err
    except BaseException as err:  # the task's own failure, reported, never re-raised
        code = 1
        details = {
            "type": f"{type(err).__module__}.{type(err).__qualname__}",
            "message": str(err),
            "traceback": traceback.format_exc(),
        }
        data = cloudpickle.dumps(("error", details, {"seconds": time.time() - start}))
    tmp = f"{result_path}.partial"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, result_path)
    sys.stdout.flush()
    sys.stderr.flush()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
