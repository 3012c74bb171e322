"""The gateway's local HTTP API and Prometheus metrics (stdlib `http.server` in a thread).

    GET  /healthz                 200 while the process runs
    GET  /readyz                  200 when subscribed and the outbox takes messages, else 503
    GET  /metrics                 Prometheus text format
    GET  /api/nodes               the registry (every node seen or registered; ?retired=true
                                  adds the retired ones)
    GET  /api/nodes/{id}          one node, with its gap ranges
    PUT  /api/nodes/{id}          register a node: {"board", "sensors", "interval_s", "group"?}
    POST /api/nodes/{id}/retire   take a node out of service: {"note"?}
    POST /api/nodes/{id}/reinstate  put a retired node back in service
    DELETE /api/nodes/{id}        delete a node that never sent a reading
    GET  /api/alarms              active alarms
    GET  /api/quarantine          rejected messages (?reason=&limit=, newest first)
    GET  /api/deadletters         batches sinks rejected (?sink=&limit=, newest first)
    POST /api/deadletters/{id}/replay  queue a dead letter again for its sink: {"again"?}
    POST /api/send                downlink: {"node"|"nodes"|"group", "config"+"version" |
                                  "cmd"+"args", "timeout_s"?, "wait"?}

It listens on `[api] host` (default 127.0.0.1). Every request but `GET /healthz` needs
`Authorization: Bearer TOKEN` (401 without it): `[api] token`, else the token in
`[api] token_file` (default `api-token` beside the outbox), which the gateway creates with a
random token (mode 0600) the first time. Bodies are JSON; errors are `{"error": "..."}`
naming the field.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from gateway.downlink import command_message, config_message
from gateway.logfmt import kv
from gateway.outbox import Outbox
from gateway.registry import NODE_COLUMNS, node_row
from gateway.wire import node_id_problem

if TYPE_CHECKING:
    from gateway.daemon import Gateway

log = logging.getLogger("meterlink.gateway.api")

MAX_BODY = 1 << 20
NODE_PATH = re.compile(r"^/api/nodes/([^/]+)$")
REPLAY_PATH = re.compile(r"^/api/deadletters/([0-9]{1,18})/replay$")
LIFECYCLE_PATH = re.compile(r"^/api/nodes/([^/]+)/(retire|reinstate)$")
NOTE_LIMIT = 500


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def token_path(config) -> Path:
    """Where the API token lives when the config does not give it: `[api] token_file`, else
    `api-token` beside the outbox."""
    return config.api.token_file or Path(config.outbox.path).with_name("api-token")


def load_token(config) -> str:
    """The bearer token: `[api] token`, else the token file's first line, made (random,
    mode 0600) when there is none yet."""
    if config.api.token:
        return config.api.token
    path = token_path(config)
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if not token:
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        log.info("api_token_created", extra=kv(path=str(path)))
    return token


class ApiServer:
    """Runs the API for one Gateway on its own thread and outbox connection."""

    def __init__(self, gateway: "Gateway") -> None:
        self.gateway = gateway
        cfg = gateway.config.api
        self.token = load_token(gateway.config).encode()
        self.box = Outbox(gateway.config.outbox.path)
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"api": self})
        self.server = ThreadingHTTPServer((cfg.host, cfg.port), handler)
        self.server.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> int:
        self.thread = threading.Thread(target=self.server.serve_forever, name="api",
                                       daemon=True)
        self.thread.start()
        log.info("api_listening", extra=kv(host=self.gateway.config.api.host, port=self.port))
        return self.port

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.box.close()

    # ---- handlers ---------------------------------------------------------------------------

    def nodes(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        flag = query.get("retired", ["false"])[0]
        if flag not in ("true", "false", "1", "0"):
            raise ApiError(400, f"retired must be true or false: got {flag!r}")
        retired = "" if flag in ("true", "1") else " AND retired_at IS NULL"
        with self.lock:
            rows = self.box.query(f"SELECT {', '.join(NODE_COLUMNS)} FROM nodes "
                                  f"WHERE node NOT LIKE '-%'{retired} ORDER BY node")
            missing = self.box.missing()
            alarms = self._alarms_by_node()
        return [node_row(r, missing=missing.get(r["node"], 0), alarms=alarms.get(r["node"]))
                for r in rows]

    def _alarms_by_node(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for node, alarm in self.box.db.execute("SELECT node, alarm FROM alarms WHERE active=1 "
                                               "ORDER BY node, alarm"):
            out.setdefault(node, []).append(alarm)
        return out

    def node(self, node: str) -> dict[str, Any]:
        with self.lock:
            rows = self.box.query(f"SELECT {', '.join(NODE_COLUMNS)} FROM nodes WHERE node=?",
                                  (node,))
            if not rows:
                raise ApiError(404, f"node {node!r} is not known")
            gaps = [(a, b) for _, a, b in self.box.gaps(node)]
            alarms = self._alarms_by_node().get(node)
        return node_row(rows[0], missing=sum(b - a + 1 for a, b in gaps), gaps=gaps,
                        alarms=alarms)

    def ota(self) -> dict[str, Any]:
        """The last app-update rollout's progress per node (`meterlink gateway ota` writes it
        beside the outbox), or 404 when there was none."""
        path = Path(self.gateway.config.outbox.path).with_name("ota.json")
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise ApiError(404, "no app update has been rolled out from this gateway") from None
        except ValueError as exc:
            raise ApiError(503, f"{path.name} is being rewritten or damaged: {exc}") from exc

    def register(self, node: str, body: Any) -> tuple[int, dict[str, Any]]:
        problem = node_id_problem(node)
        if problem:
            raise ApiError(400, f"node_id: {problem[1]}")
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object")
        unknown = set(body) - {"board", "sensors", "interval_s", "group"}
        if unknown:
            raise ApiError(400, f"unknown field {sorted(unknown)[0]!r} (known: board, sensors, "
                                "interval_s, group)")
        board, sensors, interval = body.get("board"), body.get("sensors"), body.get("interval_s")
        group = body.get("group")
        if not isinstance(board, str) or not board:
            raise ApiError(400, "board must be a non-empty string")
        if not isinstance(sensors, list):
            raise ApiError(400, "sensors must be a list")
        if type(interval) is not int or not 1 <= interval <= 86400:
            raise ApiError(400, f"interval_s must be an integer 1-86400: got {interval!r}")
        if group is not None and (not isinstance(group, str) or not group):
            raise ApiError(400, "group must be a non-empty string when given")
        with self.lock, self.box.transaction():
            existed = self.box.db.execute("SELECT registered FROM nodes WHERE node=?",
                                          (node,)).fetchone()
            self.box.db.execute(
                "INSERT INTO nodes(node, registered, board, sensors, grp, interval_s) "
                "VALUES (?, 1, ?, ?, ?, ?) ON CONFLICT(node) DO UPDATE SET registered=1, "
                "board=excluded.board, sensors=excluded.sensors, grp=excluded.grp, "
                "interval_s=excluded.interval_s",
                (node, board, json.dumps(sensors), group, interval))
        log.info("node_registered", extra=kv(node=node, board=board, group=group,
                                             interval_s=interval))
        return (200 if existed and existed[0] else 201), self.node(node)

    def lifecycle(self, node: str, action: str, body: Any) -> dict[str, Any]:
        """retire (with an optional note) or reinstate, on the ingest thread."""
        problem = node_id_problem(node)
        if problem:
            raise ApiError(400, f"node_id: {problem[1]}")
        if body is None:
            body = {}
        allowed = {"note"} if action == "retire" else set()
        if not isinstance(body, dict) or set(body) - allowed:
            raise ApiError(400, "body must be empty" + (" or {\"note\": \"...\"}"
                                                        if allowed else ""))
        note = body.get("note", "")
        if not isinstance(note, str) or len(note) > NOTE_LIMIT:
            raise ApiError(400, f"note must be a string of at most {NOTE_LIMIT} characters")
        now = time.time()
        try:
            changed = self.gateway.on_ingest_thread(
                (lambda reg: reg.retire(node, now, note)) if action == "retire"
                else (lambda reg: reg.reinstate(node, now)))
        except KeyError:
            raise ApiError(404, f"node {node!r} is not known") from None
        except TimeoutError:
            raise ApiError(503, "the gateway is busy: try again") from None
        row = self.node(node)
        row["changed"] = changed
        return row

    def delete(self, node: str) -> dict[str, Any]:
        try:
            self.gateway.on_ingest_thread(lambda reg: reg.delete(node))
        except KeyError:
            raise ApiError(404, f"node {node!r} is not known") from None
        except ValueError as exc:
            raise ApiError(409, str(exc)) from None
        except TimeoutError:
            raise ApiError(503, "the gateway is busy: try again") from None
        return {"deleted": node}

    def listing(self, table: str, query: dict[str, list[str]], filter_key: str) -> list[dict]:
        try:
            limit = min(1000, max(1, int(query.get("limit", ["100"])[0])))
        except ValueError:
            raise ApiError(400, "limit must be an integer") from None
        where, args = "", []
        if filter_key in query:
            where, args = f"WHERE {filter_key}=?", [query[filter_key][0]]
        with self.lock:
            rows = self.box.query(f"SELECT * FROM {table} {where} ORDER BY id DESC LIMIT ?",
                                  (*args, limit))
        for r in rows:
            if isinstance(r.get("payload"), bytes):
                r["payload"] = r["payload"].hex()
            if table == "deadletters":
                r["body"] = json.loads(r["body"])
        return rows

    def replay(self, letter: int, body: Any) -> dict[str, Any]:
        if body is None:
            body = {}
        if not isinstance(body, dict) or set(body) - {"again"}:
            raise ApiError(400, "body must be empty or {\"again\": true}")
        again = body.get("again", False)
        if not isinstance(again, bool):
            raise ApiError(400, "again must be true or false")
        try:
            with self.lock:
                sink, items = self.box.replay(
                    letter, again=again, sinks=[c.name for c in self.gateway.config.sinks])
        except KeyError:
            raise ApiError(404, f"no dead letter {letter}") from None
        except ValueError as exc:
            raise ApiError(409, str(exc)) from None
        log.info("deadletter_replayed", extra=kv(letter=letter, sink=sink, items=items))
        self.gateway.wake_sinks()
        return {"id": letter, "sink": sink, "items": items}

    def alarms(self) -> list[dict[str, Any]]:
        with self.lock:
            return self.box.query("SELECT node, alarm, raised_at, detail FROM alarms "
                                  "WHERE active=1 ORDER BY node, alarm")

    def send(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object")
        targets = resolve_targets(self.box, self.lock, body)
        timeout = body.get("timeout_s", self.gateway.config.gateway.ack_timeout_s)
        if type(timeout) not in (int, float) or not 0 <= timeout <= 3600:
            raise ApiError(400, "timeout_s must be a number 0-3600")
        try:
            kind, build = message_builder(body)
            build("gw-check")  # size and type problems surface now, as a 400
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        reports = self.gateway.send(self.box, targets, kind, build, timeout=float(timeout),
                                    wait=bool(body.get("wait", True)), lock=self.lock)
        return {"kind": kind, "results": reports,
                "ok": all(r["result"] == "ok" for r in reports)}


def resolve_targets(box: Outbox, lock: Any, body: dict[str, Any]) -> list[str]:
    """The node ids a downlink request names: `node`, `nodes` or `group` (registry)."""
    given = [k for k in ("node", "nodes", "group") if k in body]
    if len(given) != 1:
        raise ApiError(400, "give exactly one of node, nodes, group")
    if "node" in body:
        nodes = [body["node"]]
    elif "nodes" in body:
        nodes = body["nodes"]
        if not isinstance(nodes, list) or not nodes:
            raise ApiError(400, "nodes must be a non-empty list")
    else:
        with lock:
            nodes = [r[0] for r in box.db.execute("SELECT node FROM nodes WHERE grp=? "
                                                  "ORDER BY node", (body["group"],))]
        if not nodes:
            raise ApiError(404, f"group {body['group']!r} has no registered nodes")
    for n in nodes:
        if not isinstance(n, str) or node_id_problem(n):
            raise ApiError(400, f"node id {n!r} is not valid")
    return nodes


def message_builder(body: dict[str, Any]):
    """(kind, build(request_id) -> bytes) for a send request; ValueError when invalid."""
    if ("config" in body) == ("cmd" in body):
        raise ValueError("give exactly one of config (with version) or cmd (with args)")
    now = time.time()
    if "config" in body:
        patch, version = body["config"], body.get("version")
        config_message(patch, version=version, request_id="x")
        return "config", lambda rid: config_message(patch, version=version, request_id=rid,
                                                    now=now)
    cmd, args = body["cmd"], body.get("args", {})
    if not isinstance(args, dict):
        raise ValueError("args must be a JSON object")
    command_message(cmd, args, request_id="x")
    return cmd, lambda rid: command_message(cmd, args, request_id=rid, now=now)


class _Handler(BaseHTTPRequestHandler):
    api: ApiServer
    server_version = "meterlink-gateway"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("http", extra=kv(client=self.client_address[0], line=fmt % args))

    def _reply(self, status: int, body: Any, content_type: str = "application/json",
               headers: dict[str, str] | None = None) -> None:
        data = (body if isinstance(body, str) else json.dumps(body, default=str) + "\n").encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ApiError(413, f"body over {MAX_BODY} bytes")
        try:
            return json.loads(self.rfile.read(length) or b"null")
        except ValueError as exc:
            raise ApiError(400, f"body is not JSON: {exc}") from None

    def _authorized(self) -> bool:
        got = self.headers.get("Authorization") or ""
        scheme, _, token = got.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                                   self.api.token)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        api = self.api
        try:
            if method == "GET" and url.path == "/healthz":
                self._reply(200, {"ok": True})
            elif not self._authorized():
                log.warning("api_unauthorized", extra=kv(client=self.client_address[0],
                                                         method=method, path=url.path))
                self._reply(401, {"error": "a bearer token is required: Authorization: Bearer "
                                           "TOKEN ([api] token, or the token_file's)"},
                            headers={"WWW-Authenticate": 'Bearer realm="meterlink"'})
            elif method == "GET" and url.path == "/readyz":
                ready = api.gateway.ready
                self._reply(200 if ready else 503, {"ready": ready})
            elif method == "GET" and url.path == "/metrics":
                from gateway.metrics import render
                self._reply(200, render(api.gateway, api.box, api.lock),
                            "text/plain; version=0.0.4")
            elif method == "GET" and url.path == "/api/nodes":
                self._reply(200, api.nodes(query))
            elif method == "GET" and NODE_PATH.match(url.path):
                self._reply(200, api.node(NODE_PATH.match(url.path).group(1)))
            elif method == "PUT" and NODE_PATH.match(url.path):
                status, row = api.register(NODE_PATH.match(url.path).group(1), self._body())
                self._reply(status, row)
            elif method == "POST" and LIFECYCLE_PATH.match(url.path):
                node, action = LIFECYCLE_PATH.match(url.path).groups()
                self._reply(200, api.lifecycle(node, action, self._body()))
            elif method == "DELETE" and NODE_PATH.match(url.path):
                self._reply(200, api.delete(NODE_PATH.match(url.path).group(1)))
            elif method == "GET" and url.path == "/api/alarms":
                self._reply(200, api.alarms())
            elif method == "GET" and url.path == "/api/quarantine":
                self._reply(200, api.listing("quarantine", query, "reason"))
            elif method == "GET" and url.path == "/api/deadletters":
                self._reply(200, api.listing("deadletters", query, "sink"))
            elif method == "GET" and url.path == "/api/ota":
                self._reply(200, api.ota())
            elif method == "POST" and REPLAY_PATH.match(url.path):
                self._reply(200, api.replay(int(REPLAY_PATH.match(url.path).group(1)),
                                            self._body()))
            elif method == "POST" and url.path == "/api/send":
                self._reply(200, api.send(self._body()))
            else:
                raise ApiError(404 if method == "GET" else 405,
                               f"no {method} {url.path} (see docs/gateway.md)")
        except ApiError as exc:
            self._reply(exc.status, {"error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - the API must answer, never die
            log.exception("api_error", extra=kv(method=method, path=url.path))
            self._reply(500, {"error": f"internal error: {type(exc).__name__}"})

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")
