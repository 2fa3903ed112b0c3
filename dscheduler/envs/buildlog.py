"""``build.log``: one build's phases, every command and its output, in one file.

Commands write straight into the log (a long build can be watched with
``tail -f``); the part a command wrote is read back for its error.  A
command may also run in the background (:meth:`BuildLog.start`) while the
next phase goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from ..errors import CommandError
from ..store import atomic
from . import commands

log = logging.getLogger("dscheduler.build")


class Running:
    """A command started by :meth:`BuildLog.start`; a thread notes when it ends."""

    def __init__(
        self, phase: str, args: list[str], proc: subprocess.Popen[bytes], output: Path,
        errors: Path,
    ) -> None:
        self.phase = phase
        self.args = args
        self.proc = proc
        self.output = output
        self.errors = errors
        self.started = time.perf_counter()
        self.ended = 0.0
        self._waiter = threading.Thread(target=self._wait, daemon=True)
        self._waiter.start()

    def _wait(self) -> None:
        self.proc.wait()
        self.ended = time.perf_counter()

    def wait(self) -> int:
        self._waiter.join()
        return self.proc.returncode

    @property
    def seconds(self) -> float:
        return round((self.ended or time.perf_counter()) - self.started, 3)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()


class BuildLog:
    """The log of one build of ``env_id``, opened for appending at ``path``."""

    def __init__(self, path: Path, env_id: str) -> None:
        self.path = path
        self.env_id = env_id
        self.timings: dict[str, float] = {}
        # the store's mode (a log published into the store), not the umask's
        self._file = open(atomic.open_append(path), "ab")  # noqa: SIM115 - closed by close()

    def close(self) -> None:
        self._file.close()

    def write(self, text: str) -> None:
        self._file.write(text.encode(errors="replace"))
        self._file.flush()

    @contextlib.contextmanager
    def phase(self, name: str, detail: str = "") -> Iterator[None]:
        """Time a phase; its header goes to the log and to the ``dscheduler.build`` logger."""
        log.info("env %s: %s%s", self.env_id, name, f" ({detail})" if detail else "")
        self.write(f"\n== {name}{' ' + detail if detail else ''} [{time.strftime('%H:%M:%S')}]\n")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - start, 3)

    def run(
        self, phase: str, cmd: Sequence[str | os.PathLike[str]], *,
        env: Mapping[str, str] | None = None, cwd: Path | None = None,
    ) -> str:
        """Run ``cmd`` with its output in the log; return that output.

        A non-zero exit raises :class:`CommandError` (``what`` is the phase)
        carrying the output the command wrote.
        """
        self.write(f"$ {shlex.join(os.fspath(c) for c in cmd)}\n")
        start = self._file.tell()
        try:
            commands.run(cmd, what=phase, env=env, cwd=cwd, output=self._file)
        except CommandError as err:
            self._file.flush()
            self.write(f"exit {err.code}\n")
            raise CommandError(phase, err.cmd, err.code,
                               self._read_from(start) or err.output) from None
        self._file.flush()
        return self._read_from(start)

    def start(
        self, phase: str, cmd: Sequence[str | os.PathLike[str]], *, output: Path,
        env: Mapping[str, str], cwd: Path, stdin: bool = False, pass_fds: Sequence[int] = (),
    ) -> Running:
        """Start ``cmd`` in the background (stdout to ``output``); see :meth:`finish`.

        ``stdin``: give it a pipe to write to (``running.proc.stdin``), else nothing;
        ``pass_fds``: file descriptors it inherits.
        """
        args = [os.fspath(c) for c in cmd]
        self.write(f"$ {shlex.join(args)}\n(runs alongside the next phase; output below)\n")
        errors = output.with_name(output.name + ".err")
        try:
            with open(output, "wb") as out, open(errors, "wb") as err:
                proc = subprocess.Popen(
                    args, stdout=out, stderr=err, env=dict(env), cwd=cwd, pass_fds=pass_fds,
                    stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
        except OSError as err:
            raise CommandError(phase, args, -1, f"cannot run {args[0]}: {err}") from err
        return Running(phase, args, proc, output, errors)

    def finish(self, running: Running) -> str:
        """Wait for a started command and log its output; return its stdout.

        A non-zero exit raises :class:`CommandError`.
        """
        code = running.wait()
        self.timings[running.phase] = running.seconds
        stdout = running.output.read_text(errors="replace")
        # stderr last: a traceback ends the tail that errors show.
        text = stdout + running.errors.read_text(errors="replace")
        self.write(f"\n== {running.phase}: output of `{running.args[0]} ...`\n{text}")
        if code != 0:
            self.write(f"exit {code}\n")
            raise CommandError(running.phase, running.args, code, text)
        return stdout

    def _read_from(self, offset: int) -> str:
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
