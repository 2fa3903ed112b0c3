"""Defaults precedence, the store layout, atomic writes and exported names."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from graphfixtures import Small

import dscheduler as ds
from dscheduler import settings
from dscheduler.store import atomic

pytestmark = pytest.mark.fast


def _settings_in_subprocesses(envs: list[dict[str, str]], code: str) -> list[str]:
    """Run ``code`` in a new interpreter per environment, side by side, after importing
    ``dscheduler.settings`` as ``s``."""
    procs = [subprocess.Popen([sys.executable, "-c", "import dscheduler.settings as s;" + code],
                              env={**os.environ, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for env in envs]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outs.append(out.strip())
    return outs


def test_precedence_argument_env_userfile_default(tmp_path: Path) -> None:
    config_dir = tmp_path / "dask"
    config_dir.mkdir()
    (config_dir / "mine.yaml").write_text("dscheduler:\n  lease:\n    ttl: 11\n")
    show = "print(s.get('lease.ttl'), s.get('lease.ttl', 7))"
    assert _settings_in_subprocesses([
        {"DASK_CONFIG": str(tmp_path / "none")},
        {"DASK_CONFIG": str(config_dir)},
        {"DASK_CONFIG": str(config_dir), "DASK_DSCHEDULER__LEASE__TTL": "22"},
    ], show) == ["60 7", "11 7", "22 7"]


def test_store_layout_paths(tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "data").ensure()
    assert store.env("abc").record == tmp_path / "data/envs/abc/env.json"
    assert store.image("f" * 16) == tmp_path / f"data/images/{'f' * 16}.sqsh"
    node = store.run("e1/c1").node("202001011200", "forecast")
    assert node.record == tmp_path / "data/runs/e1/c1/202001011200/forecast.json"
    assert node.zarr.name == "forecast.zarr"
    assert store.task("mean", "k1").record == tmp_path / "data/tasks/mean/k1/mean.json"
    for d in (store.envs_dir, store.runs_dir, store.locks_dir):
        assert not d.stat().st_mode & stat.S_IWOTH


@pytest.mark.parametrize("bad", ["../../x", "a/b", ".hidden", "", "x" * 200, "a b"])
def test_unsafe_names_are_rejected(tmp_path: Path, bad: str) -> None:
    store = ds.Store(tmp_path)
    with pytest.raises(ds.ConfigError, match="cannot name a directory"):
        store.run("e1/c1").node(bad, "forecast")
    assert not any(tmp_path.iterdir())


def test_write_run_record(tmp_path: Path) -> None:
    store = ds.Store(tmp_path)
    cfg = Small(ck="a", label="first")
    path = store.write_run(cfg)
    record = store.read_record(path)
    assert record["run_id"] == cfg.run_id and record["label"] == "first"
    assert record["config"] == {"ck": "a", "label": "first"}
    frame = store.runs()
    assert list(frame["run_id"]) == [cfg.run_id]
    # Once written, run.json never changes: a second write keeps the first label.
    store.write_run(cfg.model_copy(update={"label": "second"}))
    assert store.read_record(path)["label"] == "first"


def test_run_collision_is_detected(tmp_path: Path) -> None:
    store = ds.Store(tmp_path)
    path = store.write_run(Small(ck="a"))
    record = store.read_record(path)
    # Another config whose digest shares the short id: a hand-edited record here.
    record["config_digest"] = record["config_hash"] + "0" * 48
    path.write_text(json.dumps(record))
    with pytest.raises(ds.CollisionError, match=record["config_hash"]) as info:
        store.write_run(Small(ck="a"))
    assert str(path) in str(info.value)


def test_atomic_writes_never_show_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    big = {"x": "y" * 200_000}
    atomic.write_json(path, big)
    seen: list[object] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(atomic.read_json(path))

    t = threading.Thread(target=reader)
    t.start()
    for i in range(30):
        atomic.write_json(path, {**big, "i": i})
    stop.set()
    t.join()
    assert all(isinstance(s, dict) and len(s["x"]) == 200_000 for s in seen)
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_create_once_and_publish_dir(tmp_path: Path) -> None:
    target = tmp_path / "once"
    assert atomic.create_once(target, b"a")
    assert not atomic.create_once(target, b"b")
    assert target.read_bytes() == b"a"

    final = tmp_path / "dir"
    with pytest.raises(RuntimeError), atomic.publish_dir(final) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("fails half-way")
    assert not final.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["once"]
    with atomic.publish_dir(final) as tmp:
        (tmp / "whole").write_text("x")
    assert (final / "whole").exists()


EXPORTED = [
    "BuiltEnv", "CollisionError", "CommandError", "ConfigError", "DSchedulerError", "Env",
    "EnvBuildError", "Experiment", "GraphError", "Handle", "IdentityError", "Lease",
    "LeaseError", "LeaseTimeout", "MountError", "Node", "Plan", "Results", "RunConfig",
    "Store", "StoreError", "Task", "TaskError", "UnsafePathError", "compute", "load_experiment",
    "mount", "plan", "submit", "task",
    # results, tracking and queries (docs/design.md §11)
    "log_artifact", "log_metric", "log_param", "open_results", "output", "set_tag",
]
EXPORTED += ["connect", "slurm_cluster"]  # SLURM (docs/design.md §13)
EXPORTED += ["File"]  # a RunConfig field hashed by content (docs/design.md §2)
EXPORTED += ["checkpoint"]  # a checkpoint reference as a local path (docs/design.md §6)
EXPORTED.sort()


def test_exported_names() -> None:
    # The public surface is part of the contract: a change here is deliberate.
    assert ds.__all__ == sorted(EXPORTED, key=lambda n: (n[0].islower(), n))
    public = {n for n in dir(ds) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(ds, n)).__name__ == "module"}
    assert public - modules - {"annotations"} == set(EXPORTED)
    assert ds.compute is ds.run.compute and ds.Store is ds.store.Store
    assert issubclass(ds.StoreError, OSError) and issubclass(ds.ConfigError, ValueError)


def test_settings_namespace_is_registered() -> None:
    assert settings.get("env.compression_level") == 3
    assert settings.get("store") == "data"
    assert settings.get("store", "elsewhere") == "elsewhere"


@pytest.mark.fast
def test_a_set_block_before_the_first_read_keeps_the_defaults() -> None:
    """dask.config.set of a dscheduler key before any setting was read inserts the namespace;
    leaving the block deletes it again, with the packaged defaults merged under it meanwhile:
    they must come back (a SLURM job script reads the whole namespace)."""
    code = ("import dask.config, dscheduler.settings as s\n"
            "with dask.config.set({'dscheduler.local.n_workers': 3}):\n"
            "    assert s.get('local.n_workers') == 3\n"
            "print(s.current()['lease']['ttl'], s.get('lease.ttl'),"
            " s.dask_config().get('dscheduler.lease.ttl'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["60", "60", "60"]
