"""The dashboard's alarms page: what needs an operator, the last week, and acknowledgement.

    GET  /alarms                  alarms needing attention, then the rest of the last 7 days
    GET  /dash/alarms.json        the page's data, polled every POLL_S seconds
    POST /alarms/{id}/ack         form fields `csrf`, `note`: acknowledged by the session's
                                  user, then 303 back to /alarms

An alarm needs attention while it is active or not acknowledged: a leak that came and went
overnight is still shown until someone has seen it, and an acknowledged alarm stays until it
clears. Everything else raised in the last 7 days is listed below it, and under that the
early-warning rules in force (`[rules.NAME]`, `Api.rules`) with the nodes each is raised on,
as of the page's loading. The rows are the
gateway's alarm log (`Api.alarm_log`, the same as `GET /api/alarms/log`); the
acknowledgement is `Api.acknowledge`, so the page and the API record it the same way
(who: the user name, or `api-token` for a session opened with the API token).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Optional

from fastapi import FastAPI, Path, Request
from fastapi.responses import RedirectResponse, Response

from gateway.dashboard import POLL_S

if TYPE_CHECKING:
    from gateway.dashboard import Dash

SHOWN = 500  # rows per list; the page says when a list is cut


def mount(app: FastAPI, dash: "Dash") -> None:
    from gateway.api import NOTE_LIMIT, ApiError

    api = dash.api

    def data() -> dict[str, Any]:
        attention = api.alarm_log("attention", limit=SHOWN)
        week = api.alarm_log("recent", limit=SHOWN)
        ids = {a["id"] for a in attention}
        return {"now": time.time(), "attention": attention,
                "recent": [a for a in week if a["id"] not in ids], "limit": SHOWN,
                "cut": {"attention": len(attention) == SHOWN, "recent": len(week) == SHOWN}}

    def page(request: Request, session: dict[str, Any], status: int = 200,
             error: Optional[str] = None) -> Response:
        return dash.page(request, "alarms.html", status, session=session, data=data(),
                         rules=api.rules(), poll_s=POLL_S, note_limit=NOTE_LIMIT, error=error,
                         title="Alarms")

    @app.get("/alarms", **dash.no_schema)
    def alarms_page(request: Request) -> Response:
        session = dash.user(request)
        if not session:
            return dash.to_login(request)
        return page(request, session)

    @app.get("/dash/alarms.json", **dash.no_schema)
    def alarms_data(request: Request) -> Response:
        if not dash.user(request):
            return dash.not_logged_in()
        return dash.json(data())

    @app.post("/alarms/{alarm}/ack", **dash.no_schema)
    async def acknowledge(request: Request,
                          alarm: int = Path(ge=1, le=2**63 - 1)) -> Response:
        fields = await dash.form(request)
        session = dash.user(request)
        if not session:
            return RedirectResponse("/login?next=/alarms", status_code=303)
        if not dash.csrf_ok(session, fields):
            return dash.csrf_refused()
        note = fields.get("note", "")
        if len(note) > NOTE_LIMIT:
            return await asyncio.to_thread(
                page, request, session, 400,
                f"The note is {len(note)} characters long: at most {NOTE_LIMIT}.")
        try:
            await asyncio.to_thread(api.acknowledge, alarm, note, session["user"])
        except ApiError as exc:  # 404 no such alarm, 409 acknowledged already (by whom)
            return await asyncio.to_thread(page, request, session, exc.status, str(exc))
        return RedirectResponse("/alarms", status_code=303)
