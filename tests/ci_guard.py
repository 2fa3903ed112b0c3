"""pytest plugin: under CI=true, a skipped `slurm` or `squashfs` test is a failure.

Those tests skip on a developer machine without SLURM or squashfs tools, which is
fine; in CI (`ci/test` installs and starts both) a skip means the suite silently
stopped testing something, so the skip is turned into a failure: the test is
reported as failed (or as an error, when it skipped in setup, e.g. through the
`slurm_available` fixture), with the skip reason, and pytest exits non-zero.

Loaded by tests/conftest.py through `pytest_plugins = ["ci_guard"]`; it is a
module of its own (not code in conftest) so that tests/test_ci_skip_guard.py can
load exactly the same guard into an inner pytester run with `-p ci_guard`.

State lives in `config.stash`, never in module globals: pytester runs the inner
session in this same process, with this same module object.

Limitation: a whole module skipped at import (module-level `pytest.skip` or
`pytest.importorskip`) has no markers to look at and is not caught.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

GUARDED_MARKERS = ("slurm", "squashfs")

_converted = pytest.StashKey[list[str]]()


def ci_enabled() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_converted] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if not (report.skipped and ci_enabled()) or hasattr(report, "wasxfail"):
        return report
    markers = [m for m in GUARDED_MARKERS if item.get_closest_marker(m) is not None]
    if not markers:
        return report
    reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else "?"
    reason = reason.removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = (
        f"CI=true: a test marked {'/'.join(markers)} must not skip here "
        f"(ci/test provides SLURM and squashfs); it skipped with: {reason}"
    )
    item.config.stash[_converted].append(f"{item.nodeid}: {reason}")
    return report


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    converted = session.config.stash.get(_converted, [])
    if not converted:
        return
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.ensure_newline()
        title = f"{len(converted)} slurm/squashfs test(s) skipped under CI=true"
        tr.write_sep("=", title, red=True)
        for line in converted:
            tr.write_line(line)
    # The failed reports already make the exit code 1; this is a second lock for
    # the case where some other plugin hides them.
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
