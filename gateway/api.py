"""The gateway's local HTTP API and Prometheus metrics: FastAPI on uvicorn, in a thread.

    GET  /healthz                 200 while the process runs
    GET  /readyz                  200 when subscribed and the outbox takes messages, else 503
    GET  /metrics                 Prometheus text format (prometheus_client, process metrics)
    GET  /openapi.json            the OpenAPI description (a copy: docs/openapi.json)
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
    GET  /api/ota                 the last app-update rollout's progress
    GET  /api/nodes/{id}/series   time series from the history (?channels=&from=&to=&step=)
    GET  /api/nodes/{id}/consumption  a meter's use per day from its totals (?channel=&from=&to=)

`ApiServer` is what the routes do (this module); the routes, request models, token check and
error replies are the ASGI application in `gateway.webapp`. The server runs on its own thread
with its own event loop; the route functions are plain functions that uvicorn runs in its
thread pool, each with the API's own outbox connection under `lock`.

It listens on `[api] host` (default 127.0.0.1). Every request but `GET /healthz` and the
OpenAPI description needs `Authorization: Bearer TOKEN` (401 without it): `[api] token`, else
the token in `[api] token_file` (default `api-token` beside the outbox), which the gateway
creates with a random token (mode 0600) the first time. Bodies are JSON; errors are
`{"error": "..."}` naming the field.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.downlink import command_message, config_message
from gateway.logfmt import kv
from gateway.outbox import Outbox
from gateway.registry import NODE_COLUMNS, node_row
from gateway.wire import node_id_problem

if TYPE_CHECKING:
    from gateway.daemon import Gateway

log = logging.getLogger("meterlink.gateway.api")

STOP_S = 5.0  # what stop() waits for requests under way
MAX_POINTS = 10000  # per series and request
MAX_POINTS_AUTO = 500  # when the request gives no step


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
    """Runs the API for one Gateway on its own thread and outbox connection. The socket is
    bound here (an OSError when the address is taken), served from `start()`."""

    def __init__(self, gateway: "Gateway") -> None:
        import uvicorn

        from gateway.webapp import make_app

        self.gateway = gateway
        cfg = gateway.config.api
        self.token = load_token(gateway.config).encode()
        self.box = Outbox(gateway.config.outbox.path)
        self.lock = threading.Lock()
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((cfg.host, cfg.port))
            self.sock.listen(128)
        except OSError:
            self.sock.close()
            self.box.close()
            raise
        self.history = None
        for sink in gateway.config.sinks:
            if sink.name == "history":
                from gateway.sinks.history import History
                self.history = History(sink.options["path"],
                                       raw_days=sink.options["raw_days"])
        from gateway.metrics import make_registry
        self.metrics = make_registry(gateway, self.box, self.lock)
        self.app = make_app(self)
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="off",
            timeout_graceful_shutdown=int(STOP_S)))
        self.thread: threading.Thread | None = None

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
        self.box.close()
        if self.history is not None:
            self.history.close()

    # ---- handlers ---------------------------------------------------------------------------

    def nodes(self, *, include_retired: bool = False) -> list[dict[str, Any]]:
        retired = "" if include_retired else " AND retired_at IS NULL"
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

    def _history(self, node: str):
        if self.history is None:
            raise ApiError(404, "this gateway keeps no history: add [sinks.history] to its "
                                "config")
        with self.lock:
            known = self.box.db.execute("SELECT 1 FROM nodes WHERE node=?", (node,)).fetchone()
        if not known:
            raise ApiError(404, f"node {node!r} is not known")
        return self.history

    def series(self, node: str, channels: list[str] | None, t0: float | None,
               t1: float | None, step: int | None) -> dict[str, Any]:
        """Time series of a node's channels (the history sink's), one mean per step."""
        history = self._history(node)
        t1 = time.time() if t1 is None else t1
        t0 = t1 - 86400 if t0 is None else t0
        if t0 >= t1:
            raise ApiError(400, f"from: must be before to (got from {t0:g}, to {t1:g})")
        if step is None:
            step = max(60, int(-(-(t1 - t0) // MAX_POINTS_AUTO)))
        if (t1 - t0) / step > MAX_POINTS:
            raise ApiError(400, f"step: {step} s gives more than {MAX_POINTS} points over "
                                f"{t1 - t0:g} s; at least {int(-(-(t1 - t0) // MAX_POINTS))}")
        names = channels or history.channels(node)
        return {"node": node, "from": t0, "to": t1, "step": step,
                "series": history.series(node, names, t0, t1, step)}

    def consumption(self, node: str, channel: str, t0: float | None,
                    t1: float | None) -> dict[str, Any]:
        """A meter's consumption per day, from differences of its totals."""
        from gateway.sinks.history import TOTALS

        if channel.split(":")[0] not in TOTALS:
            raise ApiError(400, f"channel: {channel!r} is no meter total "
                                f"({', '.join(TOTALS)})")
        history = self._history(node)
        t1 = time.time() if t1 is None else t1
        t0 = t1 - 30 * 86400 if t0 is None else t0
        return {"node": node, "channel": channel, "period": "day",
                "days": history.consumption(node, channel, t0, t1)}

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

    def register(self, node: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """`body` validated by `webapp.Registration`."""
        problem = node_id_problem(node)
        if problem:
            raise ApiError(400, f"node_id: {problem[1]}")
        board, sensors, interval = body["board"], body["sensors"], body["interval_s"]
        group = body.get("group")
        where = body.get("location") or {}
        with self.lock, self.box.transaction():
            existed = self.box.db.execute("SELECT registered FROM nodes WHERE node=?",
                                          (node,)).fetchone()
            self.box.db.execute(
                "INSERT INTO nodes(node, registered, board, sensors, grp, interval_s, lat, lon, "
                "district, public) VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(node) DO "
                "UPDATE SET registered=1, board=excluded.board, sensors=excluded.sensors, "
                "grp=excluded.grp, interval_s=excluded.interval_s, lat=excluded.lat, "
                "lon=excluded.lon, district=excluded.district, public=excluded.public",
                (node, board, json.dumps(sensors), group, interval, where.get("lat"),
                 where.get("lon"), body.get("district"), int(bool(body.get("public")))))
        log.info("node_registered", extra=kv(node=node, board=board, group=group,
                                             interval_s=interval))
        return (200 if existed and existed[0] else 201), self.node(node)

    def lifecycle(self, node: str, action: str, note: str) -> dict[str, Any]:
        """retire (with a note) or reinstate, on the ingest thread."""
        problem = node_id_problem(node)
        if problem:
            raise ApiError(400, f"node_id: {problem[1]}")
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

    def listing(self, table: str, limit: int, filter_key: str,
                value: str | None) -> list[dict]:
        where, args = ("", []) if value is None else (f"WHERE {filter_key}=?", [value])
        with self.lock:
            rows = self.box.query(f"SELECT * FROM {table} {where} ORDER BY id DESC LIMIT ?",
                                  (*args, limit))
        for r in rows:
            if isinstance(r.get("payload"), bytes):
                r["payload"] = r["payload"].hex()
            if table == "deadletters":
                r["body"] = json.loads(r["body"])
        return rows

    def replay(self, letter: int, again: bool) -> dict[str, Any]:
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

    def send(self, body: dict[str, Any]) -> dict[str, Any]:
        """`body` validated by `webapp.Downlink` (fields as given)."""
        targets = resolve_targets(self.box, self.lock, body)
        timeout = body.get("timeout_s")
        if timeout is None:
            timeout = self.gateway.config.gateway.ack_timeout_s
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
