"""Persisting a task's return value in its output directory, and reading it back.

=====================================  ===========================================
returned value                         stored as
=====================================  ===========================================
``numpy.ndarray``                      ``{task}.zarr``: one array, dims ``dim_0, ...``
dict of numpy arrays (str keys)        ``{task}.zarr``: one array per key
``xarray.Dataset`` / ``DataArray``     ``{task}.zarr``
``None`` after ``ds.output()``         ``{task}.zarr`` as the task wrote it
JSON values, numpy scalars             in the record up to :data:`INLINE_BYTES`, else
                                       ``{task}.value.json`` (tuples come back as lists)
anything else                          an error naming the type and the fix (no pickle)
=====================================  ===========================================

Zarr values: v3 groups, zstd, :func:`chunks_for`; renamed into place before their record (§3, §11).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import settings
from ..errors import StoreError, TaskError
from . import atomic
from .layout import NodePaths
from .records import JSONFormError, damaged, dumps, has_non_str_keys, key_collision, loads

DATAARRAY_VARIABLE = "__xarray_dataarray_variable__"

#: Encoding keys of a variable that say how its values are encoded (CF), kept on
#: write; the rest (chunks, codecs of the store it was read from) is decided here.
_CF_ENCODING = ("units", "calendar", "dtype", "_FillValue", "missing_value",
                "scale_factor", "add_offset")


#: Longest JSON text of a value kept in its record (``output: {"kind": "json", "inline":
#: TEXT}``) rather than in ``{task}.value.json``: a tiny task's value then costs no file
#: of its own, and the record's rename publishes both at once (docs/design.md §14.2).
INLINE_BYTES = 1024


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(type(obj).__name__)


def remove_partials(paths: NodePaths) -> None:
    """Delete temporary siblings left by an attempt that was killed mid-write."""
    if not paths.dir.is_dir():
        return
    for out in paths.outputs:
        for stale in paths.dir.glob(f".{out.name}.*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def zarr_kind(value: Any) -> str | None:
    """How ``value`` is stored as Zarr (its ``type`` in the record), or None: not as Zarr."""
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
    if isinstance(value, dict) and value and all(
            isinstance(k, str) and type(v).__module__.startswith("numpy")
            and hasattr(v, "shape") for k, v in value.items()):
        return "dict"
    return None


def chunks_for(shape: tuple[int, ...], itemsize: int, target: int | None = None
               ) -> tuple[int, ...]:
    """Chunk shape of about ``target`` bytes (setting ``results.chunk_mb``).

    Trailing axes stay whole while they fit, so that a chunk is one contiguous
    block of the array; the first axis that does not fit is split.
    """
    if target is None:
        target = int(float(settings.get("results.chunk_mb")) * 2**20)
    chunks = list(shape)
    size = max(1, itemsize)
    for axis in range(len(shape) - 1, -1, -1):
        n = max(1, shape[axis])
        if size * n > target:
            chunks[axis] = max(1, target // size)
            for earlier in range(axis):
                chunks[earlier] = 1
            break
        size *= n
    return tuple(max(1, c) for c in chunks)


def as_dataset(value: Any, kind: str) -> Any:
    """The xarray Dataset that stores ``value`` (of :func:`zarr_kind` ``kind``)."""
    import xarray as xr

    if kind == "xarray.Dataset":
        return value
    if kind == "xarray.DataArray":
        return value.to_dataset(name=DATAARRAY_VARIABLE)
    if kind == "numpy.ndarray":
        dims = [f"dim_{i}" for i in range(value.ndim)]
        return xr.Dataset({DATAARRAY_VARIABLE: (dims, value)})
    # A dict of arrays: axis i of each array is dim_i when every array with an
    # axis i agrees on its size, else {name}_dim_i (xarray needs one size per dim).
    sizes: dict[int, set[int]] = {}
    for array in value.values():
        for i, n in enumerate(array.shape):
            sizes.setdefault(i, set()).add(n)
    variables = {
        name: ([f"dim_{i}" if len(sizes[i]) == 1 else f"{name}_dim_{i}"
                for i in range(array.ndim)], array)
        for name, array in value.items()
    }
    return xr.Dataset(variables)


@contextlib.contextmanager
def _quiet_zarr() -> Iterator[None]:
    """Hide zarr's notes that consolidated metadata and fixed-length strings are not yet
    in the v3 specification: both are zarr-python's documented, readable forms."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Consolidated metadata is currently")
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")
        yield


def write_zarr(dataset: Any, path: Path, *, compute: bool = True) -> Any:
    """Write ``dataset`` to the (empty or missing) directory ``path`` as zarr v3.

    Chunks per :func:`chunks_for` (dask-backed variables keep their dask
    chunks), zstd at setting ``results.zstd_level``, consolidated metadata.
    ``compute=False`` writes the metadata (and variables not backed by dask)
    now and returns the dask delayed that writes the rest.
    """
    from zarr.codecs import ZstdCodec

    level = int(settings.get("results.zstd_level"))
    dataset = dataset.copy(deep=False)
    encoding: dict[str, dict[str, Any]] = {}
    for name, variable in dataset.variables.items():
        variable.encoding = {k: v for k, v in variable.encoding.items() if k in _CF_ENCODING}
        enc: dict[str, Any] = {"compressors": (ZstdCodec(level=level),)}
        if variable.chunks is None and variable.ndim:
            enc["chunks"] = chunks_for(variable.shape, variable.dtype.itemsize)
        encoding[str(name)] = enc
    with _quiet_zarr():
        # Every chunk is written, fill values too (zarr skips them by default), so that
        # a missing chunk file is damage that verify and load_value can see.
        return dataset.to_zarr(str(path), mode="w", zarr_format=3, consolidated=True,
                               encoding=encoding, compute=compute, write_empty_chunks=True)


def consolidate(path: Path) -> None:
    """Consolidate the metadata of the Zarr group a task wrote at ``path`` (v2 or v3)."""
    import zarr

    with _quiet_zarr():
        zarr.consolidate_metadata(str(path))


def save_value(paths: NodePaths, value: Any, *, fresh: bool = False,
               new_dir: bool = False) -> dict[str, Any]:
    """Store ``value`` in ``paths`` and describe how, for the record.

    ``fresh``: the node has no earlier result, so no output of the other kind
    is looked for (a round trip on a shared filesystem).  ``new_dir``: the
    attempt made the node's directory under its lease, so no record there
    can name the value before the attempt's own, written after it: a JSON
    value is written in place, without a temporary name and a rename
    (docs/design.md §14.2).
    """
    kind = zarr_kind(value)
    if kind is not None:
        dataset = as_dataset(value, kind)
        with atomic.publish_dir(paths.zarr) as tmp:
            write_zarr(dataset, tmp)
            atomic.fix_tree(tmp)  # zarr writes with open(): the umask's modes
        if not fresh:
            atomic.remove(paths.value)  # an output of another kind, left by an earlier result
        out: dict[str, Any] = {"kind": "zarr", "type": kind, "path": paths.zarr.name,
                               "zarr_format": 3, "all_chunks": True}
        if kind == "xarray.DataArray":
            out["name"] = value.name
        return out
    try:
        if isinstance(value, dict | list | tuple) and has_non_str_keys(value):
            collision = key_collision(value)
            if collision is not None:
                raise collision
        text = dumps(value, default=_json_default)
    except JSONFormError as err:
        raise TaskError(f"the task returned a value dscheduler cannot store without loss: "
                        f"{err}") from None
    except (TypeError, ValueError) as err:
        raise TaskError(
            f"the task returned a {type(value).__module__}.{type(value).__qualname__}, which "
            f"dscheduler cannot store ({err}); return a numpy array, a dict of arrays, an "
            "xarray Dataset or DataArray (Zarr), or JSON values: None, bool, numbers, str, "
            "lists and dicts with str keys (e.g. convert a pandas DataFrame with "
            "df.to_xarray())"
        ) from None
    if not fresh:
        atomic.remove(paths.zarr)
    if len(text) <= INLINE_BYTES:
        if not fresh:
            atomic.remove(paths.value)
        return {"kind": "json", "inline": text}
    data, durable = (text + "\n").encode(), bool(settings.get("task.fsync"))
    if new_dir:
        atomic.write_new(paths.value, data, durable=durable)
    else:
        atomic.write_bytes(paths.value, data, durable=durable)
    return {"kind": "json", "path": paths.value.name}


def commit_written(paths: NodePaths, tmp: Path) -> dict[str, Any]:
    """Publish the Zarr group a task wrote into ``tmp`` (``ds.output()``) as ``{task}.zarr``."""
    if not any(tmp.glob("zarr.json")) and not any(tmp.glob(".zgroup")):
        raise TaskError(
            f"the task wrote to ds.output() ({tmp}) but left no Zarr group there (no "
            "zarr.json or .zgroup): write one with ds.to_zarr(ds.output()), or use "
            "ds.output('dir') for other files"
        )
    consolidate(tmp)
    atomic.fix_tree(tmp)
    atomic.replace_dir(tmp, paths.zarr)
    atomic.remove(paths.value)
    return {"kind": "zarr", "type": "zarr.group", "path": paths.zarr.name}


def commit_dir(tmp: Path, final: Path) -> str | None:
    """Publish a directory of files (``ds.output("dir")``, artifacts); its name, or None
    when ``tmp`` was never made."""
    if not tmp.is_dir():
        atomic.remove(final)
        return None
    atomic.fix_tree(tmp)
    atomic.replace_dir(tmp, final)
    return final.name


def open_zarr(path: Path, *, chunks: Any = None) -> Any:
    """The Zarr group at ``path`` as an xarray Dataset, lazily (``chunks={}``: dask)."""
    import xarray as xr

    return xr.open_dataset(str(path), engine="zarr", chunks=chunks)


def _chunk_keys(meta: dict[str, Any]) -> tuple[list[str], str] | None:
    """(the key of every chunk in the grid, the separator) of a zarr v3 array's metadata;
    None for a grid this check does not know (not ``regular``)."""
    grid = meta.get("chunk_grid") or {}
    encoding = meta.get("chunk_key_encoding") or {}
    if grid.get("name") != "regular" or encoding.get("name") not in ("default", "v2"):
        return None
    shape, chunk = meta["shape"], grid["configuration"]["chunk_shape"]
    default = encoding["name"] == "default"
    sep = (encoding.get("configuration") or {}).get("separator", "/" if default else ".")
    counts = [math.ceil(n / c) for n, c in zip(shape, chunk, strict=True)]
    prefix = ["c"] if default else []
    if not shape:
        return [sep.join(prefix) or "0"], sep
    return [sep.join(prefix + [str(i) for i in index])
            for index in itertools.product(*map(range, counts))], sep


def _files_under(folder: Path) -> set[str]:
    """Every file under ``folder``, as paths relative to it ('/'-separated)."""
    found: set[str] = set()
    for top, _dirs, files in os.walk(folder):
        rel = os.path.relpath(top, folder)
        found.update(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/")
                     for name in files)
    return found


def array_metadata(path: Path, root: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Metadata of each array of the zarr v3 group at ``path``, by name: from its
    consolidated metadata, else from each child's ``zarr.json``.  ``root``: the group's
    ``zarr.json`` when the caller has read it already (each read is a round trip)."""
    if root is None:
        root = json.loads((path / "zarr.json").read_bytes())
    consolidated = ((root.get("consolidated_metadata") or {}).get("metadata")) or {}
    if consolidated:
        return {name: meta for name, meta in consolidated.items()
                if meta.get("node_type") == "array" and "/" not in name}
    out = {}
    for child in os.scandir(path):
        if child.is_dir():
            meta = json.loads(Path(child.path, "zarr.json").read_bytes())
            if meta.get("node_type") == "array":
                out[child.name] = meta
    return out


def missing_chunks(path: Path, root: dict[str, Any] | None = None) -> str | None:
    """Which chunk files of the zarr v3 group at ``path`` are missing (one listing per
    array), as text naming the array and its first missing chunk; None when none is.

    Only for values written with every chunk (record ``all_chunks``): zarr leaves
    out chunks that hold only the fill value unless told otherwise.  ``root``: as for
    :func:`array_metadata`.
    """
    for name, meta in sorted(array_metadata(path, root).items()):
        keys = _chunk_keys(meta)
        if keys is None:
            continue
        expected, sep = keys
        present = _files_under(path / name)
        gone = [k for k in expected if k.replace(sep, "/") not in present]
        if gone:
            return (f"array {name!r}: chunk {gone[0]} is missing ({len(gone)} of "
                    f"{len(expected)} chunks missing; expected at {path / name / gone[0]})")
    return None


def unreadable_chunk(path: Path) -> str | None:
    """The first chunk of the Zarr group at ``path`` that cannot be read and decoded
    (every chunk of every array is read, one at a time), as text naming the array and
    chunk; None when all can."""
    import zarr

    with _quiet_zarr():
        group = zarr.open_group(str(path), mode="r")
        for name, array in sorted(group.arrays()):
            counts = [math.ceil(n / c) for n, c in zip(array.shape, array.chunks,
                                                       strict=True)]
            for index in itertools.product(*map(range, counts)):
                try:
                    array.get_block_selection(index)
                except Exception as err:  # any codec's failure: the chunk is unreadable
                    chunk = ("/".join(["c", *map(str, index)])
                             if array.metadata.zarr_format == 3
                             else ".".join(map(str, index)) or "0")
                    return (f"array {name!r}: chunk {chunk} cannot be read "
                            f"({type(err).__name__}: {err})")
    return None


def inline_text(output: Any) -> str | None:
    """The JSON text of a value kept in its record (a record's ``output``), else None."""
    if isinstance(output, dict) and output.get("kind") == "json" and "inline" in output:
        return str(output["inline"])
    return None


def load_value(paths: NodePaths, output: dict[str, Any] | None, *, load: bool = False,
               view: bool = False, chunks: Any = None) -> Any:
    """The value described by a record's ``output``.

    Zarr results open lazily, without dask unless ``chunks`` says so (nothing is
    sent to a cluster by accident); ``load=True`` reads them into memory (for
    passing downstream).  A value comes back as the task returned it (a numpy
    array, a dict of arrays); ``view=True`` gives the xarray form instead.
    """
    text = inline_text(output)
    if text is not None:
        try:
            return loads(text)
        except ValueError as err:
            raise damaged(paths.record, f"its value is unreadable ({err})") from None
    if not isinstance(output, dict) or "path" not in output:
        raise damaged(paths.record, "it describes no stored output")
    path = paths.dir / output["path"]
    kind = output.get("type")
    try:
        if output.get("kind") == "json":
            with open(path, "rb") as f:
                return loads(f.read())
        if kind == "numpy.ndarray" and not (path / DATAARRAY_VARIABLE).is_dir():
            import zarr  # a bare array, as results were stored before groups

            array = zarr.open_array(str(path), mode="r")[...]
            if view:
                import xarray as xr

                return xr.DataArray(array)
            return array
        if output.get("all_chunks"):
            missing = missing_chunks(path)
            if missing:
                raise damaged(path, missing)
        ds = open_zarr(path, chunks=chunks)
        if load:
            ds = ds.load()
    except FileNotFoundError:
        raise damaged(path, "missing, though the record says it was stored") from None
    except (ValueError, OSError, KeyError) as err:
        if isinstance(err, StoreError):
            raise
        raise damaged(path, err) from None
    if kind in ("xarray.DataArray", "numpy.ndarray"):
        da = ds[DATAARRAY_VARIABLE]
        if kind == "numpy.ndarray" and not view:
            return da.values
        return da.rename(output.get("name"))
    if kind == "dict" and not view:
        return {str(name): var.values for name, var in ds.data_vars.items()}
    return ds
