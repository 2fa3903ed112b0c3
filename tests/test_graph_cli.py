"""``dscheduler run|plan|status`` on recipe files (the main job: tests/test_recipes.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from dscheduler.cli import app

ROOT = Path(__file__).resolve().parent.parent

RECIPE = '''
import dscheduler as ds

@ds.task(version="1")
def square(x: int, log: str) -> int:
    with open(log, "a") as f:
        f.write(f"square {x}\\n")
    if x == 3:
        raise RuntimeError("three is bad")
    return x * x

@ds.task(version="1")
def add_up(values: list) -> int:
    return sum(values)

def main():
    log = __file__ + ".log"
    good = [square(x, log) for x in (1, 2)]
    return [add_up(good), square(3, log)]
'''


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_run_plan_status_of_a_recipe_file(cluster: Any, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.py"
    recipe.write_text(RECIPE)
    store = str(tmp_path / "data")

    planned = _invoke("plan", str(recipe), "--store", store)
    assert planned.exit_code == 0, planned.output
    assert "4 nodes: 4 to run" in planned.output and "square-" in planned.output

    ran = _invoke("run", str(recipe), "--store", store, "--no-progress")
    assert ran.exit_code == 1  # one task fails: the exit code says so
    assert "three is bad" in ran.output and "3 succeeded, 1 failed" in ran.output

    status = _invoke("status", "--store", store)
    assert status.exit_code == 0, status.output
    assert "succeeded  3" in status.output and "failed     1" in status.output
    assert "three is bad" in status.output

    again = _invoke("plan", str(recipe), "--store", store)
    assert "1 to run, 3 cached" in again.output and "failed before" in again.output
    assert Path(str(recipe) + ".log").read_text().count("square") == 3


def test_error_text_is_printed_as_is(tmp_path: Path) -> None:
    """An error quoting ``[test]`` keeps it: messages are not taken as rich markup."""
    recipe = tmp_path / "bad.py"
    recipe.write_text("def main():\n    raise ValueError('needs dscheduler[test] installed')\n")
    for command in ("run", "plan"):
        out = _invoke(command, str(recipe), "--store", str(tmp_path / "data"))
        assert out.exit_code == 2, out.output
        assert "bad.py: main() raised ValueError: needs dscheduler[test] installed" in \
            out.output, out.output
    exp = tmp_path / "exp.yaml"
    exp.write_text("model: m.py:C\nrecipe: '[test].py:main'\nruns: [{a: 1}]\n")
    (tmp_path / "m.py").write_text("import dscheduler as ds\nclass C(ds.RunConfig):\n"
                                   "  a: int = 1\n")
    for command in ("run", "plan"):
        out = _invoke(command, str(exp), "--store", str(tmp_path / "data"))
        assert out.exit_code == 2
        assert "[test].py does not exist" in out.output, out.output


def test_bad_paths_are_clear_errors(tmp_path: Path) -> None:
    out = _invoke("plan", str(tmp_path / "nope.py"))
    assert out.exit_code == 2 and "no such file" in out.output
    exp = tmp_path / "exp.yaml"
    exp.write_text("model: m.py:C\nruns: []\n")
    model = "import dscheduler as ds\nclass C(ds.RunConfig):\n  a: int = 1\n"
    (tmp_path / "m.py").write_text(model)
    out = _invoke("plan", str(exp))
    assert out.exit_code == 2 and "no recipe" in out.output
