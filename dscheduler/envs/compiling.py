"""Compiling an image's ``.py`` files: workers that take the node's cached bytecode or compile.

``compileall -j`` spreads the files of one directory over processes, but an
image build compiles only what the node's bytecode cache lacks
(docs/design.md §14.3), and finding that out means reading and hashing every
source.  So the build lists the sources and hands each to one of
:class:`Compilers`' workers (``compile_worker.py``, run by the env's own
interpreter), the one given the fewest bytes so far: a worker links the
cached ``.pyc`` of each of its files into place and says which files the
cache lacked.  Those are then dealt out again, largest first, to the worker
with the fewest bytes to compile: the misses cluster in the changed package,
so the first deal alone left one worker with up to 56% of the compile.  Each
worker compiles its share as ``compileall`` does and puts it into the cache.
"""

from __future__ import annotations

import contextlib
import heapq
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

    :meth:`send` each source, then :meth:`looked_up` (every cached ``.pyc`` is
    in place once it returns, and the rest dealt out) and :meth:`finish`.
    """

    def __init__(self, blog: BuildLog, python: Path, venv: Path, prefix: str, cache: Path,
                 work: Path, env: dict[str, str], count: int) -> None:
        self.blog = blog
        self.running: list[Running] = []
        self.signals: list[int] = []  # read ends: a worker writes what it found, then closes
        self.loads: list[int] = []
        self.pending: list[bytearray] = []  # lines not yet written, per worker
        self.lookups_ended = False
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
        """End the lookups: every source was sent (once; later calls do nothing)."""
        if self.lookups_ended:
            return
        self.lookups_ended = True
        for i, running in enumerate(self.running):
            if not _stdin(running).closed:
                self.pending[i] += b"\n"  # an empty line: no more files to look up
                self._write(i)

    def looked_up(self) -> Looked:
        """Wait until each worker has put its cached files in place, then deal out the
        files the cache lacked (every worker's input ends then)."""
        self.sent()
        found, missing, alive = Looked(), [], []
        for i, signal in enumerate(self.signals):
            text = b""
            while chunk := os.read(signal, 65536):
                text += chunk
            head, _, rest = text.partition(b"\n")
            numbers = head.split()
            if len(numbers) != 2 or (rest and not rest.endswith(b"\n")):
                continue  # the worker died: finish() raises
            alive.append(i)
            found.sources += int(numbers[0])
            found.restored += int(numbers[1])
            for line in rest.splitlines():
                size, _, named = line.partition(b" ")
                missing.append((int(size), named))  # named: b"{entry} {path}"
        self._close_signals()
        found.missing = len(missing)
        self._deal(missing, alive)
        return found

    def _deal(self, missing: list[tuple[int, bytes]], alive: list[int]) -> None:
        """Largest file first, each to the worker with the fewest bytes to compile."""
        loads = [(0, i) for i in alive]
        for size, named in sorted(missing, key=lambda m: -m[0]):
            load, i = heapq.heappop(loads)
            heapq.heappush(loads, (load + size + 1, i))
            self.pending[i] += named + b"\n"
            if len(self.pending[i]) >= CHUNK:
                self._write(i)
        for i, running in enumerate(self.running):
            if not _stdin(running).closed:
                self._write(i)
                _close(running)

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
