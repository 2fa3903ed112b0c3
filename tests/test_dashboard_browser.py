"""The dashboard in a real browser: headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium; nothing downloaded) opens Dask's ``/status``
and the ``/dscheduler`` page while a graph runs and after it ends.

Screenshots are kept in tests/artifacts/ (ignored by git); the test prints
their paths.  Under CI=true a missing browser fails the test instead of
skipping it: ci/setup installs both packages.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from graphfixtures import Cfg, boom, total, work
from helpers import wait_for

import dscheduler as ds
from dscheduler.run import dashboard
from dscheduler.store.catalogue.status import summarize

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1200,2200")


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Headless Chromium through Selenium, with a fresh profile."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        why = "Debian's chromium and chromium-driver are not installed (bash ci/setup does it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {why}")
        pytest.skip(why)
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager never downloads anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    web = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    web.set_page_load_timeout(60)
    try:
        yield web
    finally:
        web.quit()


def shot(web: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    web.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def page_wait(check: Callable[[], Any], timeout: float = 60, what: str = "") -> Any:
    """helpers.wait_for, looking again while the page is being replaced by its script."""
    return wait_for(check, timeout, what, interval=0.2, ignore=(Exception,))


def table(web: Any, section_id: str, cls: str) -> dict[str, dict[str, int]]:
    """A count table of a section as {row name: {state: count}}, zeros left out."""
    rows = web.execute_script(
        """const rows = document.querySelectorAll(
             `[id="${arguments[0]}"] table.${arguments[1]} tr[data-name]`);
        return Array.from(rows, r => [r.dataset.name, Array.from(
            r.querySelectorAll("td[data-state]"), td => [td.dataset.state, td.textContent])]);""",
        section_id, cls)
    return {name: {s: int(n) for s, n in cells if s != "total" and int(n)}
            for name, cells in rows}


def task_stream(web: Any) -> list[str]:
    """Keys in the data of the dashboard's "Task Stream" plot (Bokeh draws on a canvas)."""
    return list(web.execute_script(
        """for (const doc of (window.Bokeh ? Bokeh.documents : []))
             for (const m of doc.all_models)
               if (m.title && m.title.text === "Task Stream")
                 for (const r of m.renderers)
                   if (r.data_source) return Array.from(r.data_source.data.key || []);
           return [];"""))


def test_dashboard_pages_in_chromium_while_a_graph_runs_and_after(
    cluster: Any, browser: Any, graph_store: ds.Store, tmp_path: Path
) -> None:
    log = str(tmp_path / "log")
    cfgs = [Cfg(flavor="ab"[i % 2], x=i, log=log, sleep=2.0, label=f"L{i % 2}")
            for i in range(6)]
    works = [work(c, "c0") for c in cfgs]
    nodes = [*works, total(works, log), boom(3, log)]
    ds.compute(works[:1], store=graph_store, cluster=cluster, progress=False)  # 1 cached
    status, page = dashboard.links(cluster)
    handle = ds.submit(nodes, store=graph_store, cluster=cluster)
    section = f"graph-{handle.submission}"

    # Dask's own dashboard: the task stream, not the missing-bokeh message.
    browser.get(status)
    assert "Dask needs bokeh" not in browser.page_source
    page_wait(lambda: any(k.startswith("work-") for k in task_stream(browser)),
              what="work tasks in the task stream of /status")
    shot(browser, "status-running.png")

    # The dscheduler page while the graph runs.
    browser.get(page)
    running = page_wait(lambda: table(browser, section, "by-task").get("work", {})
                        .get("running"), what="running nodes on /dscheduler")
    assert running >= 1
    assert browser.find_element("id", section).get_attribute("data-done") == "false"
    shot(browser, "dscheduler-running.png")

    results = handle.wait(progress=False)
    assert results.counts() == {"succeeded": 6, "cached": 1, "failed": 1}
    # No reload: the page's script updates it.
    page_wait(lambda: browser.find_element("id", section).get_attribute("data-done") == "true",
              what="the page to show the graph finished")
    by_task = table(browser, section, "by-task")
    assert by_task == {"work": {"cached": 1, "succeeded": 5}, "total": {"succeeded": 1},
                       "boom": {"failed": 1}}
    assert table(browser, section, "by-label") == {
        "L0": {"cached": 1, "succeeded": 2}, "L1": {"succeeded": 3},
        "": {"succeeded": 1, "failed": 1}}
    hits = browser.find_element("css selector", f'[id="{section}"] .cache-hits').text
    assert hits == "cache hits: 1"
    failure = browser.find_element("css selector", f'[id="{section}"] .failure').text
    assert "boom 3 went wrong" in failure

    # The counts on the page agree with the store.
    stored = summarize(graph_store)
    store_id = f"store-{graph_store.root}"
    page_wait(lambda: table(browser, store_id, "by-task") == {
        task: dict(c) for task, c in stored.by_task().items()}, timeout=30,
        what="the page's store section to match the store")
    for task, counts in by_task.items():
        assert counts.get("succeeded", 0) + counts.get("cached", 0) == \
            stored.by_task()[task]["succeeded"]
        assert counts.get("failed", 0) == stored.by_task()[task]["failed"]
    envs = browser.find_elements("css selector", f'[id="{section}"] table.envs tr[data-env]')
    assert sorted(e.get_attribute("data-env") for e in envs) == sorted({c.env_id for c in cfgs})
    assert all("built" in e.text and " s" in e.text and "kB" in e.text for e in envs)
    shot(browser, "dscheduler-done.png")

    # Dask's /status after the graph ended: the task stream still shows its tasks,
    # the last one (total) included.
    browser.get(status)
    assert "Dask needs bokeh" not in browser.page_source
    ended = page_wait(lambda: (keys := task_stream(browser)) and any(
        k.startswith("total-") for k in keys) and keys,
        what="the graph's tasks, total included, in the task stream of /status after it ended")
    assert {k.rsplit("-", 1)[0] for k in ended} >= {"work", "total", "boom"}, ended
    shot(browser, "status-done.png")
