"""The CI guard (tests/ci_guard.py): under CI=true a skipped slurm/squashfs test fails.

Each test runs an inner pytest session with `pytester` (enabled in conftest.py).
The inner session runs in this process, where `ci_guard` is already importable
(tests/ is on sys.path), and loads the very same guard with `-p ci_guard`.
The markers are declared again in the inner run's own ini, as in pyproject.toml.
"""

from __future__ import annotations

import pytest

INNER_TESTS = """
import pytest

@pytest.mark.squashfs
def test_needs_squashfs():
    pytest.skip("no mksquashfs here")

@pytest.mark.slurm
@pytest.mark.skipif(True, reason="no SLURM here")
def test_needs_slurm():
    pass

def test_plain_skip():
    pytest.skip("unmarked tests may skip, even in CI")

@pytest.mark.squashfs
def test_runs():
    assert True
"""

INNER_INI = """
[pytest]
markers =
    slurm: needs SLURM
    squashfs: needs squashfs
"""


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INNER_INI)
    pytester.makepyfile(test_inner=INNER_TESTS)
    return pytester


def test_skips_fail_the_run_under_ci(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    result = inner.runpytest("-p", "ci_guard", "-ra")
    assert result.ret != 0
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # the call-phase skip becomes a failure, the skipif (setup phase) an error;
    # the unmarked skip stays a skip
    result.assert_outcomes(passed=1, failed=1, errors=1, skipped=1)
    result.stdout.fnmatch_lines(["*2 slurm/squashfs test(s) skipped under CI=true*"])
    result.stdout.fnmatch_lines(["*test_needs_squashfs*no mksquashfs here*"])


def test_skips_are_fine_without_ci(inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = inner.runpytest("-p", "ci_guard", "-ra")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=3)


def test_ci_other_than_true_is_not_ci(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "false")
    result = inner.runpytest("-p", "ci_guard")
    assert result.ret == pytest.ExitCode.OK
