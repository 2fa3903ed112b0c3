"""Checkpoints from where they live (dscheduler/envs/checkpoints.py, Env.from_checkpoint).

Real components: an ``mlflow server`` (sqlite, local artifacts) holding a run whose
artifacts carry dscheduler metadata, registered as a model with a version and an
alias; ``huggingface_hub`` against a small local HTTP server (HF_ENDPOINT) that serves
a repo's files at a commit, the two requests hf_hub_download makes (HEAD and GET of
``/{repo}/resolve/{revision}/{file}``); an anemoi-style zip.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for
from typer.testing import CliRunner
from wheelhouse import MakeEnv

import dscheduler as ds
from dscheduler.cli import app
from dscheduler.envs import checkpoints
from dscheduler.errors import ConfigError

PY = f"{sys.version_info.major}.{sys.version_info.minor}"
META = {"python": PY, "requirements": ["dstest-app==1.0"]}
SHA = "0123456789abcdef0123456789abcdef01234567"
REPO = "ecmwf/aifs-test"
WEIGHTS = b"hf weights " * 1000
MLFLOW_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- a Hugging Face Hub stand-in: the two requests hf_hub_download makes -------------------


class Hub(http.server.ThreadingHTTPServer):
    """``/{repo}/resolve/{revision}/{file}``, HEAD and GET, with the Hub's headers."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.files: dict[str, bytes] = {}
        self.branches = {"main": SHA}
        self.gets: Counter[str] = Counter()
        self.requests = 0
        self.lie = False  # announce a wrong digest
        self.delay = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def etag(self, data: bytes, path: str) -> str:
        if self.lie:
            return hashlib.sha256(b"other").hexdigest()
        if path.endswith(".json"):  # a small file: its git blob sha1, as the Hub does
            return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        return hashlib.sha256(data).hexdigest()  # a large (LFS) file: its sha256


class HubHandler(http.server.BaseHTTPRequestHandler):
    server: Hub

    def log_message(self, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self.answer(body=False)

    def do_GET(self) -> None:
        self.answer(body=True)

    def answer(self, body: bool) -> None:
        hub = self.server
        hub.requests += 1
        prefix = f"/{REPO}/resolve/"
        rest = self.path.split("?")[0][len(prefix):] if self.path.startswith(prefix) else ""
        revision, _, path = rest.partition("/")
        commit = hub.branches.get(revision, revision)
        if commit != SHA or path not in hub.files:
            self.send_response(404)
            code = "EntryNotFound" if commit == SHA else "RevisionNotFound"
            self.send_header("X-Error-Code", code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = hub.files[path]
        if body:
            hub.gets[path] += 1
            time.sleep(hub.delay)
        self.send_response(200)
        self.send_header("X-Repo-Commit", SHA)
        self.send_header("ETag", f'"{hub.etag(data, path)}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    server = Hub()
    server.files = {"ckpt/model.ckpt": WEIGHTS,
                    "ckpt/model.ckpt.dscheduler-env.json": json.dumps(META).encode()}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def hf_url(hub: Hub, revision: str = "main", path: str = "ckpt/model.ckpt") -> str:
    return f"{hub.url}/{REPO}/resolve/{revision}/{path}"


# -- a real MLflow tracking server ---------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """An ``mlflow server`` with a run (artifacts ``model/``: weights and dscheduler
    metadata) registered as model ``forecaster``: version 1 (alias ``champion``) and 2."""
    pytest.importorskip("mlflow")
    base = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    exe = Path(sys.executable).with_name("mlflow")
    with open(base / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [exe, "server", "--backend-store-uri", f"sqlite:///{base}/db.sqlite",
             "--artifacts-destination", str(base / "artifacts"), "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=base)
    try:
        wait_for(lambda: _healthy(url, proc), timeout=300, what="mlflow server to answer")
        with pytest.MonkeyPatch.context() as mp:
            for key, value in MLFLOW_ENV.items():
                mp.setenv(key, value)
            yield {"url": url, **_populate(url, base)}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _healthy(url: str, proc: subprocess.Popen[Any]) -> bool:
    import urllib.request

    if proc.poll() is not None:
        raise RuntimeError(f"mlflow server exited with {proc.returncode}")
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _populate(url: str, base: Path) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url, registry_uri=url)
    run = client.create_run(client.create_experiment("checkpoints")).info
    for version, weights in enumerate((b"weights v1", b"weights v2"), 1):
        model = base / f"model{version}"
        model.mkdir()
        (model / "weights.bin").write_bytes(weights)
        (model / "dscheduler-env.json").write_text(json.dumps(META))
        client.log_artifacts(run.run_id, str(model), f"model{version}")
    client.set_terminated(run.run_id)
    client.create_registered_model("forecaster")
    for version in (1, 2):
        client.create_model_version("forecaster", f"runs:/{run.run_id}/model{version}",
                                    run_id=run.run_id)
    client.set_registered_model_alias("forecaster", "champion", "1")
    return {"run_id": run.run_id, "experiment": run.experiment_id}


# -- parsing: every form, and clear errors ---------------------------------------------------


def test_references_parse_without_io(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.invalid:5000")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    cases = {
        "runs:/0a1b2c/model/w.ckpt": "runs:/0a1b2c/model/w.ckpt",
        "models:/forecaster/03": "models:/forecaster/3",
        "models:/forecaster@champion": "models:/forecaster@champion",
        "https://host/mlstore#/experiments/602/runs/0a1b2c": "runs:/0a1b2c/",
        "https://host/mlstore/#/experiments/602/runs/0a1b2c/artifacts/m/w.pt":
            "runs:/0a1b2c/m/w.pt",
        "https://host/mlstore#/models/forecaster/versions/4": "models:/forecaster/4",
        f"https://huggingface.co/{REPO}/resolve/{SHA}/ckpt/x.ckpt":
            f"hf://{REPO}/ckpt/x.ckpt@{SHA}",
        f"https://huggingface.co/datasets/{REPO}/blob/main/x.ckpt": f"hf://datasets/{REPO}/x.ckpt@main",
        f"hf://{REPO}/ckpt/x.ckpt@{SHA}": f"hf://{REPO}/ckpt/x.ckpt@{SHA}",
        f"hf://{REPO}/x.ckpt": f"hf://{REPO}/x.ckpt@main",
    }
    for text, resolved in cases.items():
        ref = checkpoints.parse(text)
        assert ref.resolved == resolved, text
    assert checkpoints.parse("https://host/mlstore#/experiments/602/runs/0a1b2c").server \
        == "https://host/mlstore"
    assert checkpoints.parse("models:/forecaster@champion").moving
    assert checkpoints.parse(f"hf://{REPO}/x.ckpt@v1.0").moving
    assert not checkpoints.parse(f"hf://{REPO}/x.ckpt@{SHA}").moving
    assert checkpoints.parse("/data/model.ckpt").local


def test_bad_references_name_the_reference_and_the_forms(tmp_path: Path) -> None:
    for bad in ("models:/forecaster", "models:/forecaster/latest", "runs:/", "s3://bucket/x",
                "https://example.com/some/file.ckpt", "hf://org/only",
                f"https://huggingface.co/{REPO}/resolve/main/../../etc/passwd",
                "https://host/mlstore#/experiments/602"):
        with pytest.raises(ConfigError) as err:
            ds.Env.from_checkpoint(bad)
        assert repr(bad) in str(err.value) and "accepted forms" in str(err.value), bad
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(ConfigError, match=f"checkpoint {missing} does not exist"):
        ds.checkpoint(missing)


# -- env_id: no I/O; moving references pinned -------------------------------------------------


def test_env_id_needs_no_server(monkeypatch: pytest.MonkeyPatch, hub: Hub) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nobody
    run = ds.Env.from_checkpoint("runs:/0a1b2c/model")
    assert run.env_id == ds.Env.from_checkpoint("runs:/0a1b2c/model").env_id
    assert run.env_id != ds.Env.from_checkpoint("runs:/0a1b2c/model", ["dstest-base"]).env_id
    assert run.env_id != ds.Env.from_checkpoint("runs:/0a1b2c/other").env_id
    # A run id is unique across servers; a model name is not.
    web = ds.Env.from_checkpoint("https://elsewhere/ml#/experiments/1/runs/0a1b2c/artifacts/model")
    assert web.env_id == run.env_id
    model = ds.Env.from_checkpoint("models:/forecaster/1")
    assert model.env_id != ds.Env.from_checkpoint(
        "https://elsewhere/ml#/models/forecaster/versions/1").env_id
    pinned = ds.Env.from_checkpoint(hf_url(hub, SHA))
    assert pinned.env_id == ds.Env.from_checkpoint(f"hf://{REPO}/ckpt/model.ckpt@{SHA}").env_id
    assert hub.requests == 0
    # The bare-Env ids are unchanged by the checkpoint field.
    assert ds.Env(python="3.11").env_id == "0f76bbead89361d8"


def test_alias_is_pinned_and_both_are_kept(mlflow: dict[str, str], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow["url"])
    env = ds.Env.from_checkpoint("models:/forecaster@champion")
    assert env.checkpoint is not None
    assert env.checkpoint.reference == "models:/forecaster@champion"
    assert env.checkpoint.resolved == "models:/forecaster/1"
    assert env.env_id == ds.Env.from_checkpoint("models:/forecaster/1").env_id
    assert env.env_id != ds.Env.from_checkpoint("models:/forecaster/2").env_id
    web = f"{mlflow['url']}/#/models/forecaster/versions/1"
    assert ds.Env.from_checkpoint(web).env_id == env.env_id


def test_mlflow_env_is_built_from_its_metadata(
    mlflow: dict[str, str], make_env: MakeEnv, wheelhouse: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow["url"])
    store = ds.Store(tmp_path / "store")
    env = ds.Env.from_checkpoint("models:/forecaster@champion", find_links=[str(wheelhouse)],
                                 offline=True, image="dir")
    built = env.build(store)
    assert built.env_id == env.env_id
    spec = built.record["spec"]
    assert spec["requirements"] == ["dstest-app==1.0"] and spec["python"] == PY
    assert spec["checkpoint"]["reference"] == "models:/forecaster@champion"
    assert spec["checkpoint"]["resolved"] == "models:/forecaster/1"
    weights = store.root / spec["checkpoint"]["path"] / "weights.bin"
    assert weights.read_bytes() == b"weights v1"
    listed = CliRunner().invoke(app, ["envs", "list", "--store", str(store.root), "--json"])
    assert json.loads(listed.output.splitlines()[0])["checkpoint"]["resolved"] \
        == "models:/forecaster/1"
    table = CliRunner().invoke(app, ["envs", "list", "--store", str(store.root)],
                               env={"COLUMNS": "300"})
    assert "models:/forecaster@champion -> models:/forecaster/1" in table.output
    # ds.checkpoint: the same stored copy, by any of the forms.
    run_url = (f"{mlflow['url']}#/experiments/{mlflow['experiment']}/runs/{mlflow['run_id']}"
               "/artifacts/model2")
    assert ds.checkpoint("models:/forecaster@champion", store) == weights.parent
    assert (ds.checkpoint(run_url, store) / "weights.bin").read_bytes() == b"weights v2"


# -- fetched once per store, verified --------------------------------------------------------

CHILD = """
import sys, dscheduler as ds
print(ds.checkpoint(sys.argv[1], sys.argv[2]))
"""


def fetch_in_processes(n: int, reference: str, store: Path) -> list[str]:
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, reference, str(store)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        outs.append(out.strip())
    return outs


def test_fetched_once_across_processes(hub: Hub, tmp_path: Path) -> None:
    hub.delay = 1.0  # both processes are waiting while the first downloads
    store = tmp_path / "store"
    paths = fetch_in_processes(2, hf_url(hub), store)
    assert paths[0] == paths[1]
    assert hub.gets["ckpt/model.ckpt"] == 1
    local = Path(paths[0])
    assert local.read_bytes() == WEIGHTS and local.parent.name == \
        checkpoints.tree_digest(local.parent)
    record = json.loads(next((store / "checkpoints" / "refs").glob("*.json")).read_text())
    assert record["reference"] == hf_url(hub) and record["resolved"].endswith(f"@{SHA}")
    # The env reads the sidecar that came with it.
    env = ds.Env.from_checkpoint(hf_url(hub)).for_build(ds.Store(store))
    assert env.requirements == ("dstest-app==1.0",) and hub.gets["ckpt/model.ckpt"] == 1


def test_corrupted_copy_is_refused_and_fetched_again(hub: Hub, tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "store")
    local = ds.checkpoint(hf_url(hub), store)
    local.write_bytes(b"X" + WEIGHTS[1:])  # bit rot, or a hand edit
    assert fetch_in_processes(1, hf_url(hub), store.root) == [str(local)]
    assert local.read_bytes() == WEIGHTS and hub.gets["ckpt/model.ckpt"] == 2
    os.utime(local, ns=(1, 1))  # in this process: the memo is keyed by mtime too
    local.write_bytes(b"Y" + WEIGHTS[1:])
    assert ds.checkpoint(hf_url(hub), store).read_bytes() == WEIGHTS
    assert hub.gets["ckpt/model.ckpt"] == 3


def test_a_download_that_misses_its_digest_is_not_stored(hub: Hub, tmp_path: Path) -> None:
    hub.lie = True
    store = ds.Store(tmp_path / "store")
    with pytest.raises(ConfigError, match="the server announced"):
        ds.checkpoint(hf_url(hub, SHA), store)
    assert [p.name for p in (store.root / "checkpoints").iterdir()] == ["refs"]
    assert not list((store.root / "checkpoints" / "refs").iterdir())
    with pytest.raises(ConfigError, match=f"has no file 'ckpt/none.ckpt' at revision {SHA}"):
        ds.checkpoint(hf_url(hub, SHA, "ckpt/none.ckpt"), store)


# -- optional clients --------------------------------------------------------------------

BLOCKED = """
import sys
sys.modules[sys.argv[1]] = None  # as if not installed
import dscheduler as ds
try:
    ds.checkpoint(sys.argv[2], sys.argv[3])
except ds.ConfigError as err:
    print(err)
"""


@pytest.mark.parametrize(("module", "reference", "extra"), [
    ("huggingface_hub", f"hf://{REPO}/x.ckpt@{SHA}", "hf"),
    ("mlflow", "runs:/0a1b2c/model", "mlflow"),
])
def test_missing_client_names_the_extra(module: str, reference: str, extra: str,
                                        tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", BLOCKED, module, reference, str(tmp_path)],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert f"pip install 'dscheduler[{extra}]'" in out.stdout, out.stderr
    assert repr(reference) in out.stdout


# -- anemoi checkpoints ------------------------------------------------------------------


def test_anemoi_checkpoint_env(tmp_path: Path) -> None:
    provenance = {"python": "3.11.9", "module_versions": {
        "torch": "2.4.0+cu121", "anemoi.models": "0.3.1", "_cffi_backend": "1.16.0",
        "yaml": "6.0.1", "weird": "not a version", "numpy": "1.26.4"},
        "distribution_names": {"yaml": "PyYAML", "numpy": "numpy; os_name=='nt'"}}
    ckpt = tmp_path / "inference-last.ckpt"
    with zipfile.ZipFile(ckpt, "w") as zf:
        zf.writestr("inference-last/data.pkl", b"...")
        zf.writestr("inference-last/anemoi-metadata/ai-models.json",
                    json.dumps({"provenance_training": provenance, "config": {}}))
    env = ds.Env.from_checkpoint(ckpt, extra_requirements=["anemoi-inference"])
    assert env.python == "3.11"
    assert env.requirements == ("anemoi-inference", "anemoi-models==0.3.1", "pyyaml==6.0.1",
                                "torch==2.4.0")
    assert ds.checkpoint(ckpt) == ckpt
    with zipfile.ZipFile(tmp_path / "bare.ckpt", "w") as zf:
        zf.writestr("x/anemoi-metadata/ai-models.json", json.dumps({"config": {}}))
    with pytest.raises(ConfigError, match=r"provenance_training\.module_versions"):
        ds.Env.from_checkpoint(tmp_path / "bare.ckpt")


def test_metadata_is_data_not_commands(hub: Hub, tmp_path: Path) -> None:
    hub.files["ckpt/model.ckpt.dscheduler-env.json"] = json.dumps(
        {"requirements": ["x; import os"], "index_url": "--config-file=/tmp/evil"}).encode()
    env = ds.Env.from_checkpoint(hf_url(hub))
    with pytest.raises(ConfigError, match=r"(?s)checkpoint 'http.*not valid PEP 508"):
        env.for_build(ds.Store(tmp_path / "store"))
    hub.files["ckpt/model.ckpt.dscheduler-env.json"] = json.dumps(
        {"index_url": "--config-file=/tmp/evil"}).encode()
    with pytest.raises(ConfigError, match="starts with '-'"):
        ds.Env.from_checkpoint(hf_url(hub)).for_build(ds.Store(tmp_path / "store2"))


def test_cli_builds_a_registry_checkpoint_env(hub: Hub, wheelhouse: Path, node_dirs: Any,
                                               tmp_path: Path) -> None:
    store = tmp_path / "store"
    built = CliRunner().invoke(app, ["envs", "build", hf_url(hub), "--find-links",
                                     str(wheelhouse), "--offline", "--image", "dir",
                                     "--store", str(store), "-q"])
    assert built.exit_code == 0, built.output
    listed = CliRunner().invoke(app, ["envs", "list", "--store", str(store), "--json"])
    row = json.loads(listed.output.splitlines()[0])
    assert row["checkpoint"]["reference"] == hf_url(hub)
    assert row["checkpoint"]["resolved"] == f"hf://{REPO}/ckpt/model.ckpt@{SHA}"
    env = ds.Env.from_checkpoint(hf_url(hub), find_links=[str(wheelhouse)], offline=True)
    assert row["env_id"] == env.env_id
    record = json.loads((store / "envs" / env.env_id / "env.json").read_text())
    assert record["spec"]["requirements"] == ["dstest-app==1.0"]  # from the sidecar


def test_gc_removes_fetch_leftovers_only(tmp_path: Path) -> None:
    from dscheduler.envs.gc import gc_apply, gc_plan

    store = ds.Store(tmp_path / "store").ensure()
    top = store.root / "checkpoints"
    kept = top / ("a" * 64)
    dead, alive = top / ".0123456789abcdef.x1.partial", top / ".fedcba9876543210.x2.partial"
    for d in (kept, dead, alive):
        d.mkdir(parents=True)
    with store.lease("checkpoint-fedcba9876543210"):  # a fetch in progress
        plan = gc_plan(store)
        assert dead in plan.leftovers and alive not in plan.leftovers
        gc_apply(store, plan)
    assert sorted(p.name for p in top.iterdir()) == sorted([kept.name, alive.name])
