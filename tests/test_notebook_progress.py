"""``ds.compute`` in a real Jupyter kernel: the progress bar works after a plain install.

Each test executes a small notebook with nbclient and ipykernel.  The first
runs as installed (Dask's widget bar, ipywidgets being a dependency); the
second hides ipywidgets from the kernel first (``sys.modules["ipywidgets"] =
None`` makes ``import ipywidgets`` fail), and dscheduler must fall back to
Dask's text bar rather than fail with ModuleNotFoundError.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

CELLS = [
    "import dscheduler as ds\n"
    "@ds.task(version='1', env=None)\n"
    "def square(x: int) -> int:\n"
    "    return x * x\n"
    "nodes = [square(i) for i in range(4)]",
    # progress left at its default ("auto"): in a kernel it shows a bar
    "results = ds.compute(nodes, store='data')\n"
    "print('values', [results.value(n) for n in nodes])",
    "from dscheduler.run.clusters import close_local\nclose_local()",
]


def _execute(tmp_path: Path, first_cell: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in [first_cell, *CELLS]]
    NotebookClient(nb, timeout=240, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb


def _outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [o for cell in nb.cells for o in cell.get("outputs", [])]


def _text(nb: nbformat.NotebookNode) -> str:
    return "".join(str(o.get("text", "")) for o in _outputs(nb))


@pytest.mark.slow
def test_widget_progress_bar_in_a_kernel(tmp_path: Path) -> None:
    nb = _execute(tmp_path, "import sys")
    assert "values [0, 1, 4, 9]" in _text(nb)
    widgets = [o for o in _outputs(nb)
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets, "no progress widget was displayed"


@pytest.mark.slow
def test_text_progress_bar_without_ipywidgets(tmp_path: Path) -> None:
    nb = _execute(tmp_path, "import sys\nsys.modules['ipywidgets'] = None")
    text = _text(nb)
    assert "values [0, 1, 4, 9]" in text
    assert "ModuleNotFoundError" not in text
    assert "Completed" in text or "100%" in text, text[-2000:]  # Dask's text bar
    assert not [o for o in _outputs(nb)
                if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
