"""The gateway's HTTP side as an ASGI application (FastAPI on uvicorn), over `Api`.

    server = ApiServer(gateway)     # the socket bound (OSError when taken), app made
    port = server.start()           # uvicorn on its own thread; server.stop()
    app = make_app(api)             # the routes over an `api.Api` (what they do)

Why FastAPI: the request bodies are declared once, as pydantic models, and that one
declaration validates every request and is the published OpenAPI description
(`GET /openapi.json`, a copy in docs/openapi.json): the description cannot drift from what the
gateway accepts, and the API is tested against it with malformed input (schemathesis,
tests/test_gw_openapi.py). Starlette alone would have meant a hand-written description;
http.server (before) a hand-written everything.

Every error is `{"error": "..."}`: a body or query field that does not validate is a 400 naming
the field (`interval_s: Input should be greater than or equal to 1`), a missing or wrong token
a 401, an unknown node a 404, a state conflict a 409; an unexpected exception is logged with
its traceback and answered 500 `{"error": "internal error: TypeError"}` (the tests fail on
any). `/healthz` and the OpenAPI description need no token; everything else does.
"""

from __future__ import annotations

import hmac
import logging
import socket
import threading
import urllib.parse
from typing import Annotated, Any, Literal, Optional

from fastapi import Body, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat,
                      StrictInt, StrictStr)
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway import dashboard
from gateway.api import NOTE_LIMIT, Api, ApiError, GatewayControl
from gateway.dashboard import alarms, fleet, operations, public
from gateway.logfmt import kv
from gateway.registry import NODE_EVENTS, NODE_LOG_KEEP

log = logging.getLogger("meterlink.gateway.api")

MAX_BODY = 1 << 20
STOP_S = 5.0  # what stop() waits for requests under way
# the dashboard's pages, one module each (gateway/dashboard/__init__.py), in routing order
PAGES = (fleet, public, operations, alarms)
NODE_ID = r"^[a-z0-9][a-z0-9_-]{0,31}$"  # gateway.wire.node_id_problem's rule
NODE_STATES = "^(online|asleep|offline|restarting)$"
NODES_PAGE = 1000  # /api/nodes answers a page: at 100 000 nodes the whole list is 50 MB
NODES_PAGE_MAX = 10000
ALARM_NODE = r"^-?[a-z0-9][a-z0-9_-]{0,31}$"  # a node id, or -gateway (daemon.GATEWAY_NODE)
ALARM_STATES = r"^(open|unacked|attention|recent|all)$"  # api.ALARM_LOG_STATES

UNAUTHORIZED = ("a bearer token is required: Authorization: Bearer TOKEN ([api] token, or "
                "the token_file's)")


TOTAL = r"^(water_volume|gas_volume|heat_energy)(:[0-9]{1,2})?$"  # history.TOTALS
CHANNELS = r"^[a-z][a-z0-9_]{0,31}(:[0-9]{1,2})?(,[a-z][a-z0-9_]{0,31}(:[0-9]{1,2})?)*$"
NodeId = Annotated[str, Path(pattern=NODE_ID, description="node id: a-z 0-9 _ -, at most 32")]


def _whole(value: Any) -> Any:
    """JSON's integers include 375.0 (JSON Schema's `integer`); strings and booleans stay out."""
    return int(value) if type(value) is float and value.is_integer() else value


WholeInt = Annotated[StrictInt, BeforeValidator(_whole)]


def _real(value: Any) -> Any:
    """A JSON number as a float (52 too); strings and booleans stay out."""
    return float(value) if type(value) is int else value


Real = Annotated[StrictFloat, BeforeValidator(_real)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Location(_Model):
    lat: Real = Field(ge=-90, le=90, allow_inf_nan=False, description="latitude, degrees")
    lon: Real = Field(ge=-180, le=180, allow_inf_nan=False, description="longitude, degrees")


class Registration(_Model):
    """What `meterlink provision` registers for a node."""

    board: StrictStr = Field(min_length=1, max_length=64, description="board file name")
    sensors: list[Any] = Field(description="the node's `sensors` configuration, stored as given")
    interval_s: WholeInt = Field(ge=1, le=86400, description="the staleness clock until the "
                                                             "node reports its own `iv`")
    group: Optional[StrictStr] = Field(default=None, min_length=1, max_length=64,
                                       description="the downlink group")
    location: Optional[Location] = Field(default=None, description="where the node is (WGS 84): "
                                                                  "the dashboard's map")
    district: Optional[StrictStr] = Field(default=None, min_length=1, max_length=64,
                                          description="the district the public page groups "
                                                      "it under")
    public: StrictBool = Field(default=False, description="its environment channels are shown "
                                                          "on the public page")


class Retirement(_Model):
    note: StrictStr = Field(default="", max_length=NOTE_LIMIT,
                            description="why, kept with the node")


class Replay(_Model):
    again: StrictBool = Field(default=False, description="replay a letter replayed before")


class Acknowledgement(_Model):
    note: StrictStr = Field(default="", max_length=NOTE_LIMIT,
                            description="what was seen or done (optional: who and when are "
                                        "recorded either way)")


class AlarmLogRow(BaseModel):
    """One raise of an alarm (the alarm log): cleared and acknowledged, or not yet."""

    id: int = Field(description="what POST /api/alarms/{id}/ack takes")
    node: str = Field(description="the node id; -gateway for the gateway's own alarms")
    alarm: str = Field(description="leak, low_battery, ... (docs/operations.md, Alarms)")
    raised_at: float = Field(description="Unix seconds")
    cleared_at: Optional[float] = Field(description="Unix seconds; null while active")
    detail: Optional[str] = Field(description="why it was raised")
    acked_at: Optional[float] = Field(description="Unix seconds; null until acknowledged")
    acked_by: Optional[str] = Field(description="the operator's user name, or api-token")
    ack_note: Optional[str] = Field(description="the operator's note; null without one")
    active: bool = Field(description="not cleared yet")


class Downlink(_Model):
    """A config patch (`config` + `version`) or a command (`cmd` + `args`) to `node`, `nodes`
    or every registered node of `group` (exactly one of the three)."""

    node: Optional[StrictStr] = Field(default=None, pattern=NODE_ID)
    nodes: Optional[list[Annotated[StrictStr, Field(pattern=NODE_ID)]]] = Field(
        default=None, min_length=1, max_length=1000)
    group: Optional[StrictStr] = Field(default=None, min_length=1, max_length=64)
    config: Optional[dict[str, Any]] = None
    version: Optional[WholeInt] = Field(default=None, ge=1, le=2**31 - 1)
    cmd: Optional[StrictStr] = Field(default=None, max_length=32)
    args: Optional[dict[str, Any]] = None
    timeout_s: Optional[float] = Field(default=None, ge=0, le=3600, allow_inf_nan=False)
    wait: StrictBool = True


class SentDownlink(BaseModel):
    """A downlink sent through the API (`POST /api/send`) and what became of it."""

    id: int
    node: str
    kind: str = Field(description='"config", or the command\'s name')
    request_id: Optional[str] = Field(description="the `id` the node's answer carries")
    sent_at: float = Field(description="Unix seconds")
    deadline: float = Field(description="Unix seconds: the answer is awaited until then")
    acked_at: Optional[float] = Field(description="Unix seconds the answer came; null before")
    result: Literal["waiting", "ok", "failed", "timeout"] = Field(
        description="waiting: no answer yet, before the deadline; failed: the node refused it "
                    "(`ack.err` says why); timeout: no answer by the deadline")
    request: dict[str, Any] = Field(description="what was sent, decoded (bytes as hex), "
                                                "without `id`")
    ack: Optional[dict[str, Any]] = Field(description="the node's answer without `id` and "
                                                      "`ok`; null before it came")


class NodeEvent(BaseModel):
    """One row of a node's status history (docs/gateway.md, "Status history")."""

    at: float = Field(description="Unix seconds")
    event: str = Field(description=", ".join(NODE_EVENTS))
    detail: Optional[str] = Field(description='what changed: "boot 7 -> 8, reset cause wdt", '
                                              '"1.3.2 -> 1.4.0", "was offline"; null: nothing '
                                              'to add')


class ErrorReply(BaseModel):
    error: str = Field(description="what is wrong, naming the field")


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorReply"}}}}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's description, with the error replies this API gives: 400 (not FastAPI's 422)
    for a field that does not validate, 401 without the token, 413 for a body over 1 MiB,
    and `ErrorReply` for every 4xx listed."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    doc = get_openapi(title=app.title, version=app.version, description=app.description,
                      routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorReply"] = ErrorReply.model_json_schema()
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path, methods in doc["paths"].items():
        for op in methods.values():
            replies = op.setdefault("responses", {})
            replies.pop("422", None)
            for code, reply in list(replies.items()):
                if code.startswith("4"):
                    replies[code] = _error(reply.get("description", "refused"))
            if path != "/healthz":
                replies["400"] = _error("a parameter or body field does not validate")
                replies["401"] = _error("no or a wrong bearer token")
            if "requestBody" in op:
                replies["413"] = _error("body over 1 MiB")
    app.openapi_schema = doc
    return doc


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def validation_message(exc: RequestValidationError) -> str:
    """The first problem, naming its field: `interval_s: Input should be ...`."""
    errors = exc.errors()
    if not errors:
        return "request does not validate"
    err = errors[0]
    if err.get("type") == "json_invalid":
        return f"body is not JSON: {err.get('ctx', {}).get('error', err.get('msg'))}"
    if err.get("type") == "missing" and tuple(err.get("loc", ())) == ("body",):
        return "body is required: a JSON object"
    got = err.get("input")
    shown = f" (got {got!r})" if isinstance(got, (int, float, str, bool)) and \
        len(repr(got)) <= 40 and err.get("type") != "missing" else ""
    return f"{_field(tuple(err.get('loc', ())))}: {err.get('msg')}{shown}"


def make_app(api: Api) -> FastAPI:
    app = FastAPI(title="meterlink gateway API", version="1",
                  description="The gateway's registry, alarms, quarantine, dead letters, "
                              "downlinks and update progress; see docs/gateway.md.",
                  docs_url=None, redoc_url=None)
    bearer = HTTPBearer(auto_error=False, description="[api] token, or the token file's")
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    def authorized(request: Request,
                   cred: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        token = cred.credentials.strip().encode() if cred else b""
        if not cred or not hmac.compare_digest(token, api.token):
            log.warning("api_unauthorized", extra=kv(
                client=request.client.host if request.client else "-",
                method=request.method, path=request.url.path))
            raise StarletteHTTPException(401, UNAUTHORIZED,
                                         headers={"WWW-Authenticate": 'Bearer realm="meterlink"'})

    def known_query(request: Request) -> None:
        """A query parameter the operation does not take is a mistake worth a 400 (a typo
        such as `?limt=5` would otherwise be ignored without a word)."""
        route = request.scope.get("route")
        taken = {p.alias for p in getattr(getattr(route, "dependant", None),
                                          "query_params", [])}
        for name in request.query_params:
            if len(request.query_params.getlist(name)) > 1:
                raise StarletteHTTPException(400, f"{name[:40]}: given more than once")
            if name not in taken:
                raise StarletteHTTPException(
                    400, f"{name[:40]}: unknown query parameter" +
                    (f" (known: {', '.join(sorted(taken))})" if taken else " (none taken)"))

    auth = [Depends(authorized), Depends(known_query)]

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return JSONResponse({"error": f"body over {MAX_BODY} bytes"}, status_code=413)
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": validation_message(exc)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail
        if exc.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):
            message = f"no {request.method} {request.url.path} (see docs/gateway.md)"
        return JSONResponse({"error": message}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.error("api_error", exc_info=exc, extra=kv(method=request.method,
                                                       path=request.url.path))
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"},
                            status_code=500)

    @app.exception_handler(ApiError)
    async def refused(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    # ---- health and metrics --------------------------------------------------------------

    @app.get("/healthz", tags=["health"], summary="200 while the process runs")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/readyz", tags=["health"], dependencies=auth,
             summary="200 when subscribed and the outbox takes messages, else 503",
             responses={503: {"description": "not ready"}})
    def readyz() -> JSONResponse:
        ready = api.gateway.ready
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"], dependencies=auth, response_class=PlainTextResponse,
             summary="Prometheus text format, process metrics included")
    def metrics() -> Response:
        from gateway.metrics import CONTENT_TYPE, render
        return Response(render(api.metrics), media_type=CONTENT_TYPE)

    # ---- registry ------------------------------------------------------------------------

    @app.get("/api/nodes", tags=["registry"], dependencies=auth,
             summary="the nodes seen or registered, not retired, by id, a page at a time "
                     "(a Link header rel=\"next\" when there are more)")
    def nodes(request: Request,
              retired: StrictBool = Query(False, description="the retired nodes too"),
              limit: int = Query(NODES_PAGE, ge=1, le=NODES_PAGE_MAX,
                                 description="nodes per page"),
              after: Optional[str] = Query(None, pattern=NODE_ID,
                                           description="the page after this node id"),
              group: Optional[str] = Query(None, min_length=1, max_length=64,
                                           description="only the nodes of this group"),
              district: Optional[str] = Query(None, min_length=1, max_length=64,
                                              description="only the nodes of this district"),
              state: Optional[str] = Query(None, pattern=NODE_STATES,
                                           description="only the nodes in this state")
              ) -> Response:
        rows = api.nodes(include_retired=retired, limit=limit, after=after, group=group,
                         district=district, state=state)
        headers = {}
        if len(rows) == limit:  # maybe more: the next page starts after the last id
            query = dict(request.query_params)
            query["after"] = rows[-1]["node"]
            headers["Link"] = f'</api/nodes?{urllib.parse.urlencode(query)}>; rel="next"'
        return JSONResponse(rows, headers=headers)

    @app.get("/api/nodes/{node}", tags=["registry"], dependencies=auth,
             summary="one node, with its gap ranges", responses={404: {"description": "unknown"}})
    def node(node: NodeId) -> dict[str, Any]:
        return api.node(node)

    @app.put("/api/nodes/{node}", tags=["registry"], dependencies=auth,
             summary="register a node (201 new, 200 updated)",
             responses={201: {"description": "registered"}})
    def register(node: NodeId, body: Registration) -> JSONResponse:
        status, row = api.register(node, body.model_dump())
        return JSONResponse(row, status_code=status)

    @app.post("/api/nodes/{node}/retire", tags=["registry"], dependencies=auth,
              summary="take a node out of service", responses={404: {"description": "unknown"}})
    def retire(node: NodeId, body: Optional[Retirement] = Body(None)) -> dict[str, Any]:
        return api.lifecycle(node, "retire", (body or Retirement()).note)

    @app.post("/api/nodes/{node}/reinstate", tags=["registry"], dependencies=auth,
              summary="put a retired node back in service",
              responses={404: {"description": "unknown"}})
    def reinstate(node: NodeId) -> dict[str, Any]:
        return api.lifecycle(node, "reinstate", "")

    @app.delete("/api/nodes/{node}", tags=["registry"], dependencies=auth,
                summary="delete a node that never sent a reading",
                responses={404: {"description": "unknown"},
                           409: {"description": "it sent readings: retire it"}})
    def delete(node: NodeId) -> dict[str, Any]:
        return api.delete(node)

    @app.get("/api/nodes/{node}/events", tags=["registry"], dependencies=auth,
             response_model=list[NodeEvent],
             summary="a node's status history, newest first: state changes, reboots, "
                     "firmware versions, safe mode, retirement",
             responses={404: {"description": "unknown"}})
    def node_events(node: NodeId,
                    limit: int = Query(100, ge=1, le=NODE_LOG_KEEP,
                                       description=f"rows, newest first (the gateway keeps "
                                                   f"the last {NODE_LOG_KEEP} per node)")
                    ) -> list[dict[str, Any]]:
        return api.events(node, limit)

    # ---- history --------------------------------------------------------------------------

    @app.get("/api/nodes/{node}/series", tags=["history"], dependencies=auth,
             summary="time series of a node's channels from the history, one mean per step",
             responses={404: {"description": "unknown node, or no [sinks.history]"}})
    def series(node: NodeId,
               channels: Optional[str] = Query(None, max_length=2000, pattern=CHANNELS,
                                               description="comma-separated; default all"),
               t0: Optional[float] = Query(None, alias="from", ge=0, le=1e11,
                                           description="Unix seconds; default to - 1 day"),
               t1: Optional[float] = Query(None, alias="to", ge=0, le=1e11,
                                           description="Unix seconds; default now"),
               step: Optional[int] = Query(None, ge=1, le=366 * 86400,
                                           description="seconds; default about 500 points")
               ) -> dict[str, Any]:
        names = channels.split(",") if channels else None
        return api.series(node, names, t0, t1, step)

    @app.get("/api/nodes/{node}/consumption", tags=["history"], dependencies=auth,
             summary="a meter's consumption per day, from differences of its totals",
             responses={404: {"description": "unknown node, or no [sinks.history]"}})
    def consumption(node: NodeId,
                    channel: str = Query("water_volume", pattern=TOTAL,
                                         description="a meter total, with its instance"),
                    t0: Optional[float] = Query(None, alias="from", ge=0, le=1e11),
                    t1: Optional[float] = Query(None, alias="to", ge=0, le=1e11)
                    ) -> dict[str, Any]:
        return api.consumption(node, channel, t0, t1)

    # ---- alarms, quarantine, dead letters ------------------------------------------------

    @app.get("/api/alarms", tags=["operations"], dependencies=auth, summary="active alarms")
    def alarms() -> list[dict[str, Any]]:
        return api.alarms()

    @app.get("/api/rules", tags=["operations"], dependencies=auth,
             summary="the early-warning rules in force ([rules] of the config), each with the "
                     "nodes it is raised on")
    def rules() -> list[dict[str, Any]]:
        return api.rules()

    @app.post("/api/rules/reload", tags=["operations"], dependencies=auth,
              summary="read the config file's [rules] again and put them in force (as SIGHUP)",
              responses={409: {"description": "the file does not check (the key at fault), "
                                              "or there is no file: the rules in force stay"}})
    def reload_rules() -> dict[str, Any]:
        return api.reload_rules()

    @app.get("/api/alarms/log", tags=["operations"], dependencies=auth,
             response_model=list[AlarmLogRow],
             summary="the alarms' history, newest first: each raise, when it cleared, who "
                     "acknowledged it")
    def alarm_log(state: str = Query("all", pattern=ALARM_STATES,
                                     description="open: not cleared; unacked: not "
                                                 "acknowledged; attention: either; recent: "
                                                 "raised in the last 7 days; all"),
                  node: Optional[str] = Query(None, pattern=ALARM_NODE,
                                              description="only this node's (-gateway: the "
                                                          "gateway's own)"),
                  limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
        return api.alarm_log(state, node, limit)

    @app.post("/api/alarms/{alarm}/ack", tags=["operations"], dependencies=auth,
              response_model=AlarmLogRow,
              summary="acknowledge an alarm of the log (active or cleared), with a note",
              responses={404: {"description": "no such alarm in the log"},
                         409: {"description": "acknowledged already: says by whom and when"}})
    def acknowledge(alarm: int = Path(ge=1, le=2**63 - 1),
                    body: Optional[Acknowledgement] = Body(None)) -> dict[str, Any]:
        return api.acknowledge(alarm, (body or Acknowledgement()).note, dashboard.TOKEN_USER)

    @app.get("/api/quarantine", tags=["operations"], dependencies=auth,
             summary="rejected messages, newest first, payload in hex")
    def quarantine(reason: Optional[str] = Query(None, max_length=64),
                   limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
        return api.quarantined(limit, reason=reason)

    @app.get("/api/deadletters", tags=["operations"], dependencies=auth,
             summary="batches and items the sinks could not deliver, newest first")
    def deadletters(sink: Optional[str] = Query(None, max_length=64),
                    limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
        return api.dead_letters(limit, sink=sink)

    @app.post("/api/deadletters/{letter}/replay", tags=["operations"], dependencies=auth,
              summary="queue a dead letter again for its sink",
              responses={404: {"description": "no such letter"},
                         409: {"description": "replayed before"}})
    def replay(letter: int = Path(ge=1, le=2**63 - 1), body: Optional[Replay] = Body(None)) -> dict[str, Any]:
        return api.replay(letter, (body or Replay()).again)

    # ---- downlink and updates ------------------------------------------------------------

    @app.post("/api/send", tags=["downlink"], dependencies=auth,
              summary="a config patch or a command to nodes; waits for their answers",
              responses={404: {"description": "the group has no registered nodes"}})
    def send(body: Downlink) -> dict[str, Any]:
        return api.send(body.model_dump(exclude_unset=True))

    @app.get("/api/downlinks", tags=["downlink"], dependencies=auth,
             response_model=list[SentDownlink],
             summary="downlinks sent through the API and their answers, newest first")
    def downlinks(node: Optional[str] = Query(None, pattern=NODE_ID,
                                              description="only the downlinks to this node"),
                  limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
        return api.downlinks(node, limit)

    @app.get("/api/ota", tags=["downlink"], dependencies=auth,
             summary="the last app-update rollout's progress",
             responses={404: {"description": "no rollout yet"}})
    def ota() -> dict[str, Any]:
        return api.ota()

    dashboard.mount(app, api, PAGES)  # the operator pages (/, /login, /nodes/{id})
    return app


class ApiServer:
    """The API of one gateway (`Api` over its own outbox connection, the routes of
    `make_app`) served by uvicorn on its own thread. The socket is bound here (an OSError when
    the address is taken), served from `start()`."""

    def __init__(self, gateway: GatewayControl) -> None:
        import uvicorn

        cfg = gateway.config.api
        self.api = Api(gateway)
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((cfg.host, cfg.port))
            self.sock.listen(128)
        except OSError:
            self.sock.close()
            self.api.close()
            raise
        self.app = make_app(self.api)
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="off",
            timeout_graceful_shutdown=int(STOP_S)))
        self.thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"ApiServer({self.api!r}, port={self.port})"

    @property
    def gateway(self) -> GatewayControl:
        return self.api.gateway

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def start(self) -> int:
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="api", daemon=True)
        self.thread.start()
        log.info("api_listening", extra=kv(host=self.gateway.config.api.host, port=self.port))
        return self.port

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(STOP_S + 1)
        self.sock.close()
        self.api.close()


def openapi_document() -> dict[str, Any]:
    """The OpenAPI description, without a gateway (docs/openapi.json is this)."""
    return make_app(None).openapi()  # type: ignore[arg-type] - routes are not called


if __name__ == "__main__":  # python -m gateway.webapp > docs/openapi.json
    import json
    import sys

    json.dump(openapi_document(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
