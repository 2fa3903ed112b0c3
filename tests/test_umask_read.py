"""The umask is read, never set, and an unreadable one means every mode is set
(docs/design.md §3)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dscheduler.store import atomic

# A fresh process: its umask, as atomic reads it, without /proc when told to.
CHILD = """
import builtins, os, sys
from pathlib import Path
if sys.argv[2] == "no-proc":
    real = builtins.open
    def no_proc(file, *args, **kwargs):
        if str(file).startswith("/proc/"):
            raise FileNotFoundError(file)
        return real(file, *args, **kwargs)
    builtins.open = no_proc
from dscheduler.store import atomic
root = Path(sys.argv[1])
atomic.write_bytes(root / "f", b"x")
atomic.make_dirs(root / "a" / "b")
with atomic.publish_dir(root / "t") as tmp:
    (tmp / "inner").mkdir()
    (tmp / "inner" / "g").write_bytes(b"y")
    atomic.fix_tree(tmp)
print(oct(atomic.umask()))
"""


@pytest.mark.fast
@pytest.mark.parametrize("proc", ["proc", "no-proc"])
def test_store_modes_under_umask_077_with_and_without_proc(tmp_path: Path, proc: str) -> None:
    """Under umask 077 a private store's files are still 0644 and its dirs 0755: read from
    /proc, or, where it cannot be read, by setting every mode."""
    done = subprocess.run(
        [sys.executable, "-c", f"import os; os.umask(0o077); exec({CHILD!r})",
         str(tmp_path), proc], capture_output=True, text=True, timeout=120, check=True)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.lstat().st_mode)
             for p in tmp_path.rglob("*")}
    assert modes == {"f": 0o644, "a": 0o755, "a/b": 0o755, "t": 0o755,
                     "t/inner": 0o755, "t/inner/g": 0o644}, {k: oct(v) for k, v in modes.items()}
    assert done.stdout.strip() == ("0o77" if proc == "proc" else "0o777"), done.stdout


@pytest.mark.fast
def test_reading_the_umask_leaves_it_as_it_was() -> None:
    before = os.umask(0o022)
    os.umask(before)
    atomic._umasks.clear()
    assert atomic.umask() == before
    now = os.umask(before)
    os.umask(now)
    assert now == before
