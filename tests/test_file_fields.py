"""``ds.File`` fields: a RunConfig field hashed by its file's or directory's content."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, ClassVar

import pytest
from helpers import run_inline
from pydantic import ValidationError

import dscheduler as ds
from dscheduler import identity
from dscheduler.graph import files
from dscheduler.graph.explain import explain, explain_record
from dscheduler.store.records import read_node

pytestmark = pytest.mark.fast

class Downscale(ds.RunConfig):
    ENV_FIELDS: ClassVar = ("weights",)
    weights: ds.File | None = None
    grid: ds.File
    config: ds.File | dict[str, Any] = {}
    extra: list[ds.File] = []
    note: str = ""
    label: str = ""


@ds.task(version="1", env=None)
def regrid(cfg: Downscale, case: str) -> str:
    return Path(cfg.grid).read_text()


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_content_not_path_decides_the_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    grid = _write(tmp_path / "a" / "grid.txt", "0.25 deg")
    base = Downscale(grid=grid)
    assert isinstance(base.grid, Path) and base.grid == grid
    # An identical copy elsewhere, named relatively or absolutely: the same run.
    copy = _write(tmp_path / "b" / "other-name.txt", "0.25 deg")
    assert Downscale(grid=copy).run_id == base.run_id
    monkeypatch.chdir(tmp_path)
    assert Downscale(grid="a/grid.txt").run_id == base.run_id
    # An edit moves config_hash (a new mtime, as any real edit has), not env_id.
    grid.write_text("0.1 deg")
    os.utime(grid, ns=(10**18, 10**18))
    edited = Downscale(grid=grid)
    assert edited.config_hash != base.config_hash and edited.env_id == base.env_id
    # The documented rule: the file's sha256, tagged as a task's Path argument is.
    sha = files.file_digest(grid)
    assert edited.config_digest == identity.digest(
        "run", {"grid": {"\u0000file": sha}, "config": {}, "extra": [], "note": ""})
    # A file in ENV_FIELDS moves env_id by content.
    w1, w2 = _write(tmp_path / "w1", "a"), _write(tmp_path / "w2", "b")
    assert Downscale(grid=grid, weights=w1).env_id != Downscale(grid=grid, weights=w2).env_id
    assert Downscale(grid=grid, weights=w1).config_hash == edited.config_hash


def test_file_in_a_union_and_a_list(tmp_path: Path) -> None:
    grid = _write(tmp_path / "grid", "g")
    conf = _write(tmp_path / "conf.yaml", "k: 1")
    by_dict = Downscale(grid=grid, config={"k": 1})
    by_file = Downscale(grid=grid, config=conf)
    assert by_dict.config == {"k": 1} and isinstance(by_file.config, Path)
    assert by_file.config_hash != by_dict.config_hash
    assert Downscale(grid=grid, config=_write(tmp_path / "c2" / "x.yml", "k: 1")).config_hash \
        == by_file.config_hash
    one = Downscale(grid=grid, extra=[conf])
    conf.write_text("k: 2")
    os.utime(conf, ns=(10**18, 10**18))
    assert Downscale(grid=grid, extra=[conf]).config_hash != one.config_hash
    # A plain str field naming the same path is a string: no content.
    assert Downscale(grid=grid, note=str(conf)).config_hash == \
        Downscale(grid=grid, note=str(conf)).config_hash


def test_directory_digest_is_names_and_contents(tmp_path: Path) -> None:
    src = tmp_path / "grids"
    _write(src / "a.txt", "a")
    _write(src / "sub" / "b.txt", "b")
    base = Downscale(grid=src)
    tree = {"a.txt": files.file_digest(src / "a.txt"),
            "sub/b.txt": files.file_digest(src / "sub" / "b.txt")}
    assert base.grid.content_digest() == identity.digest("files", tree)  # type: ignore[union-attr]
    shutil.copytree(src, tmp_path / "copy")
    assert Downscale(grid=tmp_path / "copy").run_id == base.run_id
    (tmp_path / "copy" / "sub" / "b.txt").rename(tmp_path / "copy" / "sub" / "c.txt")
    renamed = Downscale(grid=tmp_path / "copy")
    assert renamed.run_id != base.run_id
    _write(src / "sub" / "b.txt", "B")
    os.utime(src / "sub" / "b.txt", ns=(10**18, 10**18))
    assert Downscale(grid=src).run_id not in (base.run_id, renamed.run_id)


def test_digest_read_once_per_file_version(tmp_path: Path) -> None:
    """Kept by (device, inode, size, mtime_ns): a same-size rewrite that keeps the mtime
    keeps the digest in this process; a new mtime reads it again."""
    grid = _write(tmp_path / "grid", "aaaa")
    os.utime(grid, ns=(10**18, 10**18))
    first = Downscale(grid=grid).run_id
    grid.write_text("bbbb")
    os.utime(grid, ns=(10**18, 10**18))
    assert Downscale(grid=grid).run_id == first  # not read again
    os.utime(grid, ns=(2 * 10**18, 2 * 10**18))
    assert Downscale(grid=grid).run_id != first


def test_missing_file_names_field_path_and_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ValidationError) as info:
        Downscale(grid=_write(tmp_path / "g", "g"), config=missing)
    text = str(info.value)
    assert "config: no file or directory" in text and str(missing) in text
    assert "create it, or correct the path" in text
    with pytest.raises(ValidationError, match=r"extra\[1\]: no file or directory"):
        Downscale(grid=tmp_path / "g", extra=[tmp_path / "g", missing])


def test_explain_names_the_changed_file(tmp_path: Path) -> None:
    graph_store = ds.Store(tmp_path / "data")
    grid = _write(tmp_path / "grid.txt", "0.25 deg")
    before = regrid(Downscale(grid=grid, label="ds"), "c0")
    assert list(run_inline([before], graph_store).values()) == ["succeeded"]
    stored = read_node(before.paths(graph_store).record)
    assert stored is not None and stored.call is not None
    old_sha = files.file_digest(grid)
    assert stored.call["files"] == {"config.grid": {"path": grid.as_posix(), "digest": old_sha}}

    grid.write_text("0.1 deg")
    os.utime(grid, ns=(10**18, 10**18))
    after = regrid(Downscale(grid=grid, label="ds"), "c0")
    why = explain(after, graph_store)
    assert why.reason == "no record"
    new_sha = files.file_digest(grid)
    assert [str(c) for c in why.changes] == [
        f"config.grid: '{grid} (content {old_sha[:12]})' -> '{grid} (content {new_sha[:12]})'"]
    # From the record alone (its code not at hand): the file's content moved.
    alone = explain_record(before.paths(graph_store).record, stored, "no code")
    assert alone.reason == "a file it read changed"
    assert [c.field for c in alone.changes] == ["config.grid"]
