"""A budgeted hyperparameter search over the Lorenz-96 MLP emulator, NePS style.

    .venv/bin/python recipes/sweep/sweep.py --store data [--max-evaluations-total 12]
        [--max-cost-total 2000] [--name l96-mlp] [--seed 0]

Start as many drivers as you like, at once or one after another, on one store:
each samples configurations (learning rate, hidden size), evaluates them as
dscheduler tasks (so an evaluation that finished is never run again) and
records them in the sweep's shared state, ``sweeps/{name}/state.json`` in
the store, rewritten atomically under the sweep's lease.  Together they stop
exactly at ``max_evaluations_total`` evaluations and never spend more than
``max_cost_total`` (a trial's cost, hidden size x epochs, is known before it
runs).  A trial being evaluated is held by its driver's trial lease; if the
driver is killed, the lease stops beating, expires after its ttl, and
another driver (or the next start) evaluates that trial again: nothing is
lost.  Starting again resumes; a finished sweep prints its best
configuration and the results table.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import dscheduler as ds
from dscheduler.store import atomic

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "forecast_eval"))

import emulators  # noqa: E402
import lorenz96  # noqa: E402

HIDDEN = (16, 32, 64, 128)
EPOCHS = 3


@ds.task(version="1", env=None)
def train_and_validate(learning_rate: float, hidden: int, epochs: int, seed: int,
                       delay: float = 0.0) -> dict[str, float]:
    """Train the residual MLP emulator and score it: one-step RMSE on held-out truth.

    ``delay``: seconds to wait first (tests use it to kill a driver mid-evaluation).
    """
    time.sleep(delay)
    states = lorenz96.advance(lorenz96.spun_up(seed), 3000)
    x, y = states[:-1], states[1:]
    start = time.perf_counter()
    weights = emulators.fit_mlp(x[:2500], y[:2500], hidden=hidden, seed=seed, epochs=epochs,
                                learning_rate=learning_rate)
    error = emulators.step(weights, x[2500:]) - y[2500:]
    return {"rmse": float(np.sqrt(np.mean(error**2))),
            "train_seconds": round(time.perf_counter() - start, 3)}


def sample(seed: int, trial: int) -> dict[str, Any]:
    """Trial ``trial``'s configuration: random search, reproducible from the seed."""
    rng = np.random.default_rng([seed, trial])
    return {"learning_rate": float(10 ** rng.uniform(-4, -1)),
            "hidden": int(rng.choice(HIDDEN)), "epochs": EPOCHS}


def cost(config: dict[str, Any]) -> float:
    return float(config["hidden"] * config["epochs"])


class Sweep:
    """The shared state of one sweep in a store, read and written under its lease."""

    def __init__(self, store: ds.Store, name: str, *, max_evaluations_total: int,
                 max_cost_total: float, seed: int, trial_ttl: float) -> None:
        self.store = store
        self.name = name
        self.path = store.root / "sweeps" / name / "state.json"
        self.limits = {"max_evaluations_total": max_evaluations_total,
                       "max_cost_total": max_cost_total, "seed": seed}
        self.trial_ttl = trial_ttl

    # A lease whose holder died on this host is broken at once (break_dead_local);
    # one held from another host, after its ttl without a heartbeat.
    def lease(self) -> ds.Lease:
        return self.store.lease(f"sweep-{self.name}", ttl=30, break_dead_local=True)

    def trial_lease(self, trial: int) -> ds.Lease:
        return self.store.lease(f"sweep-{self.name}-trial-{trial}", ttl=self.trial_ttl,
                                break_dead_local=True)

    def read(self) -> dict[str, Any]:
        state = atomic.read_json(self.path) or {"limits": self.limits, "trials": []}
        if state["limits"] != self.limits:
            raise ds.ConfigError(
                f"sweep {self.name!r} in {self.store.root} was started with {state['limits']}, "
                f"not {self.limits}; use those settings, or another --name"
            )
        return state

    def write(self, state: dict[str, Any]) -> None:
        atomic.write_json(self.path, state)

    def next_trial(self) -> tuple[dict[str, Any] | None, ds.Lease | None, bool]:
        """(trial, its lease) to evaluate next; (None, None, finished?) when there is none."""
        with self.lease():
            state = self.read()
            trials = state["trials"]
            done = [t for t in trials if t["status"] == "done"]
            if len(done) >= self.limits["max_evaluations_total"]:
                return None, None, True
            # A trial whose driver died: its lease is stale (or gone), so it can be taken.
            for trial in trials:
                if trial["status"] == "running":
                    lease = self.trial_lease(trial["trial"])
                    if lease.try_acquire():
                        trial["attempts"] += 1
                        self.write(state)
                        return trial, lease, False
            spent = sum(cost(t["config"]) for t in trials)  # running trials count too
            config = sample(self.limits["seed"], len(trials))
            if len(trials) >= self.limits["max_evaluations_total"] or \
                    spent + cost(config) > self.limits["max_cost_total"]:
                running = [t for t in trials if t["status"] == "running"]
                return None, None, not running
            trial = {"trial": len(trials), "config": config, "status": "running",
                     "attempts": 1, "result": None}
            lease = self.trial_lease(trial["trial"])
            lease.acquire(timeout=10)
            trials.append(trial)
            self.write(state)
            return trial, lease, False

    def finish(self, trial: dict[str, Any], result: dict[str, float]) -> bool:
        """Record ``trial``'s result; False when another driver took the trial over."""
        with self.lease():
            state = self.read()
            stored = state["trials"][trial["trial"]]
            if stored["attempts"] != trial["attempts"] or stored["status"] == "done":
                return False
            stored.update(status="done", result=result)
            self.write(state)
            return True


def run_driver(sweep: Sweep, *, cluster: Any = "local", poll: float = 1.0,
               delay: float = 0.0) -> None:
    """Evaluate trials until the sweep is finished."""
    while True:
        trial, lease, finished = sweep.next_trial()
        if trial is None or lease is None:
            if finished:
                return
            time.sleep(poll)  # other drivers still evaluate the last trials
            continue
        try:
            node = train_and_validate(**trial["config"], seed=sweep.limits["seed"], delay=delay)
            results = ds.compute(node, store=sweep.store, cluster=cluster, progress=False)
            results.raise_for_status()
            # Never record under a lease another driver has taken over: this one
            # stalled past the trial's ttl.  The evaluation is stored, so the taker
            # finds it cached and records it: nothing lost, nothing counted twice.
            if lease.lost or not sweep.finish(trial, results.value(node)):
                print(f"trial {trial['trial']}: taken over by another driver after this "
                      f"one stalled for more than {sweep.trial_ttl:g} s; it records the "
                      "stored result", flush=True)
                continue
            print(f"trial {trial['trial']} (attempt {trial['attempts']}): {trial['config']} "
                  f"-> rmse {results.value(node)['rmse']:.4f}", flush=True)
        finally:
            lease.release()


def table(state: dict[str, Any]) -> str:
    done = sorted((t for t in state["trials"] if t["status"] == "done"),
                  key=lambda t: t["result"]["rmse"])
    lines = ["| trial | learning rate | hidden | cost | attempts | one-step RMSE |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for t in done:
        c = t["config"]
        lines.append(f"| {t['trial']} | {c['learning_rate']:.2e} | {c['hidden']} | "
                     f"{cost(c):.0f} | {t['attempts']} | {t['result']['rmse']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default=None, help="store root (default: setting 'store')")
    parser.add_argument("--name", default="l96-mlp")
    parser.add_argument("--max-evaluations-total", type=int, default=12)
    parser.add_argument("--max-cost-total", type=float, default=math.inf)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trial-ttl", type=float, default=60.0,
                        help="seconds after which a dead driver's trial is taken over")
    parser.add_argument("--cluster", default="local")
    parser.add_argument("--delay", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sweep = Sweep(ds.Store(args.store), args.name,
                  max_evaluations_total=args.max_evaluations_total,
                  max_cost_total=args.max_cost_total, seed=args.seed, trial_ttl=args.trial_ttl)
    print(f"sweep {args.name!r} in {sweep.store.root}: {sweep.limits}", flush=True)
    run_driver(sweep, cluster=args.cluster, delay=args.delay)
    state = sweep.read()
    done = [t for t in state["trials"] if t["status"] == "done"]
    if done:
        best = min(done, key=lambda t: t["result"]["rmse"])
        spent = sum(cost(t["config"]) for t in done)
        print(f"\n{len(done)} evaluations, cost {spent:.0f}; best: trial {best['trial']} "
              f"{best['config']} rmse {best['result']['rmse']:.4f}\n")
        print(table(state))
    return 0


if __name__ == "__main__":
    sys.exit(main())
