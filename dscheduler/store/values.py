"""Persisting a task's return value in its output directory, and reading it back.

=====================================  ===========================================
returned value                         stored as
=====================================  ===========================================
``numpy.ndarray``                      ``{task}.zarr`` (a zarr v3 array)
``xarray.Dataset`` / ``DataArray``     ``{task}.zarr`` (a zarr v3 group, unconsolidated)
JSON values (None, bool, numbers,      ``{task}.value.json`` (numpy scalars become
str, lists, dicts with str keys)       numbers; tuples come back as lists)
anything else                          an error that names the type and the fix
=====================================  ===========================================

Anything else is refused rather than pickled: a pickle ties the result to the
library versions that wrote it, and results must stay readable by
``xarray.open_zarr`` years later.  Zarr outputs are written to a temporary
sibling directory and renamed into place (:func:`atomic.publish_dir`); JSON
through :func:`atomic.write_bytes`.  The returned description goes into the
node's record, which is written after the output.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

from .. import settings
from ..errors import StoreError, TaskError
from . import atomic
from .layout import NodePaths
from .records import damaged

DATAARRAY_VARIABLE = "__xarray_dataarray_variable__"


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(type(obj).__name__)


def remove_partials(paths: NodePaths) -> None:
    """Delete temporary siblings left by an attempt that was killed mid-write."""
    if not paths.dir.is_dir():
        return
    for prefix in (f".{paths.zarr.name}.", f".{paths.value.name}."):
        for stale in paths.dir.glob(prefix + "*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def save_value(paths: NodePaths, value: Any) -> dict[str, Any]:
    """Store ``value`` in ``paths`` and describe how, for the record."""
    kind = _zarr_kind(value)
    if kind is not None:
        with atomic.publish_dir(paths.zarr) as tmp:
            if kind == "numpy.ndarray":
                import zarr

                zarr.save_array(str(tmp), value, zarr_format=3)
            else:
                ds = value.to_dataset(name=DATAARRAY_VARIABLE) if kind == "xarray.DataArray" \
                    else value
                ds.to_zarr(str(tmp), mode="w", zarr_format=3, consolidated=False)
        atomic.remove(paths.value)  # an output of another kind, left by an earlier result
        out: dict[str, Any] = {"kind": "zarr", "type": kind, "path": paths.zarr.name}
        if kind == "xarray.DataArray":
            out["name"] = value.name
        return out
    try:
        text = json.dumps(value, default=_json_default)
    except (TypeError, ValueError) as err:
        raise TaskError(
            f"the task returned a {type(value).__module__}.{type(value).__qualname__}, which "
            f"dscheduler cannot store ({err}); return a numpy array, an xarray Dataset or "
            "DataArray (Zarr), or JSON values: None, bool, numbers, str, lists and dicts with "
            "str keys (e.g. convert a pandas DataFrame with df.to_xarray())"
        ) from None
    atomic.write_bytes(paths.value, (text + "\n").encode(),
                       durable=bool(settings.get("task.fsync")))
    atomic.remove(paths.zarr)
    return {"kind": "json", "path": paths.value.name}


def _zarr_kind(value: Any) -> str | None:
    module = type(value).__module__
    if module.startswith("numpy"):
        import numpy as np

        if isinstance(value, np.ndarray):
            return "numpy.ndarray"
    if module.startswith("xarray"):
        import xarray as xr

        if isinstance(value, xr.Dataset):
            return "xarray.Dataset"
        if isinstance(value, xr.DataArray):
            return "xarray.DataArray"
    return None


def load_value(paths: NodePaths, output: dict[str, Any] | None, *, load: bool = False) -> Any:
    """The value described by a record's ``output``.

    Zarr results open lazily (without dask, so nothing is sent to a cluster by
    accident); ``load=True`` reads them into memory (for passing downstream).
    """
    if not isinstance(output, dict) or "path" not in output:
        raise damaged(paths.record, "it describes no stored output")
    path = paths.dir / output["path"]
    try:
        if output.get("kind") == "json":
            with open(path, "rb") as f:
                return json.loads(f.read())
        kind = output.get("type")
        if kind == "numpy.ndarray":
            import zarr

            return zarr.open_array(str(path), mode="r")[...]
        import xarray as xr

        ds = xr.open_dataset(str(path), engine="zarr", consolidated=False, chunks=None)
        if load:
            ds = ds.load()
    except FileNotFoundError:
        raise damaged(path, "missing, though the record says it was stored") from None
    except (ValueError, OSError, KeyError) as err:
        if isinstance(err, StoreError):
            raise
        raise damaged(path, err) from None
    if kind == "xarray.DataArray":
        da = ds[DATAARRAY_VARIABLE]
        return da.rename(output.get("name"))
    return ds
