"""``dscheduler status --watch``: the store's summary, read again and redrawn until Ctrl-C,
with no scheduler anywhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from helpers import wait_for, write_node_record

import dscheduler as ds


def wait_for_text(path: Path, text: str, timeout: float = 60) -> str:
    """The file's text once ``text`` is in it; AssertionError with the text past ``timeout``."""
    def found() -> str:
        out = path.read_text(errors="replace")
        return out if text in out else ""

    try:
        return wait_for(found, timeout, f"{text!r} in {path}", interval=0.1)
    except AssertionError:
        raise AssertionError(f"{text!r} never appeared in:\n"
                             f"{path.read_text(errors='replace')}") from None


def test_watch_redraws_as_the_store_changes(tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "data").ensure()
    write_node_record(store.task("square", "1" * 16), "succeeded", 1)
    out = tmp_path / "out.txt"
    # A terminal as far as rich is concerned, so that Live redraws in place.
    env = {**os.environ, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "120",
           "LINES": "60", "NO_COLOR": "1"}
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from dscheduler.cli import app; app()", "status",
             "--watch", "--interval", "0.2", "--store", str(store.root)],
            stdout=sink, stderr=subprocess.STDOUT, env=env)
        try:
            wait_for_text(out, "square  1          0       1")
            write_node_record(store.task("square", "2" * 16), "failed", 2, error="ValueError: two")
            text = wait_for_text(out, "square  1          1       2")
            assert "ValueError: two" in text.split("square  1          1       2")[1]
            assert "\x1b[" in text  # redrawn in place, not printed again
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=30)
    assert code == 0, out.read_text()
