"""Views of stored results: one node's value, a run's cases side by side, one Zarr store.

* :func:`open_node` (``store.open(node)``): the stored value, xarray for Zarr
  (a stored numpy array opens as a DataArray, a dict of arrays as a Dataset),
  plain values for JSON.
* :func:`open_results` (``ds.open_results``): the values of several nodes,
  usually one task over a run's cases, concatenated lazily (dask) along a new
  dimension (``case``) whose coordinate is the case names; JSON values come
  back as a dict by case.
* :func:`collect` (``store.collect(run, path)``): those values written into one
  Zarr store.  The metadata is written once, by this process, before any data
  (``to_zarr(compute=False)``); then dask writes the chunks in parallel, each
  case into its own chunks (chunk size 1 along ``case``, the stored chunks
  along the other dimensions), so no two writers touch one chunk or any
  metadata.  The store appears at ``path`` by one rename when it is complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from ...errors import ConfigError, StoreError, TaskError
from .. import atomic
from ..layout import Layout, NodePaths, record_task
from ..record import SUCCEEDED, Record
from ..records import read_node
from ..values import DATAARRAY_VARIABLE, load_value, write_zarr
from .runs import find, iter_node_records


class NodeLike(Protocol):
    """What a view needs of a node (``ds.Node``): where its files are."""

    def paths(self, store: Any) -> NodePaths: ...


def _paths_of(layout: Layout, path: Path) -> NodePaths:
    task = record_task(path.name)
    if task is None:
        raise ConfigError(f"{path} is not a node record ({{task}}.json)")
    return NodePaths(path.parent, task)


def targets(layout: Layout, what: Any, task: str | None = None
            ) -> list[tuple[NodePaths, Record]]:
    """(paths, record) of the nodes ``what`` names: a node, a list of nodes, a RunConfig,
    a record path, or a run_id / label / node name (:func:`~.runs.find`)."""
    found: list[tuple[NodePaths, Record | None]] = []
    items = what if isinstance(what, list | tuple) else [what]
    for item in items:
        if hasattr(item, "paths"):
            paths = item.paths(layout)
            found.append((paths, read_node(paths.record)))
        elif isinstance(item, os.PathLike):
            paths = _paths_of(layout, Path(item))
            found.append((paths, read_node(paths.record)))
        elif isinstance(getattr(item, "run_id", None), str):
            found += [(_paths_of(layout, p), r) for p, r in
                      iter_node_records(layout, item.run_id)]
        elif isinstance(item, str):
            found += [(_paths_of(layout, p), r) for p, r in find(layout, item)]
        else:
            raise ConfigError(f"cannot open {item!r}: give nodes, a RunConfig, a run_id, a "
                              "label, a node name or a record path")
    out = [(p, r) for p, r in found if r is not None and (task is None or r.task == task)]
    tasks = sorted({str(r.task) for _, r in out})
    if len(tasks) > 1:
        raise ConfigError(f"{what!r} holds results of several tasks ({', '.join(tasks)}); "
                          "choose one with task=")
    if not out:
        raise ConfigError(f"no stored node records for {what!r}"
                          + (f" of task {task!r}" if task else ""))
    return out


def _value(paths: NodePaths, record: Record, chunks: Any) -> Any:
    if record.state != SUCCEEDED:
        raise TaskError(f"{record.name} has no value: it is {record.state} "
                        f"({paths.record})", record.to_json())
    return load_value(paths, record.output, view=True, chunks=chunks)


def open_node(layout: Layout, node: Any, *, chunks: Any = None) -> Any:
    """The stored value of one node (see the module docstring)."""
    found = targets(layout, node)
    if len(found) != 1:
        names = ", ".join(str(r.name) for _, r in found[:5])
        raise ConfigError(f"{node!r} names {len(found)} nodes ({names}); open one")
    return _value(*found[0], chunks)


def open_results(layout: Layout, what: Any, *, task: str | None = None, dim: str = "case",
                 chunks: Any = None) -> Any:
    """Values of the nodes ``what`` names, combined lazily along ``dim``."""
    import pandas as pd
    import xarray as xr

    found = sorted(targets(layout, what, task), key=lambda pr: str(pr[1].case))
    cases = [r.case for _, r in found]
    if None in cases or len(set(cases)) < len(cases):
        cases = [r.name for _, r in found]  # nodes of several runs: by node name
    values = [_value(p, r, {} if chunks is None else chunks) for p, r in found]
    if not all(isinstance(v, xr.Dataset | xr.DataArray) for v in values):
        return dict(zip(cases, values, strict=True))
    return xr.concat(values, dim=pd.Index(cases, name=dim), coords="minimal",
                     compat="override", join="outer", combine_attrs="drop_conflicts")


def collect(layout: Layout, what: Any, path: str | os.PathLike[str], *,
            task: str | None = None, dim: str = "case") -> Path:
    """Write the combined values of ``what`` to one Zarr store at ``path``; its path."""
    import xarray as xr

    combined = open_results(layout, what, task=task, dim=dim)
    if isinstance(combined, dict):
        raise StoreError(f"{what!r}: its values are JSON, not arrays; nothing to collect")
    if isinstance(combined, xr.DataArray):
        combined = combined.to_dataset(name=combined.name or DATAARRAY_VARIABLE)
    sizes = {d: c[0] for d, c in combined.chunksizes.items() if d != dim}
    combined = combined.chunk({**sizes, dim: 1})
    final = Path(path).absolute()
    with atomic.publish_dir(final) as tmp:
        write_zarr(combined, tmp, compute=False).compute()
    return final
