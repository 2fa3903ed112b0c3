"""Calling a task's function inside its env: a subprocess of the env's Python.

The env is mounted (:func:`dscheduler.mount.mount`), the function and its
arguments are written as a cloudpickle, and ``ENV/bin/python -m
_dscheduler_runner PAYLOAD RESULT`` runs it in its own process group, with
stdout and stderr appended to the node's log, killed on timeout or when its
submission is cancelled.  Inside the env, a RunConfig argument arrives as a
read-only ``ConfigView`` (same fields and ids): the env has neither
dscheduler nor pydantic.  References to ``dscheduler`` in the task's code
(``ds.log_metric``, ``ds.output``) are pickled as references to the runner
module, which implements them there (:class:`EnvPickler`); the tracking file
the runner writes is merged into the worker's Tracker, and arrays come back
as ``.npy`` files, never pickled (:func:`from_exchange`, docs/design.md §11).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cloudpickle

from .. import settings
from ..envs import BuiltEnv, mount
from ..envs.commands import clean_env
from ..errors import TaskError
from ..graph import RunConfig
from ..graph.files import HashedPath
from ..store import atomic
from ..store.record import Attempt
from ..store.values import DATAARRAY_VARIABLE
from . import runner
from .payload import SourcePickler, dumps, map_nested

if TYPE_CHECKING:
    from .nodespec import NodeSpec


def _view(value: Any) -> Any:
    """A RunConfig -> a ConfigView (the env has no pydantic); anything else as is."""
    if not isinstance(value, RunConfig):
        return value
    fields = {name: _views(getattr(value, name)) for name in type(value).model_fields}
    ids = {"env_id": value.env_id, "config_hash": value.config_hash, "run_id": value.run_id}
    return runner.ConfigView(type(value).__name__, fields, ids)


def _unannotated(fn: Any) -> Any:
    """A copy of ``fn`` without annotations, for pickling by value into an env.

    ``def forecast(cfg: Forecast, ...)`` in a notebook holds the RunConfig
    class itself in ``__annotations__``; cloudpickle would ship that class,
    and unpickling it needs pydantic, which the env does not have.  Nothing
    at run time reads the annotations, so they stay behind.
    """
    if not isinstance(fn, types.FunctionType) or not fn.__annotations__:
        return fn
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                              fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__qualname__ = fn.__qualname__
    copy.__module__ = fn.__module__
    copy.__doc__ = fn.__doc__
    copy.__dict__.update(fn.__dict__)
    return copy


def _views(value: Any) -> Any:
    return map_nested(value, _view)


_TRACKING_NAMES = ("log_param", "log_metric", "set_tag", "log_artifact", "output")


class EnvPickler(SourcePickler):
    """cloudpickle, with ``dscheduler`` (the module and its tracking functions) pickled
    as the runner module ``_dscheduler_runner``, which is what an env has of it."""

    def reducer_override(self, obj: Any) -> Any:
        if obj is sys.modules.get("dscheduler") or obj is runner:
            return importlib.import_module, ("_dscheduler_runner",)
        if isinstance(obj, HashedPath):  # a ds.File value: a plain Path in the env
            return Path, (str(obj),)
        if isinstance(obj, types.FunctionType) and obj.__module__ == runner.__name__:
            name = obj.__name__
            if name in _TRACKING_NAMES and getattr(runner, name) is obj:
                return getattr, (runner, name)
        return super().reducer_override(obj)


def from_exchange(value: Any, folder: Path) -> Any:
    """A value the runner returned, with arrays read back from its ``.npy`` files."""
    if not (isinstance(value, dict) and set(value) == {runner.EXCHANGE}):
        return value
    import numpy as np

    manifest = value[runner.EXCHANGE]

    def read(name: str) -> Any:
        return np.load(folder / name, allow_pickle=False)

    kind = manifest["type"]
    if kind == "numpy.ndarray":
        return read(manifest["file"])
    if kind == "dict":
        return {key: read(name) for key, name in manifest["files"].items()}
    import xarray as xr

    data_vars: dict[str, Any] = {}
    coords: dict[str, Any] = {}
    for var in manifest["variables"]:
        target = coords if var["coord"] else data_vars
        target[var["name"]] = xr.Variable(var["dims"], read(var["file"]), attrs=var["attrs"])
    dataset = xr.Dataset(data_vars, coords=coords, attrs=manifest["attrs"])
    if kind == "xarray.DataArray":
        return dataset[DATAARRAY_VARIABLE].rename(manifest["name"])
    return dataset


def _merge_tracking(path: Path, tracker: runner.Tracker | None) -> None:
    """Add the env's tracking lines to the worker's Tracker (a torn last line is skipped)."""
    if tracker is None or not path.exists():
        return
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            tracker.entries.append(json.loads(line))


def runner_dir() -> Path:
    """A node-local directory holding only cloudpickle and ``_dscheduler_runner``.

    The env's Python must unpickle the payload, but envs are built from the
    user's requirements and do not have cloudpickle.  Putting the driver's
    pure-Python cloudpickle (and nothing else: no dscheduler, no numpy) on
    the subprocess's ``PYTHONPATH`` gives it that one package without
    touching the env or shadowing anything the env has.  Made once per node
    and version (create-once rename: a concurrent maker's copy is dropped).
    The base is checked on every call (one ``lstat``): a copy another user
    planted there would run in every env task (docs/design.md §15).
    """
    source = Path(runner.__file__).read_bytes()
    tag = hashlib.sha256(source + cloudpickle.__version__.encode()).hexdigest()[:12]
    base = settings.node_local("task.runner_dir", "dscheduler-runner")
    final = base / f"{cloudpickle.__version__}-{tag}"
    if final.is_dir():
        return final
    tmp = atomic.temp_sibling(final)
    tmp.mkdir()
    try:
        shutil.copytree(Path(cloudpickle.__file__).parent, tmp / "cloudpickle",
                        ignore=shutil.ignore_patterns("__pycache__"))
        (tmp / "_dscheduler_runner.py").write_bytes(source)
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _subprocess_env(runner_path: Path, spec: NodeSpec, tracking: Path,
                    tracker: runner.Tracker | None) -> dict[str, str]:
    places = {} if tracker is None else {
        runner.ENV_TRACKING: str(tracking), runner.ENV_OUTPUT: tracker.output_dir,
        runner.ENV_FILES: tracker.files_dir, runner.ENV_ARTIFACTS: tracker.artifacts_dir,
    }
    return clean_env(
        PYTHONPATH=str(runner_path),  # only cloudpickle and the runner: see runner_dir()
        PYTHONNOUSERSITE="1",
        PYTHONUNBUFFERED="1",
        DSCHEDULER_NODE=spec.name,
        DSCHEDULER_NODE_DIR=str(spec.paths.dir),
        DSCHEDULER_STORE=str(spec.store.root),
        **places,
    )


def call_in_env(spec: NodeSpec, built: BuiltEnv, attempt: Attempt, fn: Any,
                args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run ``fn(*args, **kwargs)`` in a subprocess of ``built``'s Python; its value.

    Notes the subprocess's pid and exit code in ``attempt``; a failure in the
    function, a timeout, a cancellation or a killed process raise TaskError.
    """
    runner_path = runner_dir()
    timeout = settings.get("task.timeout", spec.timeout)
    with tempfile.TemporaryDirectory(prefix="dscheduler-task-") as tmp:
        payload, result = Path(tmp) / "payload.pkl", Path(tmp) / "result.pkl"
        payload.write_bytes(dumps((_unannotated(fn), _views(args), _views(kwargs)),
                                  extra=(runner,), pickler=EnvPickler))
        tracker, tracking = runner.CURRENT.get(), Path(tmp) / "tracking.jsonl"
        with mount(built, spec.store) as prefix, \
                open(atomic.open_append(spec.paths.log), "ab") as log:
            log.write(f"=== {spec.name} attempt {attempt.attempt} {attempt.start} on "
                      f"{attempt.host} ===\n".encode())
            log.flush()
            cmd = [str(Path(prefix) / "bin" / "python"), "-s", "-m", "_dscheduler_runner",
                   str(payload), str(result), str(os.getpid())]
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=_subprocess_env(runner_path, spec, tracking, tracker), start_new_session=True,
            )
            attempt.subprocess_pid = proc.pid
            stop = threading.Event()
            watcher = threading.Thread(target=_watch_cancel, args=(spec, proc, stop),
                                       daemon=True)
            watcher.start()
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                code = proc.wait()
                attempt.exit_code = code
                raise TaskError(f"timed out after {timeout} s (setting task.timeout or "
                                "the task's timeout option); the process group was killed") \
                    from None
            finally:
                stop.set()
                _merge_tracking(tracking, tracker)
        attempt.exit_code = code
        if not result.exists():
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            raise TaskError(f"the task's process ended without a result ({how}); "
                            f"see its log {spec.paths.log}")
        status, value, info = cloudpickle.loads(result.read_bytes())
        if status == "success":
            value = from_exchange(value, Path(tmp) / "exchange")
    attempt.function_seconds = round(float(info.get("seconds", 0.0)), 4)
    if status == "error":
        attempt.error = f"{value['type']}: {value['message']}"
        attempt.traceback = value["traceback"]
        raise TaskError(attempt.error)
    return value


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _watch_cancel(spec: NodeSpec, proc: subprocess.Popen[bytes], stop: threading.Event) -> None:
    """Kill the task's process group once its submission is cancelled."""
    poll = float(settings.get("task.cancel_poll"))
    while not stop.wait(poll):
        if proc.poll() is not None:
            return
        if spec.cancel_path.exists():
            _kill_group(proc)
            return
