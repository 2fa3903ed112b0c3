"""Results that cross numpy versions: a real env with numpy 1.26 (from the registry)
writes arrays, a dict of arrays, a Dataset and a DataArray, and a Zarr group through
ds.output(); the driver (numpy 2) reads the same values and dtypes."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest

import dscheduler as ds

pytestmark = pytest.mark.slow

OLD = ["numpy==1.26.4", "pandas==2.2.2", "xarray==2024.7.0", "zarr==2.18.2", "numcodecs==0.12.1"]


class Old(ds.RunConfig):
    ENV_FIELDS: ClassVar = ("requirements",)
    requirements: list[str] = OLD
    label: str = ""

    def env(self) -> ds.Env:
        return ds.Env(requirements=self.requirements, image="dir")


@ds.task(version="1")
def values(cfg: Any, case: str) -> Any:
    import numpy as np
    import xarray as xr

    if np.__version__ != "1.26.4":  # no assert: pytest rewrites it to need _pytest
        raise RuntimeError(f"numpy {np.__version__} in the env")
    times = np.array(["2020-01-01T00", "2020-01-01T06", "2020-01-01T12"], dtype="M8[ns]")
    if case == "array":
        return np.arange(12, dtype=">i4").reshape(3, 4)
    if case == "dict":
        return {"f": np.linspace(0, 1, 5, dtype="float32"), "b": np.array([True, False]),
                "s": np.array(["ab", "c"]), "t": times}
    ds_ = xr.Dataset(
        {"t2m": (("time", "member"), np.arange(6, dtype="float64").reshape(3, 2) / 7),
         "flag": ("time", np.array([1, 0, 1], dtype="uint8"))},
        coords={"time": times, "member": np.array([0, 1], dtype="int16")},
        attrs={"model": "old", "n": np.int64(3)},
    )
    ds_["t2m"].attrs["units"] = "K"
    if case == "dataarray":
        return ds_["t2m"].rename("temp")
    if case == "written":
        ds_.to_zarr(str(ds.output()))
        ds.log_metric("numpy_major", float(np.__version__.split(".")[0]))
        return None
    return ds_


@ds.task(version="1")
def nested(cfg: Any, case: str) -> Any:
    import numpy as np

    return [np.arange(3)]


def test_numpy_126_env_results_read_exactly_by_numpy_2(cluster: Any, graph_store: ds.Store
                                                       ) -> None:
    import xarray as xr

    assert np.__version__.startswith("2.")
    cfg = Old()
    nodes = {case: values(cfg, case) for case in ("array", "dict", "dataset", "dataarray",
                                                  "written")}
    bad = nested(cfg, "x")
    results = ds.compute(list(nodes.values()), bad, store=graph_store, cluster=cluster,
                         progress=False)
    assert results.state(bad) == "failed"
    assert "numpy array inside a list" in results.errors[bad.key]
    for node in nodes.values():
        assert results.state(node) == "succeeded", results.errors.get(node.key)

    array = results.value(nodes["array"])
    assert array.dtype == np.dtype(">i4") or array.dtype == np.dtype("int32")
    assert array.tolist() == np.arange(12).reshape(3, 4).tolist()

    d = results.value(nodes["dict"])
    assert d["f"].dtype == np.float32 and d["f"].tolist() == np.linspace(0, 1, 5,
                                                                          dtype="float32").tolist()
    assert d["b"].dtype == np.bool_ and d["b"].tolist() == [True, False]
    assert d["s"].tolist() == ["ab", "c"] and d["s"].dtype.kind == "U"
    assert d["t"].dtype == np.dtype("M8[ns]") and str(d["t"][1]) == "2020-01-01T06:00:00.000000000"

    expected = xr.Dataset(
        {"t2m": (("time", "member"), np.arange(6, dtype="float64").reshape(3, 2) / 7),
         "flag": ("time", np.array([1, 0, 1], dtype="uint8"))},
        coords={"time": np.array(["2020-01-01T00", "2020-01-01T06", "2020-01-01T12"],
                                 dtype="M8[ns]"),
                "member": np.array([0, 1], dtype="int16")},
        attrs={"model": "old", "n": 3},
    )
    expected["t2m"].attrs["units"] = "K"
    for case in ("dataset", "written"):
        got = results.value(nodes[case]).load()
        xr.testing.assert_identical(got, expected)
        assert {k: v.dtype for k, v in got.variables.items()} == \
            {k: v.dtype for k, v in expected.variables.items()}
    da = results.value(nodes["dataarray"]).load()
    assert da.name == "temp" and da.attrs == {"units": "K"}
    np.testing.assert_array_equal(da.values, expected["t2m"].values)
    assert da.dtype == np.float64 and da["member"].dtype == np.int16

    record = results.record(nodes["written"])
    assert record is not None and record["metrics"] == {"numpy_major": 1.0}
    assert record["output"]["type"] == "zarr.group"
    # Every stored value is Zarr that xarray opens on its own, consolidated.
    for case in ("array", "dict", "dataset", "dataarray"):
        path = nodes[case].paths(graph_store).zarr
        xr.open_zarr(path, consolidated=True).load()
