"""Node keys, output paths and planning: no cluster, no env."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
from graphfixtures import Cfg, work

import dscheduler as ds
import dscheduler.identity
from dscheduler.store.records import write_record
from dscheduler.store.state import Reason

pytestmark = pytest.mark.fast


@ds.task(version="1")
def add(a: int, b: int = 2) -> int:
    return a + b


@ds.task(version="1")
def read(path: Any) -> str:
    return Path(path).read_text()


class NoEnv(ds.RunConfig):
    ENV_FIELDS: ClassVar = ("checkpoint",)
    checkpoint: str = "x"
    label: str = ""


class FromCheckpoint(ds.RunConfig):
    ENV_FIELDS: ClassVar = ("checkpoint",)
    checkpoint: str
    label: str = ""

    def env(self) -> ds.Env:
        return ds.Env.from_checkpoint(self.checkpoint)


def test_golden_key() -> None:
    # Pins the key format (node key format 2: it covers where the function is
    # defined); a change here changes every stored result's key.
    node = add(1, 2)
    assert node.key == "aa562898c3b7eed7cdc5aefe3c69fa20b6060c1cf3f73dd477a293a26a2dc08a"
    # ... and it is the documented formula.
    spec = {"format": 2, "task": "add", "version": "1", "fn": "test_graph_keys:add",
            "env": None, "args": {"a": 1, "b": 2}}
    assert node.key == dscheduler.identity.digest("node", spec)
    assert node.name == "add-aa562898c3b7eed7"


class Holder(ds.RunConfig):
    inner: NoEnv
    label: str = ""


@ds.task(version="1", env=None)
def pair(a: Any, b: Any) -> None: ...


def test_golden_key_of_config_arguments() -> None:
    # One rule for a RunConfig in a task argument and in another config's field: its
    # two digests, tagged (identity FORMAT 2).
    inner = NoEnv(checkpoint="c", label="x")
    holder = Holder(inner=inner)
    tag = {"\u0000config": {"env": inner.env_digest, "run": inner.config_digest}}
    assert holder.config_digest == dscheduler.identity.digest("run", {"inner": tag})
    node = pair(inner, holder)
    assert node.key == "5d91daaeafaa05e3ba764e612cc07c68457d54950f30040589723e36905de42a"
    spec = {"format": 2, "task": "pair", "version": "1", "fn": "test_graph_keys:pair",
            "env": None, "args": {"a": tag, "b": {"\u0000config": holder.identity_fields()}}}
    assert node.key == dscheduler.identity.digest("node", spec)
    # The inner run's label is HASH_EXCLUDE: neither key nor holder moves with it.
    other = inner.model_copy(update={"label": "y"})
    assert pair(other, Holder(inner=other)).key == node.key


def test_key_stable_across_processes() -> None:
    code = (
        "import sys; sys.path.insert(0, 'tests'); import test_graph_keys as t; "
        "print(t.add(1, 2).key)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env, cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == add(1, 2).key


def test_binding_defaults_and_options_do_not_move_keys() -> None:
    assert add(1).key == add(1, 2).key == add(a=1, b=2).key == add(1, b=2).key
    assert add(1, 3).key != add(1, 2).key
    assert add.options(retries=3, resources={"GPU": 1}, timeout=5, priority=9)(1).key == \
        add(1).key
    bumped = ds.task(version="2", name="add")(add.fn)
    assert bumped(1).key != add(1).key
    assert add.options(env=ds.Env(image="dir"))(1).key != add(1).key


def test_upstream_changes_propagate() -> None:
    a1, a2 = add(1), add(2)
    assert add(a1).key != add(a2).key
    assert add(a1).upstream == (a1,)
    nested = add.options()([a1, {"k": a2}])
    assert {n.key for n in nested.upstream} == {a1.key, a2.key}


def test_files_by_content_strings_by_value(tmp_path: Path) -> None:
    f = tmp_path / "input.txt"
    f.write_text("one")
    k1, s1 = read(f).key, read(str(f)).key
    f.write_text("two")
    os.utime(f, ns=(1, 1))  # a new mtime too, as any real edit has
    assert read(f).key != k1  # content changed
    assert read(str(f)).key == s1  # a str is just a string
    assert read(tmp_path).key == read(tmp_path).key  # a directory hashes as its path


def test_runconfig_identity_only() -> None:
    a = Cfg(x=1, label="one")
    b = Cfg(x=1, label="two")  # label is HASH_EXCLUDE
    assert work(a, "c").key == work(b, "c").key
    assert work(Cfg(x=2), "c").key != work(a, "c").key
    node = work(a, "202001010000")
    assert node.case == "202001010000" and node.env_id == a.env_id and node.cfg is a


def test_output_paths(tmp_path: Path) -> None:
    store = ds.Store(tmp_path)
    cfg = Cfg(x=1)
    node = work(cfg, "c1")
    assert node.paths(store) == store.run(cfg.run_id).node("c1", "work")
    free = add(1)
    assert free.paths(store) == store.task("add", free.key16)
    # The fast marker path of planning is the layout's own.
    assert store.done_id(cfg.env_id, cfg.config_hash, "c1", "work", node.key16) == \
        store.node_id(node.paths(store)) == f"runs/{cfg.run_id}/c1/.work.done"
    assert store.done_id(cfg.env_id, cfg.config_hash, None, "work", node.key16) == \
        store.node_id(store.run(cfg.run_id).node(None, "work"))
    assert store.done_id(None, None, None, "add", free.key16) == \
        store.node_id(free.paths(store)) == f"tasks/add/{free.key16}/.add.done"

    @ds.task(case="when")
    def at(cfg: Cfg, other: int, when: str) -> None: ...

    assert at(cfg, 1, "c9").paths(store) == store.run(cfg.run_id).node("c9", "at")


def test_bad_input_at_call_time() -> None:
    with pytest.raises(ds.ConfigError, match=r"argument b: .*object"):
        add(1, object())
    with pytest.raises(ds.ConfigError, match=r"argument a\.x\[1\]: nan"):
        add({"x": [1, float("nan")]})
    with pytest.raises(ds.ConfigError, match=r"unknown option.*'colour'.*valid options"):
        add.options(colour="red")
    with pytest.raises(ds.ConfigError, match="case"):
        work(Cfg(), "../../x")
    with pytest.raises(ds.ConfigError, match="missing a required argument"):
        work(Cfg())
    with pytest.raises(ds.ConfigError, match="name"):
        ds.task(lambda x: x)


def test_cycle_rejected(tmp_path: Path) -> None:
    a = add(1)
    b = add(a)
    # Nodes are immutable; a cycle can only be made by tampering with one.
    a.upstream = (b,)
    with pytest.raises(ds.GraphError, match="cycle"):
        ds.plan(b, store=tmp_path)


def test_missing_env_rejected_at_plan(tmp_path: Path) -> None:
    with pytest.raises(ds.GraphError, match="does not say how to make its environment"):
        ds.plan(work(NoEnv(), "c"), store=tmp_path)
    with pytest.raises(ds.GraphError, match="does not exist"):
        ds.plan(work(FromCheckpoint(checkpoint=str(tmp_path / "nope.ckpt")), "c"),
                store=tmp_path)


def _other_module_task(tmp_path: Path, body: str) -> ds.Task[Any, Any]:
    """A task named ``add`` defined in another file, loaded by path."""
    from dscheduler.graph.imports import load_file

    path = tmp_path / "other_tasks.py"
    path.write_text("import dscheduler as ds\n\n@ds.task(version='1')\n"
                    f"def add(a: int, b: int = 2) -> int:\n    return {body}\n")
    return load_file(path).add  # type: ignore[no-any-return]


def test_functions_of_one_name_in_two_places_have_different_keys(tmp_path: Path) -> None:
    other = _other_module_task(tmp_path, "a * 100")
    assert other.name == add.name and other.version == add.version
    assert other.location == "other_tasks.py:add" and add.location == "test_graph_keys:add"
    assert other(1).key != add(1).key
    with pytest.raises(ds.GraphError) as info:
        ds.plan(add(1), other(1), store=tmp_path)
    message = str(info.value)
    assert "test_graph_keys:add" in message and "other_tasks.py:add" in message
    assert "@ds.task(name=" in message
    # One function under two versions is one task name: allowed.
    bumped = ds.task(version="2", name="add")(add.fn)
    assert len(ds.plan(add(1), bumped(5), store=tmp_path).nodes) == 2


def test_two_nodes_writing_one_path_are_rejected(tmp_path: Path) -> None:
    bumped = ds.task(version="2", name="work")(work.fn)
    cfg = Cfg(x=3)
    with pytest.raises(ds.GraphError, match="would write the same outputs"):
        ds.plan(work(cfg, "c1"), bumped(cfg, "c1"), store=tmp_path)
    ds.plan(work(cfg, "c1"), bumped(cfg, "c2"), store=tmp_path)  # other cases: fine


def test_plan_reasons(tmp_path: Path) -> None:
    store = ds.Store(tmp_path)
    a = add(1)
    b = add(a)
    p = ds.plan(b, store=store)
    assert p.reason(a) == Reason.NO_RECORD
    assert p.reason(b).startswith(Reason.UPSTREAM)
    assert [n.key for n in p.nodes] == [a.key, b.key]  # upstream first
    # Finished a: a is cached, and b, which has no record yet, runs.
    paths = a.paths(store)
    paths.dir.mkdir(parents=True)
    write_record(paths, {"key": a.key, "state": "succeeded", "attempts": []})
    os.symlink(a.key, paths.done)
    p = ds.plan(b, store=store)
    assert p.reason(a) is None and p.reason(b) == Reason.NO_RECORD
    assert ds.plan(b, store=store, force=True).reason(a) == Reason.FORCED
    assert ds.plan(add.options(cache=False)(1), store=store).reasons
    write_record(paths, {"key": a.key, "state": "failed", "attempts": []})
    paths.done.unlink()
    assert ds.plan(a, store=store).reason(a) == Reason.FAILED
    # Its attempt never finished (a record left "running" by a killed worker).
    write_record(paths, {"key": a.key, "state": "running", "attempts": [{}]})
    assert ds.plan(a, store=store).reason(a) == Reason.INTERRUPTED
    write_record(paths, {"key": a.key, "state": "cancelled", "attempts": []})
    assert ds.plan(a, store=store).reason(a) == Reason.CANCELLED
    # A succeeded record of another key at the same path (the version was bumped
    # since) is "changed".
    bumped = ds.task(version="2", name="add")(add.fn)(1)
    assert bumped.paths(store) != paths  # not bound to a run: its own directory
    cfg = Cfg(x=1)
    old, new = work(cfg, "c"), ds.task(version="2", name="work")(work.fn)(cfg, "c")
    old_paths = old.paths(store)
    old_paths.dir.mkdir(parents=True)
    write_record(old_paths, {"key": old.key, "state": "succeeded", "attempts": []})
    os.symlink(old.key, old_paths.done)
    assert new.paths(store) == old_paths
    assert ds.plan(new, store=store).reason(new) == Reason.CHANGED
    assert ds.plan(old, store=store).reason(old) is None


def test_plan_lists_envs_to_build(tmp_path: Path) -> None:
    p = ds.plan([work(Cfg(flavor=f), "c") for f in "abc"], store=tmp_path)
    assert len(p.envs_to_build) == 3 and set(p.envs) == set(p.envs_to_build)
    assert "build_env-" in p.explain()
