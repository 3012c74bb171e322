"""The dashboard's operations pages: quarantine, dead letters and commands.

    GET  /quarantine?reason=&before=ID     messages the gateway rejected, newest first
    GET  /quarantine/{id}/payload          one of them as it came (a download: `meterlink decode`)
    GET  /deadletters?sink=&before=ID      what the sinks could not deliver, a Replay button each
    POST /deadletters/{id}/replay          queue one again (form: csrf, again, back), 303 back
    GET  /commands?node=&cmd=...           the send form (its choices as given), and the
                                           recent downlinks
    POST /commands                         send (fields: `command_request`), 303 back; 400
                                           and the form again, each problem by its field
    GET  /dash/downlinks.json?limit=       the recent downlinks: the commands page polls it

Every page is over `gateway.api.Api` (`dash.api`), which reads and writes through the
outbox's methods: this module reads no table.

Pages go older by id (`before`: the ids below the last one shown), not by OFFSET: a page keeps
its rows while new ones arrive at the top, and SQLite walks the primary key instead of
counting past the rows skipped.

A command is sent with `wait: False`: the POST returns as soon as the messages are published
and recorded, and the page then shows each node's answer as it arrives (the downlinks table,
polled every `POLL_S` seconds), so a sleeping node's hour-long wait holds no request open.

What a POST did is said on the page it redirects to (a "flash"): a cookie for that page's
path only, living `FLASH_S` seconds, read once. It is signed (HMAC-SHA256, a key derived from
the API token) so that no one but this gateway can put words on the operator's page through
it. A flash rather than a message in the redirect's query: a reload or a link shared does not
say it again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.dashboard import HEADERS, POLL_S, ago
from gateway.downlink import COMMANDS
from gateway.logfmt import kv
from gateway.wire import REASONS

if TYPE_CHECKING:
    from gateway.dashboard import Dash

log = logging.getLogger("meterlink.gateway.dashboard")

PAGE_ROWS = 50  # quarantine and dead-letter rows a page
SHORT_BYTES = 16  # of a payload, shown in the row
INLINE_BYTES = 4096  # of a payload, shown when the row is opened; all of it: the download
SHORT_TEXT = 160  # characters of a reply or body shown before "more"
INLINE_TEXT = 65536  # characters of a reply or body shown when opened
DOWNLINK_ROWS = 30  # on the commands page
MAX_DOWNLINK_ROWS = 200
JSON_CHARS = 16384  # a form's args or patch, before it is even parsed
TIMEOUT_MAX_S = 3600
VERSION_MAX = 2**31 - 1
ID_MAX = 2**63 - 1
FORM_FIELDS = 16  # the commands form's fields, besides one per node chosen
FLASH = "meterlink_flash"
FLASH_S = 60
FLASH_TEXT = 600
FLASH_IDS = 50
# reasons a message is quarantined for other than the wire format's (docs/gateway.md)
OTHER_REASONS = {
    "topic": "the topic breaks the {prefix}/{node_id}/{kind} rules, or has another kind than "
             "r, s, a",
    "topic_length": "the topic is longer than [ingest] max_topic_length",
    "unregistered": "require_registration is on and the node is not registered",
    "retired": "the node was retired",
    "internal": "a gateway bug: its log has the traceback",
}
ALL_REASONS = {**REASONS, **OTHER_REASONS}
TARGETS = ("node", "nodes", "group")
WHATS = ("cmd", "config")
# the commands form's choices a GET /commands takes from its query (`?node=n1&cmd=diag`, as
# after a send: the next command goes to the same place), besides `nodes`, up to PREFILL_NODES
PREFILL = ("to", "node", "group", "what", "cmd")
PREFILL_NODES = 50


# ---- shown times and bytes ------------------------------------------------------------------

def utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def spaced(data: bytes) -> str:
    """`84 01 05 1a`: bytes as hex a byte apart (`meterlink decode` takes it so)."""
    return data.hex(" ")


def hex_parts(data: bytes, offset: Optional[int], limit: int) -> tuple[str, str, str]:
    """The first `limit` bytes of `data` as (before, the byte at `offset`, after) spaced hex,
    for the page to mark the byte the reject reason points at."""
    shown = data[:limit]
    if offset is None or not 0 <= offset < len(shown):
        return spaced(shown), "", ""
    return (spaced(shown[:offset]) + (" " if offset else ""), spaced(shown[offset:offset + 1]),
            (" " if offset + 1 < len(shown) else "") + spaced(shown[offset + 1:]))


def quarantined_row(row: dict[str, Any], now: float) -> dict[str, Any]:
    """A quarantine row as the page shows it. A "topic" reason's offset is a character of
    the topic (marked there), every other reason's a byte of the payload."""
    payload = bytes.fromhex(row["payload"] or "")
    topic, offset = row["topic"], row["offset"]
    in_topic = row["reason"] == "topic" and offset is not None and 0 <= offset < len(topic)
    if in_topic:
        topic_parts = (topic[:offset], topic[offset], topic[offset + 1:])
        offset = None
    else:
        topic_parts = (topic, "", "")
    return {"id": row["id"], "ago": ago(now - row["at"]), "exact": utc(row["at"]),
            "topic": topic_parts, "offset": row["offset"], "reason": row["reason"],
            "meaning": ALL_REASONS.get(row["reason"], ""),
            "detail": row["detail"] or "", "size": len(payload),
            "short": hex_parts(payload, offset, SHORT_BYTES),
            "full": hex_parts(payload, offset, INLINE_BYTES) if len(payload) > SHORT_BYTES
            else None, "beyond": max(0, len(payload) - INLINE_BYTES)}


def clipped(text: str, limit: int) -> tuple[str, bool]:
    """(the first `limit` characters of `text`, whether that cut any)."""
    return (text, False) if len(text) <= limit else (text[:limit], True)


def letter_row(row: dict[str, Any], now: float) -> dict[str, Any]:
    items = row["body"] if isinstance(row["body"], list) else []
    names = [f"{it.get('node')} #{it.get('seq')}" if it.get("seq") is not None
             else f"{it.get('node')} {it.get('kind')}" for it in items if isinstance(it, dict)]
    body = json.dumps(row["body"], indent=1, ensure_ascii=False)
    reply = row["reply"] or ""
    return {"id": row["id"], "ago": ago(now - row["at"]), "exact": utc(row["at"]),
            "sink": row["sink"], "reason": row["reason"], "status": row["status"],
            "reply_short": clipped(reply, SHORT_TEXT)[0], "reply": clipped(reply, INLINE_TEXT),
            "count": len(items),
            "preview": ", ".join(names[:4]) + (f", … {len(names) - 4} more"
                                               if len(names) > 4 else ""),
            "body": clipped(body, INLINE_TEXT), "replayed": row["replayed"]}


# ---- the commands form ----------------------------------------------------------------------

def json_field(fields: dict[str, str], name: str, errors: dict[str, str],
               empty: Any = None) -> Any:
    """The JSON object in form field `name`; a problem goes into `errors[name]`."""
    text = fields.get(name, "").strip()
    if not text:
        if empty is None:
            errors[name] = f"{name}: required: a JSON object such as {{\"key\": 1}}"
        return empty
    if len(text) > JSON_CHARS:
        errors[name] = f"{name}: over {JSON_CHARS} characters: got {len(text)}"
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        errors[name] = f"{name}: not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        return None
    except (ValueError, RecursionError) as exc:  # an integer of 5000 digits, [[[[...]]]]
        errors[name] = f"{name}: JSON this gateway cannot take: {str(exc)[:80] or 'too deep'}"
        return None
    if not isinstance(value, dict):
        got = {list: "an array", str: "a string", bool: "true or false", type(None): "null"}
        errors[name] = f"{name}: must be a JSON object {{...}}: got " + \
            got.get(type(value), "a number")
        return None
    return value


def number_field(fields: dict[str, str], name: str, low: float, high: float,
                 errors: dict[str, str], *, whole: bool) -> Optional[float]:
    text = fields.get(name, "").strip()
    kind = "an integer" if whole else "a number"
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        shown = f"{text[:20]!r}" if text else "nothing"
        errors[name] = f"{name}: must be {kind} {low:.15g}-{high:.15g}: got {shown}"
        return None
    return value


def command_request(fields: dict[str, str], chosen: list[str], nodes: list[str],
                    groups: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The `POST /api/send` body a commands form asks for (`wait: False`), and its problems:
    {field: "field: what is wrong (the value received)"}; the body is only good without them.

    Fields: to (node | nodes | group), node, nodes (any number), group, what (cmd | config),
    cmd, args (JSON object), patch (JSON object), version, timeout_s.
    """
    from gateway.api import message_builder

    errors: dict[str, str] = {}
    body: dict[str, Any] = {"wait": False}
    known = set(nodes)
    to = fields.get("to", "")
    if to not in TARGETS:
        errors["to"] = f"to: choose one node, several nodes or a group: got {to[:20]!r}"
    elif to == "node":
        node = fields.get("node", "")
        if not node:
            errors["node"] = "node: choose a node"
        elif node not in known:
            errors["node"] = f"node: {node[:40]!r} is not in the registry"
        body["node"] = node
    elif to == "nodes":
        unknown = [n for n in chosen if n not in known]
        if not chosen:
            errors["nodes"] = "nodes: choose at least one node"
        elif unknown:
            errors["nodes"] = f"nodes: {unknown[0][:40]!r} is not in the registry"
        body["nodes"] = list(dict.fromkeys(chosen))
    else:
        group = fields.get("group", "")
        if group not in groups:
            errors["group"] = (f"group: {group[:40]!r} is no group of the registry"
                               if group else "group: choose a group")
        body["group"] = group
    what = fields.get("what", "")
    if what not in WHATS:
        errors["what"] = f"what: choose a command or a config patch: got {what[:20]!r}"
    elif what == "cmd":
        cmd = fields.get("cmd", "")
        if cmd not in COMMANDS:
            errors["cmd"] = f"cmd: unknown command {cmd[:32]!r} (known: {', '.join(COMMANDS)})"
        body["cmd"] = cmd
        body["args"] = json_field(fields, "args", errors, empty={})
    else:
        body["config"] = json_field(fields, "patch", errors)
        body["version"] = number_field(fields, "version", 1, VERSION_MAX, errors, whole=True)
    body["timeout_s"] = number_field(fields, "timeout_s", 1, TIMEOUT_MAX_S, errors,
                                     whole=False)
    if not errors:
        try:
            message_builder(body)  # floats, reserved keys, the 1024-byte limit
        except (ValueError, RecursionError) as exc:
            field = "args" if what == "cmd" else "patch"
            errors[field] = f"{field}: {exc}"
    return body, errors


def sent_text(body: dict[str, Any], reports: list[dict[str, Any]]) -> str:
    """`Sent diag to n1 (request gw-1a2b3c4d): its answer appears below.`"""
    what = f"config v{body['version']}" if "config" in body else body["cmd"]
    if len(reports) == 1:
        r = reports[0]
        return f"Sent {what} to {r['node']} (request {r['id']}): its answer appears below."
    group = f" of group {body['group']}" if "group" in body else ""
    return f"Sent {what} to {len(reports)} nodes{group}: their answers appear below."


# ---- the flash --------------------------------------------------------------------------------

class Flash:
    """What a POST did, for the page it redirects to: a signed cookie read once."""

    def __init__(self, token: bytes) -> None:
        self._key = hmac.new(token, b"meterlink dashboard flash", hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "Flash(<signed cookie>)"

    def _mac(self, payload: str) -> str:
        digest = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def set(self, request: Request, response: Response, page: str, kind: str, text: str,
            ids: list[str] = ()) -> None:
        """Says `text` on `page` (a path: the cookie goes there only)."""
        data = {"kind": kind, "text": text[:FLASH_TEXT], "ids": list(ids)[:FLASH_IDS],
                "exp": int(time.time() + FLASH_S)}
        payload = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
        response.set_cookie(FLASH, f"{payload}.{self._mac(payload)}", max_age=FLASH_S,
                            path=page, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")

    def take(self, request: Request) -> Optional[dict[str, Any]]:
        """The flash of the request (then `clear` it on the response), or None."""
        cookie = request.cookies.get(FLASH) or ""
        payload, _, mac = cookie.partition(".")
        if not mac or not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("exp"), int) or \
                data["exp"] < time.time():
            return None
        return data

    @staticmethod
    def clear(response: Response, page: str) -> None:
        response.delete_cookie(FLASH, path=page, httponly=True, samesite="strict")


# ---- the routes -------------------------------------------------------------------------------

def _login_then(path: str) -> RedirectResponse:
    """A POST from a visitor not logged in: to the login page, then back to `path`'s page."""
    return RedirectResponse(f"/login?{urlencode({'next': path})}", status_code=303)


def _back(target: str, default: str) -> str:
    """Where a form asks to go back to: a page under `default` only."""
    if target == default or target.startswith((default + "?", default + "#")):
        return target
    return default


def mount(app: FastAPI, dash: "Dash") -> None:
    from gateway.api import ApiError

    api = dash.api
    flash = Flash(api.token)

    def page(request: Request, session: dict[str, Any], template: str, status: int = 200,
             **context: Any) -> Response:
        shown = flash.take(request)
        response = dash.page(request, template, status, session=session, flash=shown,
                             **context)
        if request.cookies.get(FLASH):
            flash.clear(response, request.url.path)
        return response

    async def form(request: Request, limit: int) -> tuple[dict[str, str], list[str]]:
        """The POSTed fields (first value of each) and every value of `nodes`."""
        try:
            fields = await dash.form(request, limit)
            nodes = parse_qs((await request.body()).decode("utf-8", "replace"),
                             max_num_fields=limit).get("nodes", [])
        except ValueError:  # parse_qs: over max_num_fields
            raise StarletteHTTPException(413, f"the form has over {limit} fields") from None
        return fields, nodes

    # ---- quarantine ------------------------------------------------------------------------

    @app.get("/quarantine", **dash.no_schema)
    def quarantine_page(request: Request,
                        reason: Optional[str] = Query(None, max_length=64),
                        before: Optional[int] = Query(None, ge=1, le=ID_MAX)) -> Response:
        session = dash.user(request)
        if not session:
            return dash.to_login(request)
        reason = reason or None
        rows = api.quarantined(PAGE_ROWS + 1, reason=reason, before=before)
        older = rows[PAGE_ROWS - 1]["id"] if len(rows) > PAGE_ROWS else None
        now = time.time()
        return page(request, session, "quarantine.html", title="Quarantine",
                    rows=[quarantined_row(r, now) for r in rows[:PAGE_ROWS]],
                    reasons=ALL_REASONS, reason=reason, before=before,
                    older=older and "/quarantine?" + urlencode(
                        {**({"reason": reason} if reason else {}), "before": older}),
                    newest="/quarantine" + (f"?{urlencode({'reason': reason})}" if reason
                                            else ""))

    @app.get("/quarantine/{qid}/payload", **dash.no_schema)
    def quarantine_payload(request: Request, qid: int = Path(ge=1, le=ID_MAX)) -> Response:
        if not dash.user(request):
            return dash.not_logged_in()
        rows = api.quarantined(1, row_id=qid)
        if not rows:
            return dash.json({"error": f"no quarantined message {qid}"}, 404)
        return Response(bytes.fromhex(rows[0]["payload"] or ""),
                        media_type="application/octet-stream",
                        headers={**HEADERS, "Content-Disposition":
                                 f'attachment; filename="quarantine-{qid}.bin"'})

    # ---- dead letters ----------------------------------------------------------------------

    @app.get("/deadletters", **dash.no_schema)
    def deadletters_page(request: Request,
                         sink: Optional[str] = Query(None, max_length=64),
                         before: Optional[int] = Query(None, ge=1, le=ID_MAX)) -> Response:
        session = dash.user(request)
        if not session:
            return dash.to_login(request)
        sink = sink or None
        rows = api.dead_letters(PAGE_ROWS + 1, sink=sink, before=before)
        older = rows[PAGE_ROWS - 1]["id"] if len(rows) > PAGE_ROWS else None
        now = time.time()
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return page(request, session, "deadletters.html", title="Dead letters",
                    rows=[letter_row(r, now) for r in rows[:PAGE_ROWS]],
                    sinks=[c.name for c in api.gateway.config.sinks], sink=sink,
                    before=before, back=here,
                    older=older and "/deadletters?" + urlencode(
                        {**({"sink": sink} if sink else {}), "before": older}),
                    newest="/deadletters" + (f"?{urlencode({'sink': sink})}" if sink else ""))

    @app.post("/deadletters/{letter}/replay", **dash.no_schema)
    async def replay(request: Request, letter: int = Path(ge=1, le=ID_MAX)) -> Response:
        session = dash.user(request)
        if not session:
            return _login_then("/deadletters")
        fields = await dash.form(request)
        if not dash.csrf_ok(session, fields):
            return dash.csrf_refused()
        again = fields.get("again") == "1"
        back = _back(fields.get("back", ""), "/deadletters")
        response = RedirectResponse(f"{back.split('#')[0]}#letter-{letter}", status_code=303)
        try:
            done = await run_in_threadpool(api.replay, letter, again)
        except ApiError as exc:
            log.warning("dashboard_replay_refused", extra=kv(
                user=session["user"], letter=letter, again=again, status=exc.status,
                error=str(exc)))
            flash.set(request, response, "/deadletters", "error",
                      f"Dead letter {letter} was not replayed: {exc}")
            return response
        log.info("dashboard_replayed", extra=kv(user=session["user"], letter=letter,
                                                sink=done["sink"], items=done["items"],
                                                again=again))
        flash.set(request, response, "/deadletters", "ok",
                  f"Dead letter {letter}: {done['items']} item(s) queued again for "
                  f"{done['sink']}.")
        return response

    # ---- commands ----------------------------------------------------------------------------

    def commands_page(request: Request, session: dict[str, Any], nodes: list[dict[str, Any]],
                      values: dict[str, Any], errors: dict[str, str],
                      status: int = 200) -> Response:
        groups = sorted({n["group"] for n in nodes if n.get("group")})
        next_version = max([n.get("cv") or 0 for n in nodes] + [0]) + 1
        defaults = {"to": "node", "what": "cmd", "cmd": "diag", "args": "{}", "patch": "",
                    "version": str(next_version), "node": "", "nodes": [], "group": "",
                    "timeout_s": f"{api.gateway.config.gateway.ack_timeout_s:g}"}
        return page(request, session, "commands.html", status, title="Commands",
                    nodes=nodes, groups=groups, commands=COMMANDS,
                    form={**defaults, **values}, errors=errors, poll_s=POLL_S,
                    downlinks={"now": time.time(),
                               "downlinks": api.downlinks(None, DOWNLINK_ROWS)})

    @app.get("/commands", **dash.no_schema)
    def commands(request: Request) -> Response:
        session = dash.user(request)
        if not session:
            return dash.to_login(request)
        query = request.query_params  # a choice kept from the last send, or a link's
        chosen = {k: query[k][:64] for k in PREFILL if query.get(k)}
        chosen["nodes"] = [n[:64] for n in query.getlist("nodes")[:PREFILL_NODES]]
        return commands_page(request, session, api.nodes(), chosen, {})

    @app.post("/commands", **dash.no_schema)
    async def send(request: Request) -> Response:
        session = dash.user(request)
        if not session:
            return _login_then("/commands")
        nodes = await run_in_threadpool(api.nodes)
        fields, chosen = await form(request, len(nodes) + FORM_FIELDS)
        if not dash.csrf_ok(session, fields):
            return dash.csrf_refused()
        groups = sorted({n["group"] for n in nodes if n.get("group")})
        body, errors = command_request(fields, chosen, [n["node"] for n in nodes], groups)
        reports: list[dict[str, Any]] = []
        if not errors:
            try:
                reports = (await run_in_threadpool(api.send, body))["results"]
            except ApiError as exc:
                field = "group" if "group" in body and exc.status == 404 else "form"
                errors[field] = str(exc)
        if errors:
            values = {k: fields.get(k, "") for k in ("to", "node", "group", "what", "cmd",
                                                     "args", "patch", "version",
                                                     "timeout_s")}
            return await run_in_threadpool(commands_page, request, session, nodes,
                                           {**values, "nodes": chosen}, errors, 400)
        kind = "config" if "config" in body else body["cmd"]
        ids = [r["id"] for r in reports]
        log.info("dashboard_downlink_sent", extra=kv(
            user=session["user"], kind=kind, nodes=",".join(r["node"] for r in reports),
            ids=",".join(ids)))
        keep = {k: fields[k] for k in PREFILL if fields.get(k)}
        if fields.get("to") == "nodes" and len(chosen) <= PREFILL_NODES:
            keep["nodes"] = chosen
        response = RedirectResponse(f"/commands?{urlencode(keep, doseq=True)}",
                                    status_code=303)
        flash.set(request, response, "/commands", "ok", sent_text(body, reports), ids)
        return response

    @app.get("/dash/downlinks.json", **dash.no_schema)
    def downlinks_data(request: Request,
                       limit: int = Query(DOWNLINK_ROWS, ge=1, le=MAX_DOWNLINK_ROWS)
                       ) -> Response:
        if not dash.user(request):
            return dash.not_logged_in()
        return dash.json({"now": time.time(), "downlinks": api.downlinks(None, limit)})
