"""What a failed env build tells its user: what failed, why, and how to fix it.

:func:`build_error` turns the error of a build step (a command that failed, an
``OSError``, an :class:`EnvBuildError`) into the :class:`EnvBuildError` a user sees: the
requirement uv could not satisfy, the module the smoke test could not import, or a full
disk, with the command's exit code and the tail of its output.
"""

from __future__ import annotations

import errno
import shlex
from collections.abc import Sequence
from pathlib import Path

from ..errors import CommandError, EnvBuildError, tail
from . import smoke
from .uv import explain_uv_failure


def is_disk_full(err: BaseException | str) -> bool:
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(err)
    return "No space left on device" in text or "Disk quota exceeded" in text


def build_error(
    err: CommandError | OSError | EnvBuildError, where: str, requirements: Sequence[str],
    log_path: Path | None, places: str,
) -> EnvBuildError:
    """The EnvBuildError a user sees for ``err``: what failed, why, how to fix it."""
    kept = str(log_path) if log_path else None
    if isinstance(err, EnvBuildError):
        return EnvBuildError(f"{where}: {err}", log_path=kept)
    if is_disk_full(err) or (isinstance(err, CommandError) and is_disk_full(err.output)):
        return EnvBuildError(
            f"{where}: no space left on device ({places}); free space, or point the setting "
            "env.scratch (or the store) at a larger filesystem",
            log_path=kept, tail=err.tail if isinstance(err, CommandError) else str(err),
        )
    if isinstance(err, OSError):
        return EnvBuildError(f"{where}: {err}", log_path=kept)
    if err.what in ("install", "resolve"):
        msg = explain_uv_failure(err.output, requirements)
    elif err.what == "smoke":
        msg = (
            f"smoke test: `import {smoke.failed_module(err.output) or '?'}` failed in the new "
            "env; fix the requirement that provides it, or set smoke_imports=[...] to check "
            "other modules"
        )
    else:
        msg = f"{err.what} failed"
    return EnvBuildError(
        f"{where}: {msg}\ncommand: {shlex.join(err.cmd)} (exit {err.code})",
        log_path=kept, tail=tail(err.output),
    )
