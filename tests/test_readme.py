"""The README's Python examples run, in order, as one script (docs cannot rot).

They define a task annotated with a RunConfig class in ``__main__``, as a
notebook does: the env (no pydantic) must still unpickle the function.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_examples_run(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 3
    script = tmp_path / "readme.py"
    script.write_text("\n".join(blocks))
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    # Run as a notebook would (no __main__ file for spawned workers to re-import).
    out = subprocess.run([sys.executable, "-c", f"exec(open({str(script)!r}).read())"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # The examples stored what they say they store.
    assert list((tmp_path / "data" / "envs").glob("*/env.json"))
    assert list((tmp_path / "data" / "runs").glob("*/*/202001011200/forecast.zarr"))


def test_unguarded_script_runs_to_completion(tmp_path: Path) -> None:
    """A script without an ``if __name__ == "__main__":`` guard: its workers never
    import it, so it runs once, end to end, and its task travels by value."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import dscheduler as ds\n"
        "print('script body ran', flush=True)\n"
        "@ds.task(version='1', env=None)\n"
        "def double(x: int) -> int:\n    return 2 * x\n"
        "node = double(21)\n"
        "results = ds.compute(node, store='data', progress=False)\n"
        "print('value', results.value(node))\n"
    )
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == ["script body ran", "value 42"], out.stdout
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "dashboard at http://127.0.0.1:" in out.stderr
