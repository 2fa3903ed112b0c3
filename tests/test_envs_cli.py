"""``dscheduler envs list|show|build|gc`` against a real store, real uv builds."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

import dscheduler as ds
from dscheduler.cli import app
from dscheduler.envs.build import build_env
from dscheduler.envs.gc import gc_plan
from dscheduler.store import atomic
from dscheduler.store.records import write_record

runner = CliRunner()


def cli(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def listed(store: ds.Store) -> dict[str, dict]:
    result = cli("envs", "list", "--json", "--store", store.root)
    assert result.exit_code == 0, result.output
    return {row["env_id"]: row for row in map(json.loads, result.stdout.splitlines())}


def add_run(store: ds.Store, env_id: str, config_hash: str = "c0ffee0000000000") -> None:
    atomic.write_json(store.run(f"{env_id}/{config_hash}").record,
                      {"run_id": f"{env_id}/{config_hash}", "env_id": env_id})


def test_build_from_requirements_then_reuse(
    store: ds.Store, wheelhouse: Path, node_dirs: dict[str, Path]
) -> None:
    args = ["envs", "build", "-r", "dstest-app", "--find-links", wheelhouse, "--offline",
            "--image", "dir", "--store", store.root, "-q"]
    first = cli(*args)
    assert first.exit_code == 0, first.output
    env = ds.Env(requirements=["dstest-app"], find_links=[wheelhouse], offline=True)
    assert f"{env.env_id} built in" in first.stdout
    second = cli(*args)
    assert f"{env.env_id} reused in" in second.stdout


def test_build_every_env_of_an_experiment(
    store: ds.Store, wheelhouse: Path, tmp_path: Path, node_dirs: dict[str, Path]
) -> None:
    (tmp_path / "models.py").write_text(textwrap.dedent(
        f"""
        from typing import ClassVar
        import dscheduler as ds

        class Cfg(ds.RunConfig):
            ENV_FIELDS: ClassVar = ("pkg",)
            pkg: str
            x: int = 0
            label: str = ""

            def env(self):
                return ds.Env(requirements=[self.pkg], find_links=[{str(wheelhouse)!r}],
                              offline=True, image="dir")
        """
    ))
    (tmp_path / "exp.yaml").write_text(textwrap.dedent(
        """
        model: models.py:Cfg
        runs:
          - {label: a, pkg: dstest-app, x: 1}
          - {label: b, pkg: dstest-app, x: 2}
          - {label: c, pkg: dstest-base}
        """
    ))
    exp = ds.load_experiment(tmp_path / "exp.yaml")
    refused = cli("envs", "build", tmp_path / "exp.yaml", "--find-links", tmp_path,
                  "--store", store.root)
    assert refused.exit_code == 2 and "Only --image may be given" in refused.stderr
    result = cli("envs", "build", tmp_path / "exp.yaml", "--store", store.root, "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.count(" built in ") == 2
    assert set(listed(store)) == {cfg.env_id for cfg in exp.runs}


def test_build_from_spec_files_and_checkpoints(
    store: ds.Store, wheelhouse: Path, tmp_path: Path, node_dirs: dict[str, Path]
) -> None:
    spec = tmp_path / "env.json"
    spec.write_text(json.dumps({"requirements": ["dstest-base==1.0"], "image": "dir",
                                "find_links": [str(wheelhouse)], "offline": True}))
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# pinned\ndstest-base==1.1  # newest\n")
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"weights")
    (tmp_path / "model.ckpt.dscheduler-env.json").write_text(
        json.dumps({"requirements": ["dstest-app"], "find_links": [str(wheelhouse)]})
    )
    for target in (spec, reqs, ckpt):
        result = cli("envs", "build", target, "--find-links", wheelhouse, "--offline",
                     "--image", "dir", "--store", store.root, "-q")
        assert result.exit_code == 0, result.output
    locks = {row["env_id"]: ds.Store(store.root).env(row["env_id"]).record.read_text()
             for row in listed(store).values()}
    assert len(locks) == 3


def test_failed_build_exits_non_zero_and_names_the_requirement(
    store: ds.Store, wheelhouse: Path, node_dirs: dict[str, Path]
) -> None:
    result = cli("envs", "build", "-r", "dstest-nothere", "--find-links", wheelhouse,
                 "--offline", "--image", "dir", "--store", store.root, "-q")
    assert result.exit_code == 1
    assert "requirement 'dstest-nothere' cannot be installed" in result.stderr
    [row] = listed(store).values()
    assert row["status"] == "failed"
    show = cli("envs", "show", row["env_id"], "--store", store.root, "--log")
    assert "No solution found" in show.stdout


def test_list_and_show(store: ds.Store, make_env, node_dirs: dict[str, Path]) -> None:
    built = build_env(store, make_env("dstest-app", image="dir"))
    add_run(store, built.env_id)
    add_run(store, built.env_id, "c0ffee0000000001")
    with ds.mount(built):
        pass
    row = listed(store)[built.env_id]
    assert row["status"] == "published" and row["kind"] == "dir" and row["runs"] == 2
    assert row["size"] > 0 and row["last_used"] is not None and row["created"]
    table = cli("envs", "list", "--store", store.root)
    assert built.env_id in table.stdout and "published" in table.stdout
    show = cli("envs", "show", built.env_id[:6], "--store", store.root)
    assert show.exit_code == 0
    shown = json.loads(show.stdout)
    assert shown["lock"].split() == ["dstest-app==1.0", "dstest-base==1.1"] and shown["runs"] == 2
    missing = cli("envs", "show", "ffffffff", "--store", store.root)
    assert missing.exit_code == 2 and "envs list" in missing.stderr


@pytest.mark.squashfs
def test_gc_dry_run_then_yes(store: ds.Store, make_env, node_dirs: dict[str, Path]) -> None:
    used = build_env(store, make_env("dstest-app"))
    twin = build_env(store, make_env("dstest-app", "dstest-base>=1.1"))  # shares used's image
    alone = build_env(store, make_env("dstest-base==1.0"))
    assert twin.image == used.image != alone.image
    add_run(store, used.env_id)
    (store.envs_dir / ".deadbeefdeadbeef.0123456789ab.partial").mkdir()  # a killed build's
    (store.images_dir / ".0123456789abcdef.json.0123456789ab.partial").touch()

    dry = cli("envs", "gc", "--store", store.root)
    assert dry.exit_code == 0, dry.output
    assert f"would remove env {twin.env_id}" in dry.stdout
    assert f"would remove env {alone.env_id}" in dry.stdout
    assert f"would remove image {alone.image.name}" in dry.stdout  # type: ignore[union-attr]
    assert used.env_id not in dry.stdout and used.image.name not in dry.stdout  # type: ignore[union-attr]
    assert "dry run" in dry.stdout and dry.stdout.count("would remove leftover") == 2
    assert set(listed(store)) == {used.env_id, twin.env_id, alone.env_id}  # nothing removed

    done = cli("envs", "gc", "--yes", "--store", store.root)
    assert done.exit_code == 0, done.output
    assert set(listed(store)) == {used.env_id}
    assert used.image.is_file() and not alone.image.exists()  # type: ignore[union-attr]
    assert sorted(p.name for p in store.images_dir.iterdir()) == sorted(
        [used.image.name, used.image.with_suffix(".json").name]  # type: ignore[union-attr]
    )
    assert not list(store.envs_dir.glob(".*"))
    with ds.mount(used) as prefix:  # the referenced env still works
        assert (prefix / "bin" / "python").exists()


def test_gc_never_touches_an_env_whose_lease_is_held(
    store: ds.Store, make_env, node_dirs: dict[str, Path]
) -> None:
    built = build_env(store, make_env("dstest-base", image="dir"))
    lease = store.lease(f"env-{built.env_id}").acquire()
    try:
        plan = gc_plan(store)
        assert plan.envs == [] and plan.kept_building == [built.env_id]
        result = cli("envs", "gc", "--yes", "--store", store.root)
        assert f"keeping env {built.env_id}: its build lease is held" in result.stdout
        assert store.env(built.env_id).record.is_file()
    finally:
        lease.release()
    cli("envs", "gc", "--yes", "--store", store.root)
    assert not store.env(built.env_id).dir.exists()


def test_gc_keeps_an_env_used_only_by_a_task_not_bound_to_a_run(
    store: ds.Store, make_env, node_dirs: dict[str, Path]
) -> None:
    built = build_env(store, make_env("dstest-base", image="dir"))
    # A node of a task with env=ds.Env(...) and no RunConfig: its record lives
    # under tasks/ and names the env it ran in.
    paths = store.task("aggregate", "0123456789abcdef")
    paths.dir.mkdir(parents=True)
    write_record(paths, {"key": "k", "state": "succeeded", "env_id": built.env_id,
                         "attempts": []})
    assert gc_plan(store).envs == []
    cli("envs", "gc", "--yes", "--store", store.root)
    assert store.env(built.env_id).record.is_file()
    paths.record.unlink()
    assert [e.env_id for e in gc_plan(store).envs] == [built.env_id]
