"""The dashboard's fleet and node pages, and the JSON they poll.

    GET /                                the fleet: every node not retired
    GET /nodes/{id}?range=1h|24h|7d      one node: latest values with units, a chart per channel
    GET /dash/nodes.json                 the fleet page's data
    GET /dash/nodes/{id}.json            the node page's latest values
    GET /dash/nodes/{id}/series.json?range=1h|24h|7d   the node page's chart data
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fastapi import FastAPI, Query, Request
from fastapi.responses import Response

from gateway.dashboard import POLL_S, RANGE, RANGES, UPLOT_ENV, uplot_dir

if TYPE_CHECKING:
    from gateway.dashboard import Dash


def mount(app: FastAPI, dash: "Dash") -> None:
    from gateway.api import ApiError

    api = dash.api

    @app.get("/", **dash.no_schema)
    def fleet_page(request: Request) -> Response:
        session = dash.user(request)
        if not session:
            return dash.to_login(request)
        return dash.page(request, "fleet.html", session=session, nodes=api.nodes(),
                         units=dash.units, now=time.time(), poll_s=POLL_S, title="Fleet")

    @app.get("/nodes/{node}", **dash.no_schema)
    def node_page(request: Request, node: str,
                  span: str = Query("24h", alias="range", pattern=RANGE)) -> Response:
        session = dash.user(request)
        if not session:
            return dash.to_login(request)
        try:
            row = api.node(node)
        except ApiError as exc:
            return dash.page(request, "missing.html", exc.status, session=session,
                             message=str(exc), title=node)
        return dash.page(request, "node.html", session=session, node=row, units=dash.units,
                         range=span, ranges=list(RANGES),
                         history=api.history is not None, uplot=uplot_dir() is not None,
                         uplot_env=UPLOT_ENV, poll_s=POLL_S, now=time.time(), title=node)

    @app.get("/dash/nodes.json", **dash.no_schema)
    def fleet_data(request: Request) -> Response:
        if not dash.user(request):
            return dash.not_logged_in()
        return dash.json({"now": time.time(), "nodes": api.nodes()})

    @app.get("/dash/nodes/{node}.json", **dash.no_schema)
    def node_data(request: Request, node: str) -> Response:
        if not dash.user(request):
            return dash.not_logged_in()
        return dash.json({"now": time.time(), "node": api.node(node)})

    @app.get("/dash/nodes/{node}/series.json", **dash.no_schema)
    def series_data(request: Request, node: str,
                    span: str = Query("24h", alias="range", pattern=RANGE)) -> Response:
        if not dash.user(request):
            return dash.not_logged_in()
        now = time.time()
        return dash.json(api.series(node, None, now - RANGES[span], now, None))
