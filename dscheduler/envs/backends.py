"""Mount backends: one base class doing the work, thin subclasses differing by attributes.

Each backend attaches an env image at a directory and detaches it again;
subclasses differ by class attributes (the tools they need, the env kinds
they serve) and by the commands they run.  :mod:`dscheduler.envs.mount`
shares and reference-counts what they attach.  The order of
:data:`BACKENDS` is the order automatic mode tries them in (docs/design.md §6).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import ClassVar

from ..errors import CommandError, MountError
from ..store import atomic
from . import commands


class Backend:
    """Attach an image at a directory and detach it; subclasses differ by attributes.

    ``kinds``: env kinds it serves.  ``mounts``: whether there is something to
    release (False for the venv directory).  ``read_only``: whether the
    prefix refuses writes.
    """

    name: ClassVar[str]
    tools: ClassVar[tuple[str, ...]] = ()
    kinds: ClassVar[tuple[str, ...]] = ("squashfs",)
    mounts: ClassVar[bool] = True
    read_only: ClassVar[bool] = True
    root_only: ClassVar[bool] = False

    def unavailable(self) -> str | None:
        """Why this backend cannot work on this machine, or None when it can."""
        if self.root_only and os.geteuid() != 0:
            return f"{self.name} needs root"
        for tool in self.tools:
            if shutil.which(tool) is None:
                return f"{tool} not found on PATH"
        return self._unavailable()

    def _unavailable(self) -> str | None:
        return None

    # -- hooks ---------------------------------------------------------------------

    def attach_cmd(self, image: Path, target: Path) -> list[str]:
        raise NotImplementedError

    def detach_cmd(self, target: Path, lazy: bool) -> list[str]:
        raise NotImplementedError

    # -- the work --------------------------------------------------------------------

    def attach(self, image: Path, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        _run(self.attach_cmd(image, target), f"{self.name}: mounting {image}")

    def detach(self, target: Path, stale: bool = False) -> None:
        """Unmount; a busy or broken mount is detached lazily (gone when unused)."""
        if not stale:
            try:
                _run(self.detach_cmd(target, lazy=False), f"{self.name}: unmounting {target}")
                return
            except MountError:
                pass
        _run(self.detach_cmd(target, lazy=True), f"{self.name}: unmounting {target}")

    def state(self, target: Path) -> str:
        """"ok" (a venv is there), "absent" (nothing attached) or "stale" (a dead mount)."""
        try:
            # statvfs always reaches the FUSE server; a stat may be answered
            # from the kernel's attribute cache for a while after it died.
            os.statvfs(target)
            os.stat(target / "pyvenv.cfg")
            return "ok"
        except FileNotFoundError:
            return "stale" if os.path.ismount(target) else "absent"
        except OSError:  # ENOTCONN and friends: the FUSE daemon is gone
            return "stale"


class _Fuse(Backend):
    """FUSE backends: detached with fusermount3/fusermount."""

    def _unavailable(self) -> str | None:
        if not os.access("/dev/fuse", os.R_OK | os.W_OK):
            return "/dev/fuse missing or not accessible"
        if _fusermount() is None:
            return "neither fusermount3 nor fusermount found on PATH (install fuse3)"
        return None

    def detach_cmd(self, target: Path, lazy: bool) -> list[str]:
        return [_fusermount() or "fusermount", "-uz" if lazy else "-u", str(target)]


class SquashfuseBackend(_Fuse):
    name = "squashfuse"
    tools = ("squashfuse",)

    def attach_cmd(self, image: Path, target: Path) -> list[str]:
        return ["squashfuse", str(image), str(target)]


class LoopBackend(Backend):
    name = "loop"
    tools = ("mount", "umount")
    root_only = True

    def _unavailable(self) -> str | None:
        try:
            known = Path("/proc/filesystems").read_text()
        except OSError:
            known = ""
        if "squashfs" not in known:
            return "the kernel has no squashfs support loaded (modprobe squashfs)"
        if not Path("/dev/loop-control").exists():
            return "no loop devices (/dev/loop-control missing)"
        return None

    def attach_cmd(self, image: Path, target: Path) -> list[str]:
        return ["mount", "-t", "squashfs", "-o", "loop,ro", str(image), str(target)]

    def detach_cmd(self, target: Path, lazy: bool) -> list[str]:
        return ["umount", "-l", str(target)] if lazy else ["umount", str(target)]


class ApptainerBackend(_Fuse):
    """The ``squashfuse_ll`` that apptainer ships (HPC sites often have only that)."""

    name = "apptainer"
    tools = ("apptainer",)

    def bundled(self) -> Path | None:
        exe = shutil.which(self.name)
        if exe is None:
            return None
        path = Path(exe).resolve().parent.parent / "libexec" / self.name / "bin" / "squashfuse_ll"
        return path if os.access(path, os.X_OK) else None

    def _unavailable(self) -> str | None:
        if self.bundled() is None:
            return f"{self.name} has no bundled squashfuse_ll (libexec/{self.name}/bin)"
        return super()._unavailable()

    def attach_cmd(self, image: Path, target: Path) -> list[str]:
        return [str(self.bundled()), str(image), str(target)]


class SingularityBackend(ApptainerBackend):
    name = "singularity"
    tools = ("singularity",)


class UnsquashfsBackend(Backend):
    """The image unpacked into the node-local mount root (costs disk and time)."""

    name = "unsquashfs"
    tools = ("unsquashfs",)
    read_only = False

    def attach(self, image: Path, target: Path) -> None:
        # Unpacked beside the target and renamed: a half-unpacked tree is never used.
        tmp = atomic.temp_sibling(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            _run(["unsquashfs", "-no-progress", "-quiet", "-d", str(tmp), str(image)],
                 f"unsquashfs: unpacking {image}")
            with contextlib.suppress(FileNotFoundError):
                target.rmdir()
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def detach(self, target: Path, stale: bool = False) -> None:
        atomic.remove(target, ".old")

    def state(self, target: Path) -> str:
        return "ok" if (target / "pyvenv.cfg").exists() else "absent"


class DirBackend(Backend):
    """An env kept as a venv directory (image="dir"): nothing to mount."""

    name = "dir"
    kinds = ("dir",)
    mounts = False
    read_only = False


#: Every backend, in the order automatic mode tries them.
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (SquashfuseBackend(), LoopBackend(), ApptainerBackend(), SingularityBackend(),
              UnsquashfsBackend(), DirBackend())
}


def backend_names() -> list[str]:
    return list(BACKENDS)


def _fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


def _run(cmd: list[str], what: str) -> None:
    try:
        commands.run(cmd, what=what, timeout=120)
    except CommandError as err:
        raise MountError(str(err)) from err
