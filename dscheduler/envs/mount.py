"""``ds.mount(env)``: a path whose ``bin/python`` runs the env (docs/design.md §6)::

    with ds.mount(env) as prefix:          # builds the env first if needed
        subprocess.run([prefix / "bin" / "python", "-c", "import numpy"])

Backends, in this order unless one is named (argument or ``mount.backend``): squashfuse, a
kernel loop mount (root only), apptainer/singularity, unsquashfs into node-local scratch, and
for envs kept as directories the venv itself; in automatic mode one that fails to attach hands
over to the next.  Processes of a node using one image (``lock_id``) and backend share a mount
under ``mount.root``: ``{backend}-{lock_id}.lock`` (flock), ``{backend}-{lock_id}/mnt/``, and
``{backend}-{lock_id}/holders/{pid}-{start time}-{token}``.  The root and each
``{backend}-{lock_id}/`` are made 0700 and checked at every mount
(:func:`dscheduler.settings.private_dir`, §15).  Dead holders (pid gone or reused) do not count;
the last live holder out unmounts; a mount left by a kill -9 is detected and replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .. import identity, settings
from ..errors import MountError
from ..store import Store
from ..store.lease import own_start, process_alive
from .backends import BACKENDS, Backend, backend_names
from .build import build_env
from .published import BuiltEnv, published_env

if TYPE_CHECKING:
    from .spec import Env

__all__ = ["BACKENDS", "Backend", "SharedMount", "backend_names", "mount", "release_unused"]

log = logging.getLogger("dscheduler.mount")


# -- sharing and reference counting --------------------------------------------------


def _holder_name() -> str:
    """``{pid}-{start time in 1/100 s}-{token}``: names one process, also after pid reuse."""
    return f"{os.getpid()}-{int(own_start() * 100)}-{uuid.uuid4().hex[:8]}"


def _holder_alive(name: str) -> bool:
    pid_text, _, rest = name.partition("-")
    started_text = rest.partition("-")[0]
    if not (pid_text.isdigit() and started_text.isdigit()):
        return False
    return process_alive(int(pid_text), int(started_text) / 100)


class SharedMount:
    """One image attached once per node and backend, counted by holder files."""

    def __init__(self, backend: Backend, key: str, root: Path | None = None) -> None:
        self.backend = backend
        self.root = root if root is not None else mount_root()
        self.dir = self.root / key
        self.target = self.dir / "mnt"
        self.holders = self.dir / "holders"
        self.lockfile = self.root / f"{key}.lock"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Checked at each use: a root another user made would let them plant bin/python.
        settings.private_dir(self.root, "mount.root")
        fd = os.open(self.lockfile, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # also releases the flock

    def live_holders(self) -> list[Path]:
        """Holder files of live processes; those of dead ones are removed."""
        live = []
        for holder in self.holders.iterdir() if self.holders.is_dir() else []:
            if _holder_alive(holder.name):
                live.append(holder)
            else:
                holder.unlink(missing_ok=True)
        return live

    def enter(self, image: Path) -> Path:
        """Attach if needed and register this process; returns the holder file."""
        with self._locked():
            settings.private_dir(self.dir, "mount.root")
            live = self.live_holders()
            state = self.backend.state(self.target)
            if state == "stale" or (state == "ok" and not live):
                # Left behind by holders killed with kill -9: replace it.
                self.backend.detach(self.target, stale=state == "stale")
                state = self.backend.state(self.target)
            if state != "absent" and state != "ok":
                raise MountError(f"{self.target} is still a broken mount after unmounting it")
            if state == "absent":
                self.backend.attach(image, self.target)
                if self.backend.state(self.target) != "ok":
                    with contextlib.suppress(MountError):
                        self.backend.detach(self.target, stale=True)
                    raise MountError(
                        f"{self.backend.name}: {image} mounted at {self.target} has no "
                        "pyvenv.cfg: not a dscheduler env image"
                    )
            self.holders.mkdir(parents=True, exist_ok=True)
            holder = self.holders / _holder_name()
            holder.touch()
            return holder

    def exit(self, holder: Path) -> None:
        """Unregister; the last live holder out detaches."""
        with self._locked():
            holder.unlink(missing_ok=True)
            if self.live_holders():
                return
            state = self.backend.state(self.target)
            if state == "absent":
                return
            try:
                self.backend.detach(self.target, stale=state == "stale")
            except MountError as err:
                # Not raised: it would hide the outcome of the work done in the
                # mount; the next mount of this image replaces what is left.
                log.warning("%s", err)
                return
            for empty in (self.target, self.holders, self.dir):
                with contextlib.suppress(OSError):
                    empty.rmdir()


    def release_if_unused(self) -> bool:
        """Detach when no live process holds the mount (holders killed with kill -9)."""
        with self._locked():
            state = self.backend.state(self.target)
            if self.live_holders() or state == "absent":
                return False
            self.backend.detach(self.target, stale=state == "stale")
            for empty in (self.target, self.holders, self.dir):
                with contextlib.suppress(OSError):
                    empty.rmdir()
            return True


def mount_root() -> Path:
    return settings.node_local("mount.root", "dscheduler-mounts")


def release_unused(root: Path | None = None) -> list[Path]:
    """Detach every shared mount on this node that no live process holds; their dirs.

    A worker killed mid-task leaves its mounts held by a dead process until
    the next mount of the same image; SLURM workers call this when they stop
    (and start), so a node gives its mounts back with its last user.
    """
    root = root if root is not None else mount_root()
    released = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        name = d.name.partition("-")[0]
        if d.is_dir() and name in BACKENDS and BACKENDS[name].mounts:
            try:
                if SharedMount(BACKENDS[name], d.name, root).release_if_unused():
                    released.append(d)
            except (MountError, OSError) as err:
                log.warning("releasing %s: %s", d, err)
    return released


# -- the public context manager -------------------------------------------------------


def _resolve(env: Env | BuiltEnv, store: Store | None) -> BuiltEnv:
    if isinstance(env, BuiltEnv):
        return env
    store = store if store is not None else Store()
    return published_env(store, env.env_id) or build_env(store, env)


def _candidates(built: BuiltEnv, backend: str | None) -> list[Backend]:
    name = settings.get("mount.backend", backend)
    if name is not None and name not in BACKENDS:
        raise MountError(f"mount backend {name!r} is unknown; choose one of {backend_names()}")
    if built.kind == "dir":
        # Only the venv itself can serve a directory env, whatever was configured.
        return [BACKENDS["dir"]]
    if name is not None:
        chosen = BACKENDS[name]
        if built.kind not in chosen.kinds:
            raise MountError(
                f"env {built.env_id} is a squashfs image; backend {name!r} serves only envs "
                "built with image='dir'. Choose another backend or rebuild with image='dir'."
            )
        reason = chosen.unavailable()
        if reason:
            raise MountError(f"mount backend {name!r} is not available here: {reason}")
        return [chosen]
    usable = [b for b in BACKENDS.values() if built.kind in b.kinds and not b.unavailable()]
    if not usable:
        reasons = "; ".join(
            f"{b.name}: {b.unavailable()}" for b in BACKENDS.values() if built.kind in b.kinds
        )
        raise MountError(
            f"no way to mount env {built.env_id}'s image here ({reasons}). Install "
            "squashfuse and fuse3 or squashfs-tools, or build envs with image='dir'."
        )
    return usable


@contextlib.contextmanager
def mount(
    env: Env | BuiltEnv, store: Store | None = None, backend: str | None = None
) -> Iterator[Path]:
    """Yield a prefix ``P`` whose ``P/"bin"/"python"`` runs ``env``.

    Parameters
    ----------
    env
        An Env (built first when not yet published) or a :class:`BuiltEnv`.
    store
        Where to find or build an Env (default: ``ds.Store()``).
    backend
        One of :data:`BACKENDS` (default: the setting ``mount.backend``, else
        the first that works here, in the order of :data:`BACKENDS`).

    Mounts are shared per node and image and reference counted; the last
    holder out detaches.  A :class:`MountError` says why none worked.
    """
    built = _resolve(env, store)
    built.touch()
    candidates = _candidates(built, backend)
    if not candidates[0].mounts:
        if built.venv is None:
            raise MountError(f"env {built.env_id} has no venv directory")
        yield built.venv
        return
    if built.image is None:
        raise MountError(f"env {built.env_id} has no image")
    key_id = identity.short_id(built.lock_digest)
    failures = []
    for chosen in candidates:
        shared = SharedMount(chosen, f"{chosen.name}-{key_id}")
        try:
            holder = shared.enter(built.image)
        except (MountError, OSError) as err:
            if len(candidates) == 1:
                raise
            failures.append(f"{chosen.name}: {err}")
            continue
        try:
            yield shared.target
        finally:
            shared.exit(holder)
        return
    raise MountError(f"env {built.env_id}: every mount backend failed:\n" + "\n".join(failures))

