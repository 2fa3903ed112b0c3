"""``/dscheduler`` and ``/dscheduler.json`` on a scheduler's own dashboard server.

distributed serves its dashboard from one tornado application per scheduler
(``scheduler.http_application``); :func:`add_routes` adds two handlers to
it, once, so the page lives on the dashboard's port beside ``/status`` and
goes wherever the dashboard goes (a JupyterHub proxy, an SSH tunnel).  No
second web server.  The page is static HTML whose script fetches the JSON
(by a relative URL, so proxy prefixes hold) every ``refresh`` seconds.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any

import tornado.routing
from tornado import web

_MARK = "_dscheduler_prefix"  # set on an application that has our routes


@cache
def _page() -> str:
    return files(__package__).joinpath("page.html").read_text(encoding="utf-8")


class _Handler(web.RequestHandler):
    def initialize(self, dask_server: Any, plugin_name: str) -> None:
        self.server = dask_server
        self.plugin_name = plugin_name

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")


class PageHandler(_Handler):
    """The page: tables rendered by its script from ``dscheduler.json``."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.write(_page())


class JsonHandler(_Handler):
    """Every graph this scheduler follows (newest first) and a summary of each store."""

    async def get(self) -> None:
        plugin = self.server.plugins.get(self.plugin_name)
        if plugin is None:  # removed by hand: say so rather than fail
            data: dict[str, Any] = {"scheduler": self.server.address, "graphs": [],
                                    "stores": [], "error": "the dscheduler plugin was removed"}
        else:
            data = await plugin.snapshot()
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(data))


def _prefix(app: web.Application) -> str:
    """The scheduler's ``http_prefix`` (``dask scheduler --dashboard-prefix``).

    The scheduler does not keep it; every route distributed adds carries it,
    so it is read off the ``health`` route, present in every default setup.
    """
    for rule in app.wildcard_router.rules:
        matcher = rule.matcher
        if isinstance(matcher, tornado.routing.PathMatches):
            pattern = matcher.regex.pattern
            if pattern.endswith("health$"):
                return pattern[: -len("health$")] or "/"
    return "/"


def add_routes(scheduler: Any, plugin_name: str) -> str:
    """Add the page's two routes to the scheduler's dashboard server once; their prefix."""
    app = scheduler.http_application
    prefix = getattr(app, _MARK, None)
    if prefix is None:
        prefix = _prefix(app)
        kwargs = {"dask_server": scheduler, "plugin_name": plugin_name}
        app.add_handlers(r".*$", [(prefix + "dscheduler", PageHandler, kwargs),
                                  (prefix + r"dscheduler\.json", JsonHandler, kwargs)])
        setattr(app, _MARK, prefix)
    return str(prefix)


def page_path(scheduler: Any) -> str:
    """The page's path on the scheduler's dashboard server, e.g. ``/dscheduler``."""
    return getattr(scheduler.http_application, _MARK, "/") + "dscheduler"
