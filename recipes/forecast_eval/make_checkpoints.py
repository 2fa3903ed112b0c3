"""Make the recipe's checkpoints: three Lorenz-96 emulators trained with fixed seeds.

    .venv/bin/python recipes/forecast_eval/make_checkpoints.py [OUT_DIR]

Training data is one long truth trajectory (seed 1, after spin-up), 6-hourly.
Each checkpoint ``{name}.npz`` carries its weights, and a sidecar
``{name}.npz.dscheduler-env.json`` the environment it needs, with different
pins on purpose: ``linear`` was "trained" under numpy 1.26, ``mlp`` under
numpy 2, ``stencil`` also needs scipy.

Running it again gives the same bytes: the ``.npz`` files are written with
fixed zip timestamps, and the fitted weights are stored as float32.  Least
squares through BLAS sums in an order that depends on the thread count and
the CPU's kernels, so the float64 weights differ between runs and machines
in their last bits (about 1e-15); rounded to float32 (7 significant digits)
they agree.  BLAS is also pinned to one thread (before numpy loads it, so when
this runs as a script): on one machine the unrounded weights agree as well.
"""

from __future__ import annotations

import io
import json
import os
import sys
import zipfile
from pathlib import Path

# Before numpy loads BLAS: one thread, one summation order (see the docstring).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import emulators  # noqa: E402
import lorenz96  # noqa: E402

SEED = 1
SAMPLES = 20_000
STENCIL_SAMPLES = 25
ENVS = {
    "linear": ["numpy==1.26.4"],
    "mlp": ["numpy==2.2.6"],
    "stencil": ["numpy==2.4.6", "scipy==1.16.3"],
}


def training_pairs(seed: int = SEED, samples: int = SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    states = lorenz96.advance(lorenz96.spun_up(seed), samples)
    return states[:-1], states[1:]


def noisy_tendencies(x: np.ndarray, noise: float = 4.0) -> np.ndarray:
    """dx/dt at ``x`` with observation noise (seeded): what a hybrid model learns from."""
    rng = np.random.default_rng(SEED + 1)
    return lorenz96.tendency(x) + rng.normal(0.0, noise, x.shape)


def as_float32(weights: dict[str, np.ndarray], keep: tuple[str, ...] = ("dt",)
               ) -> dict[str, np.ndarray]:
    """The fitted float weights rounded to float32 (``keep``: settings, left exact)."""
    return {name: value.astype(np.float32)
            if value.dtype.kind == "f" and name not in keep else value
            for name, value in ((n, np.asarray(v)) for n, v in weights.items())}


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez, but with fixed timestamps (np.savez stamps each member with the time)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue())
    path.write_bytes(buffer.getvalue())


def make(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    x, y = training_pairs()
    models = {
        "linear": emulators.fit_linear(x, y),
        "mlp": emulators.fit_mlp(x, y, hidden=64, seed=SEED, epochs=15),
        # A hybrid model sees few, noisy tendencies: its terms come out slightly off.
        "stencil": emulators.fit_stencil(x[:STENCIL_SAMPLES],
                                         noisy_tendencies(x[:STENCIL_SAMPLES]),
                                         dt=lorenz96.DT, substeps=lorenz96.SUBSTEPS),
    }
    written = []
    for name, fitted in models.items():
        weights = as_float32(fitted)
        path = out / f"{name}.npz"
        write_npz(path, weights)
        meta = {"python": "3.11", "requirements": ENVS[name]}
        (out / f"{name}.npz.dscheduler-env.json").write_text(json.dumps(meta) + "\n")
        predicted = emulators.step(weights, x[-2000:], numpy_only=True)
        rmse = float(np.sqrt(np.mean((predicted - y[-2000:]) ** 2)))
        print(f"{path}: one-step RMSE on training data {rmse:.4f}")
        written.append(path)
    return written


if __name__ == "__main__":
    make(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "checkpoints")
