"""Per-cluster TLS credentials: a scheduler dscheduler starts admits only its owner.

Each cluster (the embedded local one, a SLURM cluster, ``cluster up``) gets a
fresh self-signed key and certificate, written 0600 into
``{security.directory}/{cluster id}/`` (a 0700 dir, in the home by default so
that SLURM workers and drivers on other nodes find it), removed when the
cluster closes.  Scheduler, workers and clients present it and accept only it
(distributed's mutual TLS, :class:`distributed.security.Security`): a user who
cannot read the files cannot connect (docs/design.md §15).

:func:`load` gives a client the credentials of a recorded cluster, or a
ConfigError when this user has none: never a plain-TCP fallback.
Setting ``security.mode: tcp`` turns TLS off (plain TCP, as Dask's default),
which lets anyone who reaches a scheduler's port run code as its owner.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any

from .. import settings
from ..errors import ConfigError
from ..store import atomic

MODES = ("tls", "tcp")
CERT, KEY = "cert.pem", "key.pem"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def enabled() -> bool:
    """Whether schedulers dscheduler starts use TLS (setting ``security.mode``)."""
    mode = settings.get("security.mode")
    if mode not in MODES:
        raise ConfigError(
            f"security.mode is {mode!r}, not one of {', '.join(MODES)}: set it to 'tls' "
            "(the default), or to 'tcp' (plain TCP) to accept from anyone who reaches the port")
    return bool(mode == "tls")


def root() -> Path:
    """The private directory that holds every cluster's credentials (made 0700, checked)."""
    where = Path(os.path.expandvars(str(settings.get("security.directory")))).expanduser()
    return settings.private_dir(where, setting="security.directory")


def cluster_dir(cluster_id: str) -> Path:
    """Where cluster ``cluster_id``'s key and certificate are (not checked, not made)."""
    if not _ID.fullmatch(cluster_id):
        raise ConfigError(f"{cluster_id!r} is not a cluster id (letters, digits, '.', '_', "
                          "'-'): the cluster record was edited; `dscheduler cluster down` "
                          "then `up` makes a new one")
    return root() / cluster_id


def _security(where: Path) -> Any:
    """A Security using the key and certificate in ``where`` for every role."""
    from distributed.security import Security

    cert, key = str(where / CERT), str(where / KEY)
    return Security(require_encryption=True, tls_ca_file=cert,
                    tls_client_cert=cert, tls_client_key=key,
                    tls_scheduler_cert=cert, tls_scheduler_key=key,
                    tls_worker_cert=cert, tls_worker_key=key)


def _new_pair() -> tuple[bytes, bytes]:
    """A fresh self-signed (certificate, key), PEM, from distributed's ``Security.temporary()``
    (RSA, ``cryptography``): the same pair serves the scheduler, workers and clients."""
    from distributed.security import Security

    made = Security.temporary()
    return made.tls_scheduler_cert.encode(), made.tls_scheduler_key.encode()


def create(cluster_id: str) -> Any:
    """New credentials for cluster ``cluster_id``, written 0600; their Security."""
    where = settings.private_dir(cluster_dir(cluster_id))
    cert, key = _new_pair()
    atomic.write_bytes(where / KEY, key, mode=0o600)
    atomic.write_bytes(where / CERT, cert, mode=0o600)
    return _security(where)


def load(cluster_id: str, address: str, record: Path | str) -> Any:
    """This user's credentials for the cluster ``record`` names; a ConfigError if none.

    The address is used only with them: an address not ``tls://``, or a cluster
    whose credentials this user does not hold (another user's, or an edited
    record), is refused rather than reached over plain TCP.
    """
    if not address.startswith("tls://"):
        raise ConfigError(
            f"{record} names the scheduler address {address!r}, which is not tls://: refusing "
            "to connect without TLS to an address read from a file. If you started that "
            "cluster with dscheduler.security.mode 'tcp', set it here too")
    where = cluster_dir(cluster_id)
    if not (where / CERT).is_file() or not (where / KEY).is_file():
        raise ConfigError(
            f"no credentials for cluster {cluster_id} ({address}, named by {record}) in "
            f"{where.parent}: only the user who started a cluster can connect to it. If it "
            "is yours and its credentials are gone, `dscheduler cluster down` then `up`")
    return _security(settings.private_dir(where))


def remove(cluster_id: str) -> None:
    """Remove cluster ``cluster_id``'s credentials (it has closed)."""
    shutil.rmtree(cluster_dir(cluster_id), ignore_errors=True)


def local_id() -> str:
    """A fresh id for this process's embedded cluster; the credentials of earlier embedded
    clusters of this host whose process is gone (killed) are removed."""
    host = socket.gethostname()
    for old in root().glob(f"local-{host}-*-*"):
        pid = old.name[len(f"local-{host}-"):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return f"local-{host}-{os.getpid()}-{os.urandom(3).hex()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_config(security: Any) -> dict[str, Any]:
    """Dask config giving a worker process ``security``'s files (paths, not keys)."""
    return {"distributed": {"comm": {
        "require-encryption": True,
        "tls": {"ca-file": security.tls_ca_file,
                "worker": {"cert": security.tls_worker_cert, "key": security.tls_worker_key}},
    }}}
