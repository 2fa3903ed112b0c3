"""Forecast emulators of Lorenz-96: what the checkpoints hold and how they step.

Each checkpoint is a ``.npz`` file with a ``kind`` and its weights; each
emulator maps the state at time t to the state six hours later:

``linear``   a global linear map, fitted by least squares (y = x A + b)
``mlp``      a residual network with one hidden tanh layer (y = x + tanh(x W1 + b1) W2 + b2)
``stencil``  a hybrid model: a local, translation-invariant tendency (linear neighbour
             terms and quadratic ones, as Lorenz-96's own advection term is) learned from
             noisy tendencies, integrated with RK4 over the six hours; its linear part uses
             ``scipy.ndimage.correlate1d``, so its env needs scipy

Inference needs only numpy (and scipy for ``stencil``), in whatever version
the checkpoint's env pins: the code runs under numpy 1.26 and numpy 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

RADIUS = 2  # stencil half-width: neighbours k-2 .. k+2


def _quadratic(x: np.ndarray) -> np.ndarray:
    """Neighbour products per site: x_{k-1} x_{k+1} and x_{k-2} x_{k-1}, shape (..., K, 2)."""
    return np.stack([np.roll(x, 1, -1) * np.roll(x, -1, -1),
                     np.roll(x, 2, -1) * np.roll(x, 1, -1)], axis=-1)


def step(weights: Any, x: np.ndarray, *, numpy_only: bool = False) -> np.ndarray:
    """One six-hour step of the emulator in ``weights`` for states ``x`` (..., K).

    ``numpy_only``: the stencil's linear part without scipy (the same numbers;
    for the checkpoint script, which runs where scipy may be missing).
    """
    kind = str(weights["kind"])
    if kind == "linear":
        return x @ weights["A"] + weights["b"]
    if kind == "mlp":
        hidden = np.tanh(x @ weights["W1"] + weights["b1"])
        return x + hidden @ weights["W2"] + weights["b2"]
    if kind == "stencil":
        dt = float(weights["dt"])
        for _ in range(int(weights["substeps"])):
            k1 = _stencil_tendency(weights, x, numpy_only)
            k2 = _stencil_tendency(weights, x + 0.5 * dt * k1, numpy_only)
            k3 = _stencil_tendency(weights, x + 0.5 * dt * k2, numpy_only)
            k4 = _stencil_tendency(weights, x + dt * k3, numpy_only)
            x = x + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        return x
    raise ValueError(f"unknown emulator kind {kind!r}")


def _stencil_tendency(weights: Any, x: np.ndarray, numpy_only: bool) -> np.ndarray:
    if numpy_only:
        linear = _stencil_features(x)[..., : 2 * RADIUS + 1] @ weights["w_linear"]
    else:
        from scipy.ndimage import correlate1d

        linear = correlate1d(x, weights["w_linear"], axis=-1, mode="wrap")
    return linear + _quadratic(x) @ weights["w_quadratic"] + weights["bias"]


def load(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


# -- training (make_checkpoints.py) ---------------------------------------------------


def fit_linear(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    design = np.hstack([x, np.ones((len(x), 1))])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return {"kind": np.array("linear"), "A": coef[:-1], "b": coef[-1]}


def _stencil_features(x: np.ndarray) -> np.ndarray:
    shifts = [np.roll(x, -s, -1) for s in range(-RADIUS, RADIUS + 1)]  # x_{k+s}
    return np.concatenate([np.stack(shifts, -1), _quadratic(x), np.ones((*x.shape, 1))], -1)


def fit_stencil(x: np.ndarray, tendencies: np.ndarray, *, dt: float,
                substeps: int) -> dict[str, np.ndarray]:
    """Least squares of the stencil's terms against (noisy) tendencies dx/dt at ``x``."""
    features = _stencil_features(x).reshape(-1, 2 * RADIUS + 4)
    coef, *_ = np.linalg.lstsq(features, tendencies.reshape(-1), rcond=None)
    n = 2 * RADIUS + 1
    return {"kind": np.array("stencil"), "w_linear": coef[:n], "w_quadratic": coef[n:n + 2],
            "bias": coef[n + 2], "dt": np.array(dt), "substeps": np.array(substeps)}


def fit_mlp(x: np.ndarray, y: np.ndarray, *, hidden: int, seed: int, epochs: int,
            learning_rate: float = 3e-3, batch: int = 256) -> dict[str, np.ndarray]:
    """Adam on the mean squared error of the residual, minibatches in a seeded order."""
    rng = np.random.default_rng(seed)
    k = x.shape[1]
    params = {"W1": rng.normal(0, 1 / np.sqrt(k), (k, hidden)), "b1": np.zeros(hidden),
              "W2": rng.normal(0, 1 / np.sqrt(hidden), (hidden, k)) * 0.1, "b2": np.zeros(k)}
    moments = {n: (np.zeros_like(p), np.zeros_like(p)) for n, p in params.items()}
    scale = x.std()
    t = 0
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            xb, target = x[idx] / scale, (y[idx] - x[idx]) / scale
            h = np.tanh(xb @ params["W1"] + params["b1"])
            err = (h @ params["W2"] + params["b2"]) - target
            grad_out = 2 * err / len(idx)
            grad_h = grad_out @ params["W2"].T * (1 - h**2)
            grads = {"W2": h.T @ grad_out, "b2": grad_out.sum(0),
                     "W1": xb.T @ grad_h, "b1": grad_h.sum(0)}
            t += 1
            for name, g in grads.items():
                m, v = moments[name]
                m[:] = 0.9 * m + 0.1 * g
                v[:] = 0.999 * v + 0.001 * g**2
                params[name] -= learning_rate * (m / (1 - 0.9**t)) / (
                    np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    # Fold the input scaling into the weights: inference takes raw states.
    return {"kind": np.array("mlp"), "W1": params["W1"] / scale, "b1": params["b1"],
            "W2": params["W2"] * scale, "b2": params["b2"] * scale}
