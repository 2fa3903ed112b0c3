"""How a Plan and Results show themselves in a notebook (``_repr_html_``), rendered for
a small graph on the shared LocalCluster: a failure with its log tail, a blocked node,
envs built and reused, nodes to run and cached."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from graphfixtures import Cfg, total, work

import dscheduler as ds


@ds.task(version="1")
def noisy_fail(cfg: Any, case: str) -> None:
    """Runs in cfg.env(): prints (to the node's log), then fails."""
    print(f"loading {case} from <checkpoint & friends>", flush=True)
    raise RuntimeError(f"no data for {case}")


class Tables(HTMLParser):
    """The tables of an HTML fragment, as rows of cell texts, and its other text."""

    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self.feed(fragment)

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        (self._cell if self._cell is not None else self.text).append(data)

    def table(self, first_header: str) -> list[list[str]]:
        [found] = [t for t in self.tables if t and t[0][0] == first_header]
        return found

    def rows(self, first_header: str) -> dict[str, dict[str, str]]:
        """A table's rows by their first cell: the other cells by header, empty ones left
        out (the view leaves zero counts empty)."""
        header, *rows = self.table(first_header)
        return {row[0]: {h: c for h, c in zip(header[1:], row[1:], strict=True) if c}
                for row in rows}


def test_plan_and_results_render_as_html_tables(cluster: Any, graph_store: ds.Store,
                                                tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    first = work(Cfg(flavor="a", x=1, label="first", log=log), "c0")
    ds.compute(first, store=graph_store, cluster=cluster, progress=False).raise_for_status()
    again = work(Cfg(flavor="a", x=2, label="again", log=log), "c0")  # env a: reused
    broken = noisy_fail(Cfg(flavor="b", label="broken <b>", log=log), "c0")  # env b: built
    after = total([broken], log)  # blocked
    nodes = [first, again, broken, after]
    env_a, env_b = first.env_id, broken.env_id
    assert env_a and env_b and env_a != env_b

    plan = ds.plan(nodes, store=graph_store)
    shown = Tables(plan._repr_html_())
    assert "4 nodes: 3 to run, 1 cached; 1 env(s) to build" in shown.text
    assert shown.rows("task") == {"noisy_fail": {"to run": "1", "total": "1"},
                                  "total": {"to run": "1", "total": "1"},
                                  "work": {"to run": "1", "cached": "1", "total": "2"}}
    assert shown.table("env to build") == [["env to build"], [env_b]]
    assert sorted(shown.table("why it runs")[1:]) == [
        ["no record", "2"], [f"upstream will run ({broken.name})", "1"]]

    results = ds.compute(nodes, store=graph_store, cluster=cluster, progress=False)
    assert results.counts() == {"succeeded": 1, "failed": 1, "blocked": 1, "cached": 1}
    page = results._repr_html_()
    shown = Tables(page)
    assert shown.text[0] == "ran 3 of 4 nodes (1 succeeded, 1 failed, 1 blocked); 1 cached"
    assert shown.rows("task") == {"noisy_fail": {"failed": "1", "total": "1"},
                                  "total": {"blocked": "1", "total": "1"},
                                  "work": {"succeeded": "1", "cached": "1", "total": "2"}}
    assert shown.rows("run label") == {"again": {"succeeded": "1"},
                                       "broken <b>": {"failed": "1"},
                                       "first": {"cached": "1"}}
    assert shown.rows("env") == {env_b: {"this call": "built"},
                                 env_a: {"this call": "reused"}}
    # The failure: its error, then its log tail (what the task printed), escaped.
    text = "".join(shown.text)
    assert f"{broken.name}: failed" in text and f"{after.name}: blocked" in text
    error, _, log_tail = text.partition("--- log tail ---")
    assert "RuntimeError: no data for c0" in error
    assert "loading c0 from <checkpoint & friends>" in log_tail
    assert "&lt;checkpoint &amp; friends&gt;" in page and "<checkpoint" not in page
    assert "broken &lt;b&gt;" in page
    assert f"store: {graph_store.root}" in text
    if results.dashboard:
        assert f'href="{results.dashboard}"' in page
