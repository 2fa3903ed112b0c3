"""Ids per second: 100,000 RunConfigs constructed and given run_ids.

Run:  .venv/bin/python bench/identity.py [N]

Baseline, in the same invocation: the plain loop a user would write, a
pydantic model with the same fields, ``model_dump(mode="json")``,
``json.dumps(sort_keys=True)`` and sha256.  Target: dscheduler under 1 s for
100,000 on a 2-core machine.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from typing import Any, ClassVar

from pydantic import BaseModel

import dscheduler as ds


class Forecast(ds.RunConfig):
    ENV_FIELDS: ClassVar = ("checkpoint", "extra_requirements")
    checkpoint: str
    extra_requirements: list[str] = []
    config: dict[str, Any] = {}
    steps: str = "0/120/6"
    label: str = ""
    resources: dict[str, Any] = {}


class Plain(BaseModel):
    checkpoint: str
    extra_requirements: list[str] = []
    config: dict[str, Any] = {}
    steps: str = "0/120/6"
    label: str = ""
    resources: dict[str, Any] = {}


def _inputs(n: int) -> list[dict[str, Any]]:
    return [
        {"checkpoint": f"ckpt/{i % 10}.pt", "config": {"lr": i * 1e-4, "layers": [64, 64]},
         "label": f"run{i}"}
        for i in range(n)
    ]


def dscheduler_ids(inputs: list[dict[str, Any]]) -> float:
    start = time.perf_counter()
    ids = [Forecast(**kw).run_id for kw in inputs]
    took = time.perf_counter() - start
    if len(set(ids)) != len(inputs):
        raise SystemExit("ids are not distinct")
    return took


def plain_loop(inputs: list[dict[str, Any]]) -> float:
    start = time.perf_counter()
    for kw in inputs:
        text = json.dumps(Plain(**kw).model_dump(mode="json"), sort_keys=True)
        hashlib.sha256(text.encode()).hexdigest()
    return time.perf_counter() - start


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    inputs = _inputs(n)
    dscheduler_ids(inputs[:1000])  # warm-up: imports, pydantic schema
    plain_loop(inputs[:1000])
    ours = min(dscheduler_ids(inputs) for _ in range(3))
    plain = min(plain_loop(inputs) for _ in range(3))
    print(f"command: .venv/bin/python bench/identity.py {n}")
    print(f"dscheduler RunConfig + env_id + config_hash: {ours:.3f} s  ({n / ours:,.0f} ids/s)")
    print(f"plain pydantic + json.dumps + sha256:         {plain:.3f} s  ({n / plain:,.0f} ids/s)")
    print(f"ratio dscheduler / plain: {ours / plain:.2f}  (target: dscheduler < 1 s for 100,000)")
    verdict = "MET" if ours < 1.0 * n / 100_000 else "MISSED"
    print(f"target {verdict}")


if __name__ == "__main__":
    main()
