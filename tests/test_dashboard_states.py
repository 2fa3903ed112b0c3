"""How the page's plugin turns scheduler transitions into node states (no cluster).

The end-to-end checks against real schedulers are in tests/test_dashboard.py;
these pin the rules that are hard to provoke there: a release after the end
keeps the outcome, a forget before it is a cancellation, a retry goes back to
queued, several graphs share a key.
"""

from __future__ import annotations

from typing import Any

import dask
import pytest

from dscheduler.run.dashboard.plugin import DashboardPlugin, GraphView, next_state

pytestmark = pytest.mark.fast


def meta(submission: str = "s1") -> dict[str, Any]:
    return {"submission": submission, "root": "/store", "tasks": ["work", "total"],
            "labels": ["", "L0"], "cached": [(0, 1, 3)],
            "run": [("work-a", 0, 1, "runs/e/c/c0/work.json"),
                    ("work-b", 0, 1, "runs/e/c/c1/work.json"),
                    ("total-c", 1, 0, "tasks/total/c/total.json")],
            "envs": {"e1": "queued", "e2": "built"}}


@pytest.mark.parametrize(("current", "finish", "blocked", "expected"), [
    ("queued", "processing", False, "running"),
    ("running", "memory", False, "succeeded"),
    ("running", "waiting", False, "queued"),  # a retry, or its worker left
    ("running", "erred", False, "failed"),
    ("queued", "erred", True, "blocked"),
    ("succeeded", "released", False, "succeeded"),  # the driver let go of the result
    ("succeeded", "forgotten", False, "succeeded"),
    ("failed", "forgotten", False, "failed"),
    ("queued", "forgotten", False, "cancelled"),
    ("running", "forgotten", False, "cancelled"),
    ("succeeded", "processing", False, "running"),  # recomputed after its worker left
])
def test_next_state(current: str, finish: str, blocked: bool, expected: str) -> None:
    assert next_state(current, finish, blocked=blocked) == expected


def test_env_states() -> None:
    assert next_state("queued", "processing", env=True) == "building"
    assert next_state("building", "memory", env=True) == "built"
    assert next_state("built", "forgotten", env=True) == "built"


def test_graph_view_counts_and_ends() -> None:
    view = GraphView(meta(), failures=5)
    assert not view.done and view.followed() == ["work-a", "work-b", "total-c", "build_env-e1"]
    view.move("build_env-e1", "processing", False, "")
    view.move("build_env-e1", "memory", False, "")
    for key in ("work-a", "work-b"):
        view.move(key, "processing", False, "")
    view.move("work-a", "memory", False, "")
    view.move("work-b", "erred", False, "ValueError: bad\nmore")
    view.move("total-c", "erred", True, "ValueError: bad")
    frozen = view.freeze()
    assert frozen.done and frozen.envs == {"e1": "built", "e2": "built"}
    assert frozen.counts == {("work", "L0"): {"cached": 3, "succeeded": 1, "failed": 1},
                             ("total", ""): {"blocked": 1}}
    [(_, key, text, record, task, label)] = frozen.failures  # blocked is not a failure
    assert (key, record, task, label) == ("work-b", "runs/e/c/c1/work.json", "work", "L0")
    assert text.startswith("ValueError: bad")
    for key in ("work-a", "work-b", "total-c"):  # the driver releases its futures
        view.move(key, "released", False, "")
        view.move(key, "forgotten", False, "")
    assert view.freeze().counts == frozen.counts


def test_plugin_shares_keys_between_graphs_and_trims_finished_ones() -> None:
    plugin = DashboardPlugin()
    one, two = meta("s1"), meta("s2")
    plugin.add_graph(one)
    plugin.add_graph(two)
    assert [v.submission for v in plugin.keys["work-a"]] == ["s1", "s2"]
    plugin.transition("work-a", "waiting", "processing", stimulus_id="x")
    assert all(v.nodes["work-a"][2] == "running" for v in plugin.graphs.values())
    plugin.transition("unknown-key", "waiting", "processing", stimulus_id="x")  # not ours
    for key in ("work-a", "work-b", "total-c", "build_env-e1"):
        plugin.transition(key, "waiting", "forgotten", stimulus_id="x")
    assert plugin.keys == {} and all(v.done for v in plugin.graphs.values())
    assert plugin.graphs["s1"].freeze().counts[("work", "L0")]["cancelled"] == 2
    with dask.config.set({"dscheduler.dashboard.graphs": 1}):
        plugin.add_graph(meta("s3"))
    assert list(plugin.graphs) == ["s3"]  # the oldest finished graphs are dropped
    assert set(plugin.keys) == {"work-a", "work-b", "total-c", "build_env-e1"}
