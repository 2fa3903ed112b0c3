"""Make the recipe's model registry: two forecaster "checkpoints" in a local MLflow.

    .venv/bin/python recipes/multi_model/make_registry.py [DIR]

DIR (default ``recipes/multi_model/registry``) gets ``mlflow.db`` (the tracking and
registry store, SQLite: no server to run) and ``artifacts/`` (the artifact root).
Two registered models, version 1 each, whose artifacts ``checkpoint/`` hold the
weights (``weights.npz``: a learnt advection speed and damping) and the env the
model was "trained" in (``dscheduler-env.json``), pinned differently on purpose:
``toy-forecaster-a`` under numpy 2.2, ``toy-forecaster-b`` under numpy 1.26.
Running it again changes nothing: a model that has a version 1 is left alone.
Prints the ``MLFLOW_TRACKING_URI`` to use (the recipe uses this one by default).
"""

from __future__ import annotations

import io
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PY = f"{sys.version_info.major}.{sys.version_info.minor}"
MODELS = {  # name -> (weights, requirements)
    "toy-forecaster-a": ({"speed": 0.24, "damping": 0.002}, ["numpy==2.2.6"]),
    "toy-forecaster-b": ({"speed": 0.27, "damping": 0.0}, ["numpy==1.26.4"]),
}


def tracking_uri(where: Path) -> str:
    return f"sqlite:///{where.resolve() / 'mlflow.db'}"


def write_checkpoint(folder: Path, weights: dict[str, float], requirements: list[str]) -> None:
    folder.mkdir(parents=True)
    buffer = io.BytesIO()
    np.savez(buffer, speed=np.float64(weights["speed"]), damping=np.float64(weights["damping"]))
    (folder / "weights.npz").write_bytes(buffer.getvalue())
    (folder / "dscheduler-env.json").write_text(
        json.dumps({"python": PY, "requirements": requirements}) + "\n")


def make(where: Path) -> str:
    """The registry in ``where``, made if missing; its tracking URI."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    where.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(where)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("multi-model-checkpoints")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        "multi-model-checkpoints", artifact_location=(where.resolve() / "artifacts").as_uri())
    for name, (weights, requirements) in MODELS.items():
        try:
            client.get_model_version(name, "1")
            continue  # made before
        except MlflowException:
            pass
        run = client.create_run(experiment_id, run_name=name).info
        with tempfile.TemporaryDirectory() as tmp:
            write_checkpoint(Path(tmp) / "checkpoint", weights, requirements)
            client.log_artifacts(run.run_id, str(Path(tmp) / "checkpoint"), "checkpoint")
        for key, value in weights.items():
            client.log_param(run.run_id, key, value)
        client.set_terminated(run.run_id)
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(name)
        client.create_model_version(name, f"runs:/{run.run_id}/checkpoint", run_id=run.run_id)
        print(f"registered {name} version 1 (run {run.run_id})")
    return uri


if __name__ == "__main__":
    logging.getLogger("alembic").setLevel(logging.WARNING)
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "registry"
    print(f"MLFLOW_TRACKING_URI={make(target)}")
