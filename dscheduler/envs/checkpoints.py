"""Checkpoints from where they live: local paths, MLflow and Hugging Face references.

:func:`parse` reads a reference with no I/O.  :func:`resolve` pins a moving one (an MLflow model
alias, a Hugging Face branch) to an immutable one (model version, commit sha) by asking its
server.  :func:`fetch` brings a pinned registry checkpoint into the store once per store: under
the lease ``locks/checkpoint-{key}.lease``, downloaded into a temporary directory, checked
against the digest the source gives (Hugging Face ETags), renamed to ``checkpoints/{sha256}/``
(sha256 of the tree: content-addressed) and named by ``checkpoints/refs/{key}.json``.  A stored
copy is hashed again once per process (memo: path, size, mtime); one whose hash differs from its
name is removed and fetched again.  ``mlflow`` and ``huggingface_hub`` are optional (extras
``mlflow`` and ``hf``), imported on first use.  Nothing downloaded is executed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import logging
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from .. import identity
from ..errors import ConfigError
from ..store import atomic, store_of
from ..store.lease import lease_held

if TYPE_CHECKING:
    from ..store import Store
    from ..store.lease import Lease

log = logging.getLogger("dscheduler.checkpoints")

#: The forms a reference may take, for error messages.
FORMS = (
    "a local file or directory; runs:/RUN_ID/PATH; models:/NAME/VERSION; models:/NAME@ALIAS; "
    "an MLflow web URL (https://HOST/PATH#/experiments/N/runs/RUN_ID[/artifacts/PATH] or "
    "#/models/NAME/versions/VERSION); https://huggingface.co/ORG/REPO/resolve/REVISION/FILE; "
    "hf://ORG/REPO/FILE[@REVISION]"
)
HF_DEFAULT = "https://huggingface.co"
SIDECAR = ".dscheduler-env.json"  # spec.CHECKPOINT_METADATA beside a file
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_RUN_ID = re.compile(r"^[0-9a-zA-Z-]{1,64}$")
_MODEL = re.compile(r"^[^/@#?\s][^/@#?]{0,255}$")
_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> tree sha256


@dataclass(frozen=True)
class Ref:
    """A parsed checkpoint reference.  ``kind``: local, mlflow-run, mlflow-model or hf."""

    reference: str  # as given
    kind: str
    server: str = ""  # MLflow tracking URI, Hugging Face endpoint
    name: str = ""  # local path, run id, model name or HF repo id
    path: str = ""  # artifact path in the run, or the HF file
    version: str = ""  # model version, HF revision
    alias: str = ""  # model alias (moving)
    repo_type: str = "model"  # HF: model or dataset

    @property
    def local(self) -> bool:
        return self.kind == "local"

    @property
    def moving(self) -> bool:
        """True when the reference may name other bytes tomorrow (alias, branch)."""
        if self.kind == "mlflow-model":
            return bool(self.alias)
        return self.kind == "hf" and not _SHA1.match(self.version)

    @property
    def resolved(self) -> str:
        """The reference in its canonical text (for a pinned one: immutable)."""
        if self.kind == "mlflow-run":
            return f"runs:/{self.name}/{self.path}"
        if self.kind == "mlflow-model":
            return f"models:/{self.name}@{self.alias}" if self.alias \
                else f"models:/{self.name}/{self.version}"
        if self.kind == "hf":
            repo = f"datasets/{self.name}" if self.repo_type == "dataset" else self.name
            return f"hf://{repo}/{self.path}@{self.version}"
        return self.name

    def identity(self) -> dict[str, str]:
        """What names the checkpoint: the canonical reference and, unless a run id (unique
        across servers), the server it lives on."""
        return {"reference": self.resolved,
                "server": "" if self.kind == "mlflow-run" else self.server}

    @property
    def key(self) -> str:
        """Short id of :meth:`identity`: the name of its lease and ref record."""
        return identity.short_id(identity.digest("checkpoint", self.identity()))

    def pinned(self, version: str) -> Ref:
        return Ref(self.reference, self.kind, self.server, self.name, self.path, version,
                   "", self.repo_type)


# -- parsing (no I/O) -------------------------------------------------------------------


def bad(reference: object, why: str) -> ConfigError:
    return ConfigError(f"checkpoint reference {reference!r}: {why}; accepted forms: {FORMS}")


def parse(reference: str | os.PathLike[str], server: str | None = None) -> Ref:
    """``reference`` parsed, with no I/O (a ConfigError naming it and the accepted forms).

    ``server``: the MLflow tracking URI or Hugging Face endpoint (default: from the URL,
    else ``MLFLOW_TRACKING_URI`` or ``HF_ENDPOINT``).
    """
    if isinstance(reference, os.PathLike):
        return Ref(os.fspath(reference), "local", name=os.fspath(reference))
    if not isinstance(reference, str) or not reference.strip():
        raise bad(reference, "give a non-empty string or path")
    text = reference.strip()
    scheme = urlsplit(text).scheme.lower()
    if text.startswith("runs:/"):
        return _mlflow_run(text, text[len("runs:/"):],
                           server or os.environ.get("MLFLOW_TRACKING_URI", ""))
    if text.startswith("models:/"):
        return _mlflow_model(text, text[len("models:/"):],
                             server or os.environ.get("MLFLOW_TRACKING_URI", ""))
    if scheme == "hf":
        return _hf_uri(text, server or os.environ.get("HF_ENDPOINT", HF_DEFAULT))
    if scheme in ("http", "https"):
        return _url(text, server)
    if scheme and not Path(text).exists():  # "run:3.ckpt" may be a file's name
        raise bad(text, f"the scheme {scheme}: is not one dscheduler fetches from")
    return Ref(text, "local", name=text)


def _mlflow_run(text: str, rest: str, server: str) -> Ref:
    run_id, _, path = rest.lstrip("/").partition("/")
    if not _RUN_ID.match(run_id):
        raise bad(text, f"{run_id!r} is not an MLflow run id")
    return Ref(text, "mlflow-run", server.rstrip("/"), run_id, _clean_path(text, path))


def _mlflow_model(text: str, rest: str, server: str) -> Ref:
    name, at, alias = rest.partition("@")
    if at:
        if not _MODEL.match(name) or not _ALIAS.match(alias):
            raise bad(text, "write models:/NAME@ALIAS with a model name and an alias")
        return Ref(text, "mlflow-model", server.rstrip("/"), name, alias=alias)
    name, _, version = rest.rpartition("/")
    if not _MODEL.match(name) or not version.isdigit():
        raise bad(text, "write models:/NAME/VERSION with a numeric version, or "
                        "models:/NAME@ALIAS")
    return Ref(text, "mlflow-model", server.rstrip("/"), name, version=str(int(version)))


def _hf_uri(text: str, endpoint: str) -> Ref:
    rest, at, revision = text[len("hf://"):].partition("@")
    parts = rest.split("/")
    repo_type = "model"
    if parts[0] == "datasets":
        repo_type, parts = "dataset", parts[1:]
    if len(parts) < 3:
        raise bad(text, "write hf://ORG/REPO/FILE[@REVISION]")
    return _hf(text, endpoint, "/".join(parts[:2]), "/".join(parts[2:]),
               revision if at else "main", repo_type)


def _hf(text: str, endpoint: str, repo: str, path: str, revision: str, repo_type: str) -> Ref:
    if not all(_REPO_PART.match(p) for p in repo.split("/")):
        raise bad(text, f"{repo!r} is not a Hugging Face repo id (ORG/REPO)")
    if not revision or revision.startswith("-") or any(c in revision for c in " \0\n"):
        raise bad(text, f"{revision!r} is not a revision")
    return Ref(text, "hf", endpoint.rstrip("/"), repo, _clean_path(text, path), revision,
               repo_type=repo_type)


def _url(text: str, server: str | None) -> Ref:
    url = urlsplit(text)
    if url.fragment.startswith("/"):
        return _mlflow_web(text, url.fragment, server or text.split("#", 1)[0].rstrip("/"))
    hf_hosts = {"huggingface.co", "hf.co", urlsplit(os.environ.get("HF_ENDPOINT", "")).hostname}
    hf_hosts.discard(None)
    parts = [unquote(p) for p in url.path.split("/") if p]
    repo_type = "model"
    if parts[:1] == ["datasets"]:
        repo_type, parts = "dataset", parts[1:]
    if url.hostname not in hf_hosts or len(parts) < 5 or parts[2] not in ("resolve", "blob"):
        raise bad(text, "a URL must be a Hugging Face file URL (.../ORG/REPO/resolve/REV/FILE) "
                        "or an MLflow web URL with a #/experiments/... or #/models/... part")
    endpoint = server or f"{url.scheme}://{url.netloc}"
    return _hf(text, endpoint, "/".join(parts[:2]), "/".join(parts[4:]), parts[3], repo_type)


def _mlflow_web(text: str, fragment: str, server: str) -> Ref:
    parts = [unquote(p) for p in fragment.split("?")[0].split("/") if p]
    if len(parts) >= 4 and parts[0] == "experiments" and parts[2] == "runs":
        path = "/".join(parts[5:]) if parts[4:5] == ["artifacts"] else ""
        return _mlflow_run(text, f"{parts[3]}/{path}", server)
    if len(parts) == 4 and parts[0] == "models" and parts[2] == "versions":
        return _mlflow_model(text, f"{parts[1]}/{parts[3]}", server)
    raise bad(text, "an MLflow web URL must end in #/experiments/N/runs/RUN_ID"
                    "[/artifacts/PATH] or #/models/NAME/versions/VERSION")


def _clean_path(text: str, path: str) -> str:
    path = path.strip("/")
    if any(part in ("", ".", "..") for part in path.split("/")) and path:
        raise bad(text, f"the path {path!r} has empty, '.' or '..' parts")
    return path


# -- the registries' clients (optional) --------------------------------------------------


def client(module: str, extra: str, ref: Ref) -> ModuleType:
    """``module`` imported, or a ConfigError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"checkpoint {ref.reference!r} needs the {module.split('.')[0]} package, which is "
            f"not installed: pip install 'dscheduler[{extra}]'"
        ) from None


def _mlflow_server(ref: Ref) -> str:
    if not ref.server:
        raise ConfigError(
            f"checkpoint {ref.reference!r}: no MLflow server: set MLFLOW_TRACKING_URI, or give "
            "the run's web URL (https://HOST/PATH#/experiments/N/runs/RUN_ID)")
    return ref.server


def resolve(ref: Ref) -> Ref:
    """``ref`` pinned: an alias to its model version, a branch or tag to its commit sha."""
    if not ref.moving:
        return ref
    if ref.kind == "mlflow-model":
        mlflow = client("mlflow.tracking", "mlflow", ref)
        server = _mlflow_server(ref)
        found = mlflow.MlflowClient(tracking_uri=server, registry_uri=server) \
            .get_model_version_by_alias(ref.name, ref.alias)
        return ref.pinned(str(found.version))
    hub = client("huggingface_hub", "hf", ref)
    meta = hub.get_hf_file_metadata(_hf_url(hub, ref, ref.version))
    if not meta.commit_hash or not _SHA1.match(meta.commit_hash):
        raise ConfigError(f"checkpoint {ref.reference!r}: {ref.server} named no commit for "
                          f"revision {ref.version!r}")
    return ref.pinned(meta.commit_hash)


def _hf_url(hub: ModuleType, ref: Ref, revision: str) -> str:
    return str(hub.hf_hub_url(ref.name, ref.path, repo_type=ref.repo_type, revision=revision,
                              endpoint=ref.server))


# -- the store's copies ------------------------------------------------------------------


def checkpoints_dir(store: Store) -> Path:
    return store.root / "checkpoints"


def ref_record(store: Store, key: str) -> Path:
    return checkpoints_dir(store) / "refs" / f"{key}.json"


def tree_digest(root: Path) -> str:
    """sha256 of a directory tree: every file's relative path and sha256, in order.
    Symlinks and special files are refused (a download makes neither)."""
    lines = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise ConfigError(f"{path}: a checkpoint holds only files and directories")
        if path.is_file():
            lines.append(f"{path.relative_to(root).as_posix()}\0{file_sha256(path)}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _signature(root: Path) -> tuple[str, int, int]:
    """(path, total size, newest mtime) of a tree: the memo key of its verification."""
    stats = [p.stat() for p in root.rglob("*")] + [root.stat()]
    return str(root), sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats)


def verified(content: Path, sha256: str) -> bool:
    """True when ``content`` hashes to ``sha256`` (hashed once per process per state)."""
    try:
        sig = _signature(content)
        if _verified.get(sig) != sha256:
            found = tree_digest(content)
            if found != sha256:
                return False
            _verified[sig] = found
    except (OSError, ConfigError):
        return False
    return True


def stored(store: Store, ref: Ref, repair: bool = False) -> Path | None:
    """The stored copy of pinned ``ref`` when it is whole, else None.  ``repair`` (under
    the lease): remove a copy whose bytes differ from its name."""
    fetched = atomic.read_json(ref_record(store, ref.key))
    if not isinstance(fetched, dict) or not _SHA256.match(str(fetched.get("sha256"))):
        return None
    name = str(fetched.get("name"))
    if "/" in name or name in ("", ".", ".."):  # the store is data: one name, no more
        return None
    content = checkpoints_dir(store) / fetched["sha256"]
    if content.is_dir() and verified(content, fetched["sha256"]):
        return content / name
    if content.exists():
        log.warning("checkpoint %s: stored copy %s does not match its digest%s",
                    ref.reference, content, "; fetching again" if repair else "")
        if repair:
            atomic.remove(content)
    return None


def fetch(store: Store, ref: Ref, ttl: float | None = None) -> tuple[Path, dict[str, Any]]:
    """The local path of a registry checkpoint (pinned ``ref``), fetched once per store;
    and its ref record (reference, resolved, sha256, where and when it was fetched)."""
    if ref.local or ref.moving:
        raise ValueError(f"fetch needs a pinned registry reference, not {ref.reference!r}")
    found = stored(store, ref)
    if found is None:
        store.ensure()
        with store.lease(f"checkpoint-{ref.key}", ttl=ttl, owner=f"fetch {ref.resolved}") as lease:
            found = stored(store, ref, repair=True) or _fetch(store, ref, lease)
    return found, atomic.read_json(ref_record(store, ref.key))


def _fetch(store: Store, ref: Ref, lease: Lease) -> Path:
    top = checkpoints_dir(store)
    atomic.make_dirs(top / "refs")
    _remove_leftovers(top, ref.key)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ref.key}.", suffix=".partial", dir=top))
    try:
        payload = tmp / "payload"
        payload.mkdir()
        name = _download(ref, payload, tmp)
        sha256 = tree_digest(payload)
        final = top / sha256
        lease.check()
        if not (final.is_dir() and verified(final, sha256)):  # else: same bytes, other ref
            if final.exists():
                atomic.remove(final)
            atomic.fix_tree(payload)
            try:
                os.rename(payload, final)
            except OSError:
                if not verified(final, sha256):  # not another ref's fetcher, just now
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic.write_json(ref_record(store, ref.key), {
        "reference": ref.reference, "resolved": ref.resolved, "server": ref.server,
        "sha256": sha256, "name": name, "path": f"{top.name}/{sha256}/{name}",
        "host": socket.gethostname(), "fetched": dt.datetime.now(dt.UTC).isoformat(
            timespec="seconds")})
    log.info("checkpoint %s: fetched into %s", ref.resolved, final)
    return final / name


def _remove_leftovers(top: Path, key: str) -> None:
    """Temporary dirs of fetchers of ``key`` killed mid-fetch (we hold its lease)."""
    for stale in top.glob(f".{key}.*.partial"):
        shutil.rmtree(stale, ignore_errors=True)


def _download(ref: Ref, payload: Path, scratch: Path) -> str:
    """Download ``ref`` into ``payload``; the name of what it downloaded there."""
    if ref.kind == "hf":
        return _download_hf(ref, payload, scratch)
    artifacts = client("mlflow.artifacts", "mlflow", ref)
    server = _mlflow_server(ref)
    if ref.kind == "mlflow-model":
        tracking = client("mlflow.tracking", "mlflow", ref)
        uri = tracking.MlflowClient(tracking_uri=server, registry_uri=server) \
            .get_model_version_download_uri(ref.name, ref.version)
        name = ref.name.replace("/", "_") + f"-v{ref.version}"
    else:
        uri = f"runs:/{ref.name}/{ref.path}"
        name = ref.path.rsplit("/", 1)[-1] or "artifacts"
    got = Path(artifacts.download_artifacts(artifact_uri=uri, dst_path=str(scratch / "dl"),
                                            tracking_uri=server))
    os.rename(got, payload / name)
    if ref.kind == "mlflow-run" and ref.path and (payload / name).is_file():
        try:  # the metadata sidecar, when the run has one
            side = artifacts.download_artifacts(artifact_uri=uri + SIDECAR,
                                                dst_path=str(scratch / "side"), tracking_uri=server)
            os.rename(side, payload / (name + SIDECAR))
        except Exception:  # mlflow raises its own errors and OSErrors: no sidecar
            pass
    return name


def _download_hf(ref: Ref, payload: Path, scratch: Path) -> str:
    hub = client("huggingface_hub", "hf", ref)
    name = ref.path.rsplit("/", 1)[-1]
    for filename in (ref.path, ref.path + SIDECAR):
        url = hub.hf_hub_url(ref.name, filename, repo_type=ref.repo_type,
                             revision=ref.version, endpoint=ref.server)
        try:
            etag = hub.get_hf_file_metadata(url).etag
            got = hub.hf_hub_download(ref.name, filename, repo_type=ref.repo_type,
                                      revision=ref.version, endpoint=ref.server,
                                      cache_dir=scratch / "hf")
        except hub.errors.EntryNotFoundError:
            if filename != ref.path:
                continue  # no metadata sidecar: fine
            raise ConfigError(f"checkpoint {ref.reference!r}: {ref.name} has no file "
                              f"{filename!r} at revision {ref.version}") from None
        target = payload / (name + filename[len(ref.path):])
        shutil.copyfile(Path(got).resolve(), target)
        check_etag(ref, target, etag)
    return name


def check_etag(ref: Ref, path: Path, etag: str | None) -> None:
    """The download's bytes against the digest the Hub gave: sha256 (large files) or the
    git blob sha1 (small ones).  hf_hub_download checks neither for every file."""
    etag = (etag or "").strip('"').removeprefix("W/").strip('"')
    if _SHA256.match(etag):
        found = file_sha256(path)
    elif _SHA1.match(etag):
        data = path.read_bytes()
        found = hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
    else:
        return  # no digest given (a plain HTTP mirror): the tree digest is the record
    if found != etag:
        raise ConfigError(f"checkpoint {ref.reference!r}: {path.name} downloaded with digest "
                          f"{found}, but the server announced {etag}; nothing was stored")


# -- what a task calls ---------------------------------------------------------------------


def checkpoint(reference: str | os.PathLike[str],
               store: Store | str | os.PathLike[str] | None = None) -> Path:
    """A local path to the checkpoint ``reference`` names: a local path as it is; an MLflow
    or Hugging Face reference fetched into ``store`` (default: the setting ``store``) once."""
    ref = parse(reference)
    if ref.local:
        path = Path(ref.name).expanduser()
        if not path.exists():
            raise ConfigError(f"checkpoint {ref.name} does not exist; accepted forms: {FORMS}")
        return path.absolute()
    return fetch(store_of(store), resolve(ref))[0]


def leftovers(store: Store) -> list[Path]:
    """Temporary names in ``checkpoints/`` whose fetcher holds no lease (for gc)."""
    top = checkpoints_dir(store)
    found = sorted(top.glob(".*")) if top.is_dir() else []
    return [p for p in found
            if not lease_held(store.lease_path(f"checkpoint-{p.name.split('.')[1]}"))]
