"""Run one task inside an environment's Python.

::

    ENV/bin/python -s -m _dscheduler_runner PAYLOAD RESULT PARENT_PID

This file is executed by the *environment's* interpreter, which has neither
dscheduler nor pydantic, so it imports only the standard library and
cloudpickle.  :mod:`dscheduler.run.envcall` copies it (as the top-level module
``_dscheduler_runner``) together with the driver's pure-Python cloudpickle
package into a node-local directory put on ``PYTHONPATH``.

PAYLOAD is a cloudpickle of ``(function, args, kwargs)``; RESULT receives a
cloudpickle of ``("success", value, info)`` or ``("error", details, info)``,
written to a temporary name and renamed, so a result file is never partial.
A watchdog thread ends the process group when the parent (the dask worker)
dies, so a killed worker leaves no task running behind it.

:class:`ConfigView` stands in for a ``RunConfig`` argument in the env: the
same field values and ids as attributes, read-only, without pydantic.  It is
pickled by value (the env cannot import this module under ``dscheduler.``).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
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


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            # Reparented: the worker died.  Take our own children with us.
            os.killpg(os.getpgid(0), signal.SIGKILL)


def main(argv: list[str]) -> int:
    payload_path, result_path, parent = argv[1], argv[2], int(argv[3])
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
