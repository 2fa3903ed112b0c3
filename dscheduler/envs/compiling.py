"""Compiling an image's ``.py`` files: workers that take the node's cached bytecode or compile.

``compileall -j`` spreads the files of one directory over processes, but an
image build compiles only what the node's bytecode cache lacks
(docs/design.md §14.3), and finding that out means reading and hashing every
source.  So the build lists the sources and hands each to one of
:class:`Compilers`' workers (``compile_worker.py``, run by the env's own
interpreter), the one given the fewest bytes so far: a worker links the
cached ``.pyc`` of each of its files into place, says so, then compiles the
rest as ``compileall`` does and puts them into the cache.  Lookups and
compiles are spread over the cores alike.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..errors import CommandError
from .buildlog import BuildLog, Running
from .compile_worker import SOME_FAILED

WORKER = Path(__file__).with_name("compile_worker.py")
CHUNK = 16384  # bytes of file names written to a worker at a time
_STORED = re.compile(r"^dscheduler-compile: stored=(\d+)$", re.MULTILINE)
_NOT_STORED = re.compile(r"^dscheduler-compile: (bytecode cache not updated: .*)$", re.MULTILINE)


def cores() -> int:
    """The cores this process may run on (a SLURM job may get fewer than the node has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def sources(venv: Path) -> Iterator[tuple[str, int]]:
    """(path, size) of the files ``compileall venv/lib`` compiles: ``*.py`` in sorted order,
    ``__pycache__`` and symlinked folders not entered."""
    stack = [str(venv / "lib")]
    while stack:
        with os.scandir(stack.pop()) as found:
            entries = sorted(found, key=lambda e: e.name)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if entry.name != "__pycache__":
                    stack.append(entry.path)
            elif entry.name.endswith(".py"):
                yield entry.path, entry.stat(follow_symlinks=False).st_size


@dataclass
class Looked:
    """What the workers found in the cache: ``restored`` of ``sources``, ``missing`` to compile."""

    sources: int = 0
    restored: int = 0
    missing: int = 0


class Compilers:
    """``count`` workers compiling into ``venv`` with the cache ``cache``.

    :meth:`send` each source, then :meth:`sent`, :meth:`looked_up` (every
    cached ``.pyc`` is in place once it returns) and :meth:`finish`.
    """

    def __init__(self, blog: BuildLog, python: Path, venv: Path, prefix: str, cache: Path,
                 work: Path, env: dict[str, str], count: int) -> None:
        self.blog = blog
        self.running: list[Running] = []
        self.signals: list[int] = []  # read ends: a worker writes what it found, then closes
        self.loads: list[int] = []
        self.pending: list[bytearray] = []  # lines not yet written, per worker
        try:
            for i in range(count):
                signal, theirs = os.pipe()
                self.signals.append(signal)
                try:
                    self.running.append(blog.start(
                        # -S: no site, no .pth files run; the stdlib is all it needs.
                        "compile", [python, "-I", "-S", WORKER, venv, prefix, cache, str(theirs)],
                        output=work / f"compile-{i}.out", env=env, cwd=work, stdin=True,
                        pass_fds=(theirs,)))
                finally:
                    os.close(theirs)  # the worker's copy alone: its exit ends our read
                self.loads.append(0)
                self.pending.append(bytearray())
        except BaseException:
            self.kill()
            raise

    def send(self, source: str, size: int) -> None:
        """Hand ``source`` (``size`` bytes) to the least loaded worker."""
        i = self.loads.index(min(self.loads))
        self.loads[i] += size + 1  # + 1: an empty file costs a little too
        self.pending[i] += os.fsencode(source) + b"\n"
        if len(self.pending[i]) >= CHUNK:
            self._write(i)

    def _write(self, i: int) -> None:
        # In chunks, not a line at a time: a worker woken for every line spent as long
        # reading its input as looking the files up.
        try:
            pipe = _stdin(self.running[i])
            pipe.write(self.pending[i])
            pipe.flush()
        except BrokenPipeError:
            self.loads[i] = 1 << 62  # it died: finish() says how; send it nothing more
        self.pending[i] = bytearray()

    def sent(self) -> None:
        """End the workers' input: every source was sent."""
        for i, running in enumerate(self.running):
            if not _stdin(running).closed:
                self._write(i)
                _close(running)

    def looked_up(self) -> Looked:
        """Wait until each worker has put its cached files in place (ends their input)."""
        self.sent()
        found = Looked()
        for signal in self.signals:
            text = b""
            while chunk := os.read(signal, 4096):
                text += chunk
            numbers = [int(n) for n in text.split()]
            if len(numbers) == 3:  # else the worker died: finish() raises
                found.sources += numbers[0]
                found.restored += numbers[1]
                found.missing += numbers[2]
        self._close_signals()
        return found

    def finish(self) -> tuple[int, list[CommandError]]:
        """Wait for the workers: the ``.pyc`` files they put into the cache, and the errors
        of those that could not compile some files (exit :data:`SOME_FAILED`).

        A worker that failed otherwise (killed, crashed) raises CommandError.
        """
        stored, failed = 0, []
        for running in self.running:
            try:
                output = self.blog.finish(running)
            except CommandError as err:
                if err.code != SOME_FAILED:
                    self.kill()
                    raise
                failed.append(err)
                output = err.output
            stored += sum(int(n) for n in _STORED.findall(output))
            for note in _NOT_STORED.findall(output):
                self.blog.write(f"({note})\n")
        return stored, failed

    def kill(self) -> None:
        for running in self.running:
            running.kill()
            _close(running)
        self._close_signals()

    def _close_signals(self) -> None:
        for signal in self.signals:
            with contextlib.suppress(OSError):
                os.close(signal)
        self.signals = []


def _stdin(running: Running) -> IO[bytes]:
    if running.proc.stdin is None:
        raise RuntimeError("a compile worker was started without a pipe")  # never: stdin=True
    return running.proc.stdin


def _close(running: Running) -> None:
    if running.proc.stdin is not None and not running.proc.stdin.closed:
        with contextlib.suppress(BrokenPipeError):
            running.proc.stdin.close()
