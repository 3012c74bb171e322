"""The dashboard's fleet and node pages, and the JSON they poll.

    GET /                                the fleet: every node not retired; a map when any
                                         has a location
    GET /nodes/{id}?range=1h|24h|7d      one node: latest values with units, a chart per
                                         channel, consumption per day, gaps, status history
    GET /dash/nodes.json                 the fleet page's data
    GET /dash/nodes/{id}.json            the node page's latest values and status history
    GET /dash/nodes/{id}/series.json?range=1h|24h|7d   the node page's chart data
    GET /dash/nodes/{id}/consumption.json              each meter total's use per day

Consumption is the API's (`Api.consumption`: differences of the meter's totals at the
ends of UTC days, never summed deltas) over the last `CONSUMPTION_DAYS` days, for every meter
total among the node's latest values. The map's tiles are `[dashboard] map_tiles`; the fleet
page's Content-Security-Policy allows images from that host, the other pages' do not.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fastapi import FastAPI, Query, Request
from fastapi.responses import Response

from gateway.dashboard import (LEAFLET_ENV, POLL_S, RANGE, RANGES, UPLOT_ENV, leaflet_dir,
                               uplot_dir)

if TYPE_CHECKING:
    from gateway.dashboard import Dash

DAY = 86400
CONSUMPTION_DAYS = 30  # the node page's consumption chart: today and the 29 days before
EVENTS_SHOWN = 50  # status history rows on the node page


def meters(node: dict) -> list[str]:
    """The meter totals among a node's latest values (`water_volume`, `heat_energy:1`, ...)."""
    from gateway.sinks.history import TOTALS

    return sorted(ch for ch in node.get("last_values") or {} if ch.split(":")[0] in TOTALS)


def mount(app: FastAPI, dash: "Dash") -> None:
    from gateway.api import ApiError

    api = dash.api
    settings = api.gateway.config.dashboard
    tiles = (settings.tile_origin,) if settings.tile_origin else ()

    @app.get("/", **dash.no_schema)
    def fleet_page(request: Request) -> Response:
        session = dash.user(request)
        if not session:
            return dash.to_login(request)
        return dash.page(request, "fleet.html", session=session, nodes=api.nodes(),
                         units=dash.units, now=time.time(), poll_s=POLL_S, title="Fleet",
                         leaflet=leaflet_dir() is not None, leaflet_env=LEAFLET_ENV,
                         map_tiles=settings.map_tiles,
                         map_attribution=settings.map_attribution, img_src=tiles)

    @app.get("/nodes/{node}", **dash.no_schema)
    def node_page(request: Request, node: str,
                  span: str = Query("24h", alias="range", pattern=RANGE)) -> Response:
        session = dash.user(request)
        if not session:
            return dash.to_login(request)
        try:
            row = api.node(node)
            events = api.events(node, EVENTS_SHOWN)
        except ApiError as exc:
            return dash.page(request, "missing.html", exc.status, session=session,
                             message=str(exc), title=node)
        return dash.page(request, "node.html", session=session, node=row, events=events,
                         units=dash.units, range=span, ranges=list(RANGES),
                         history=api.history is not None, uplot=uplot_dir() is not None,
                         uplot_env=UPLOT_ENV, poll_s=POLL_S, now=time.time(), title=node,
                         consumption_days=CONSUMPTION_DAYS)

    @app.get("/dash/nodes.json", **dash.no_schema)
    def fleet_data(request: Request) -> Response:
        if not dash.user(request):
            return dash.not_logged_in()
        return dash.json({"now": time.time(), "nodes": api.nodes()})

    @app.get("/dash/nodes/{node}.json", **dash.no_schema)
    def node_data(request: Request, node: str) -> Response:
        if not dash.user(request):
            return dash.not_logged_in()
        return dash.json({"now": time.time(), "node": api.node(node),
                          "events": api.events(node, EVENTS_SHOWN)})

    @app.get("/dash/nodes/{node}/series.json", **dash.no_schema)
    def series_data(request: Request, node: str,
                    span: str = Query("24h", alias="range", pattern=RANGE)) -> Response:
        if not dash.user(request):
            return dash.not_logged_in()
        now = time.time()
        return dash.json(api.series(node, None, now - RANGES[span], now, None))

    @app.get("/dash/nodes/{node}/consumption.json", **dash.no_schema)
    def consumption_data(request: Request, node: str) -> Response:
        """{"from", "to", "meters": {channel: [[UTC day start, used], ...]}}: a day is listed
        when the meter's total is known at its end and at the end of a day before."""
        if not dash.user(request):
            return dash.not_logged_in()
        now = time.time()
        t0 = (now // DAY - (CONSUMPTION_DAYS - 1)) * DAY
        out = {ch: api.consumption(node, ch, t0, now)["days"] for ch in meters(api.node(node))}
        return dash.json({"now": now, "from": t0, "to": now, "days": CONSUMPTION_DAYS,
                          "meters": out})
