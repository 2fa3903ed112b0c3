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


def test_unguarded_script_gets_a_clear_error(tmp_path: Path) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import dscheduler as ds\n"
        "@ds.task(version='1', env=None)\n"
        "def one() -> int:\n    return 1\n"
        "print(ds.compute(one(), store='data', progress=False).value)\n"
    )
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert "if __name__ ==" in out.stderr, out.stderr[-2000:]
