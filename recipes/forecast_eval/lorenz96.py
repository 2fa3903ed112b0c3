"""The Lorenz-96 system: the standard toy atmosphere of weather-ML research.

    dx_k/dt = (x_{k+1} - x_{k-2}) x_{k-1} - x_k + F,   k = 0 .. K-1, periodic

with K = 40 variables and forcing F = 8 (chaotic).  One model time unit is
about five days, so 0.05 is six hours: the spacing of the stored truth and
of every forecast's lead times.  Integration is fourth-order Runge-Kutta
with an internal step of 0.01.  Only numpy, so that the same file serves the
driver (truth) and the checkpoint script (training data).
"""

from __future__ import annotations

import numpy as np

K = 40
F = 8.0
DT = 0.01  # internal RK4 step
STEP_HOURS = 6
STEP_TIME = 0.05  # model time per 6 hours
SUBSTEPS = round(STEP_TIME / DT)


def tendency(x: np.ndarray, forcing: float = F) -> np.ndarray:
    """dx/dt for states ``x`` of shape (..., K)."""
    return (np.roll(x, -1, axis=-1) - np.roll(x, 2, axis=-1)) * np.roll(x, 1, axis=-1) \
        - x + forcing


def rk4_step(x: np.ndarray, dt: float = DT, forcing: float = F) -> np.ndarray:
    k1 = tendency(x, forcing)
    k2 = tendency(x + 0.5 * dt * k1, forcing)
    k3 = tendency(x + 0.5 * dt * k2, forcing)
    k4 = tendency(x + dt * k3, forcing)
    return x + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


def advance(x: np.ndarray, steps: int, forcing: float = F) -> np.ndarray:
    """The states every 6 hours from ``x``: shape (steps + 1, ..., K), ``x`` first."""
    out = [x]
    for _ in range(steps):
        for _ in range(SUBSTEPS):
            x = rk4_step(x, DT, forcing)
        out.append(x)
    return np.stack(out)


def spun_up(seed: int, spinup_steps: int = 1000) -> np.ndarray:
    """A state on the attractor: a small perturbation of rest, integrated for a while."""
    rng = np.random.default_rng(seed)
    x = np.full(K, F) + rng.normal(0.0, 0.01, K)
    return advance(x, spinup_steps)[-1]
