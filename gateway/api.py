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
    GET  /api/alarms/log          the alarms' history (?state=&node=&limit=, newest first)
    POST /api/alarms/{id}/ack     acknowledge an alarm of the log: {"note"?}
    GET  /api/quarantine          rejected messages (?reason=&limit=, newest first)
    GET  /api/deadletters         batches sinks rejected (?sink=&limit=, newest first)
    POST /api/deadletters/{id}/replay  queue a dead letter again for its sink: {"again"?}
    POST /api/send                downlink: {"node"|"nodes"|"group", "config"+"version" |
                                  "cmd"+"args", "timeout_s"?, "wait"?}
    GET  /api/downlinks           downlinks sent and their answers (?node=&limit=, newest first)
    GET  /api/ota                 the last app-update rollout's progress
    GET  /api/nodes/{id}/series   time series from the history (?channels=&from=&to=&step=)
    GET  /api/nodes/{id}/consumption  a meter's use per day from its totals (?channel=&from=&to=)
    GET  /api/nodes/{id}/events   its status history: state changes, reboots, firmware (?limit=)

`Api` is what the routes do (this module); the routes, request models, token check and
error replies are the ASGI application in `gateway.webapp`, whose `ApiServer` serves it with
uvicorn on its own thread with its own event loop. The route functions are plain functions
that uvicorn runs in its thread pool, each with the API's own outbox connection under `lock`;
every read and write goes through the outbox's methods (`box.nodes`, `box.alarms`, ...).

The layers import downwards only: the daemon starts `webapp.ApiServer`, which builds an `Api`
over the running gateway, and the dashboard's pages sit beside the routes and call `Api` the
same way. The gateway is seen here through `GatewayControl`, the few things the API asks of
it, not by importing the daemon, which starts the API: each would need the other (no import
cycles in gateway/, tests/test_gw_imports.py).

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
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from gateway.config import Config
from gateway.errors import ConfigError
from gateway.downlink import command_message, config_message
from gateway.logfmt import kv
from gateway.outbox import Outbox
from gateway.registry import Registry, node_row
from gateway.stats import Stats
from gateway.store.alarms import LOG_STATES
from gateway.wire import node_id_problem

log = logging.getLogger("meterlink.gateway.api")

MAX_POINTS = 10000  # per series and request
MAX_POINTS_AUTO = 500  # when the request gives no step
RECENT_S = 7 * 86400  # the alarm log's `recent`
# GET /api/alarms/log?state=: which rows of the alarm log (`open`: not cleared, `unacked`: not
# acknowledged, `attention`: either, `recent`: raised within RECENT_S, `all`)
ALARM_LOG_STATES = tuple(LOG_STATES)
NOTE_LIMIT = 500  # characters of an acknowledgement's note


class GatewayControl(Protocol):
    """What the API asks of the running gateway (`gateway.daemon.Gateway` is one).

    A protocol rather than an import of the daemon: the daemon starts the API, so the API
    knowing the daemon would make each need the other; this is the whole of the seam."""

    config: Config
    stats: Stats

    @property
    def ready(self) -> bool:
        """Subscribed, the outbox writable, ingest running (`GET /readyz`)."""
        ...

    def on_ingest_thread(self, fn: Callable[[Registry], Any], timeout: float = 10.0) -> Any:
        """`fn(registry)` in a transaction on the thread that owns the registry's cache."""
        ...

    def wake_sinks(self) -> None:
        """Items were queued outside ingest (a replayed dead letter)."""
        ...

    def reload_rules(self) -> list[str]:
        """Reads the config file's `[rules]` again and puts them in force (ConfigError)."""
        ...

    def send(self, box: Outbox, nodes: list[str], kind: str, build: Callable[[str], bytes], *,
             timeout: float, wait: bool = True, lock: Any = None) -> list[dict[str, Any]]:
        """Publishes a downlink to each node, recorded in `box`, and waits for the acks."""
        ...


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


class Api:
    """What the API does for one gateway, on the API's own outbox connection (`box`, used
    under `lock`: uvicorn runs the routes in a thread pool)."""

    def __init__(self, gateway: GatewayControl) -> None:
        self.gateway = gateway
        self.token = load_token(gateway.config).encode()
        self.box = Outbox(gateway.config.outbox.path)
        self.lock = threading.Lock()
        self.history = None
        for sink in gateway.config.sinks:
            if sink.name == "history":
                from gateway.sinks.history import History
                self.history = History(sink.options["path"],
                                       raw_days=sink.options["raw_days"])
        from gateway.metrics import make_registry
        self.metrics = make_registry(gateway, self.box, self.lock)

    def __repr__(self) -> str:
        return f"Api({self.box!r})"

    def close(self) -> None:
        self.box.close()
        if self.history is not None:
            self.history.close()

    # ---- handlers ---------------------------------------------------------------------------

    def nodes(self, *, include_retired: bool = False, limit: int | None = None,
              after: str | None = None, group: str | None = None, district: str | None = None,
              state: str | None = None) -> list[dict[str, Any]]:
        """The node rows by id: all, or a page of `limit` after node id `after`, of one
        group, district or state."""
        with self.lock:
            rows = self.box.nodes.rows(include_retired=include_retired, limit=limit,
                                       after=after, group=group, district=district,
                                       state=state)
            missing = self.box.missing()
            alarms = self.box.alarms.active_by_node()
        return [node_row(r, missing=missing.get(r["node"], 0), alarms=alarms.get(r["node"]))
                for r in rows]

    def public_nodes(self) -> list[dict[str, Any]]:
        """The nodes the public page may show (registered public, not retired), with only
        what it needs: district, registered sensors, latest values (gateway/dashboard/public.py
        picks the channels it shows from them)."""
        with self.lock:
            rows = self.box.nodes.public_rows()
        return [{"node": r["node"], "district": r["district"],
                 "sensors": json.loads(r["sensors"]) if r["sensors"] else [],
                 "last_values": json.loads(r["last_values"]) if r["last_values"] else {}}
                for r in rows]

    def node(self, node: str) -> dict[str, Any]:
        with self.lock:
            row = self.box.nodes.row(node)
            if row is None:
                raise ApiError(404, f"node {node!r} is not known")
            gaps = [(a, b) for _, a, b in self.box.gaps(node)]
            alarms = self.box.alarms.active_by_node().get(node)
        return node_row(row, missing=sum(b - a + 1 for a, b in gaps), gaps=gaps,
                        alarms=alarms)

    def _history(self, node: str):
        if self.history is None:
            raise ApiError(404, "this gateway keeps no history: add [sinks.history] to its "
                                "config")
        with self.lock:
            known = self.box.nodes.exists(node)
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

    def events(self, node: str, limit: int) -> list[dict[str, Any]]:
        """The node's status history (the registry's `node_log`), newest first."""
        with self.lock:
            if not self.box.nodes.exists(node):
                raise ApiError(404, f"node {node!r} is not known")
            return self.box.nodes.events(node, limit)

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
            before = self.box.nodes.register(
                node, board=board, sensors=sensors, interval_s=interval, group=group,
                lat=where.get("lat"), lon=where.get("lon"), district=body.get("district"),
                public=bool(body.get("public")))
        log.info("node_registered", extra=kv(node=node, board=board, group=group,
                                             interval_s=interval))
        return (200 if before else 201), self.node(node)

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

    def quarantined(self, limit: int, *, reason: str | None = None,
                    row_id: int | None = None, before: int | None = None) -> list[dict]:
        """Quarantine rows (payload in hex), newest first: of one `reason`, or the row
        `row_id`; `before`: only ids below it (the next page)."""
        with self.lock:
            rows = self.box.quarantined(limit, reason=reason, row_id=row_id, before=before)
        for r in rows:
            if isinstance(r.get("payload"), bytes):
                r["payload"] = r["payload"].hex()
        return rows

    def dead_letters(self, limit: int, *, sink: str | None = None,
                     before: int | None = None) -> list[dict]:
        """Dead letters (`body`: the items), newest first: of one `sink` or all; `before`:
        only ids below it (the next page)."""
        with self.lock:
            rows = self.box.dead_letters(limit, sink=sink, before=before)
        for r in rows:
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
            return self.box.alarms.active()

    def rules(self) -> list[dict[str, Any]]:
        """The early-warning rules in force, each with the nodes it is raised on."""
        with self.lock:
            active = self.box.alarms.active()
        out = []
        for rule in self.gateway.config.rules:
            scope: Any = ({"nodes": list(rule.nodes)} if rule.nodes else
                          {"group": rule.group} if rule.group else
                          {"district": rule.district} if rule.district else "all")
            if rule.kind == "balance":
                scope = {"meter": rule.meter, "district": rule.district}
            out.append({"name": rule.name, "kind": rule.kind, "channel": rule.channel,
                        "alarm": rule.alarm, "description": rule.description, "scope": scope,
                        "raised": [{"node": a["node"], "raised_at": a["raised_at"],
                                    "detail": a["detail"]}
                                   for a in active if a["alarm"] == rule.alarm]})
        return out

    def reload_rules(self) -> dict[str, Any]:
        try:
            changes = self.gateway.reload_rules()
        except ConfigError as exc:
            raise ApiError(409, str(exc)) from exc
        return {"rules": len(self.gateway.config.rules), "changes": changes}

    def alarm_log(self, state: str = "all", node: str | None = None,
                  limit: int = 100) -> list[dict[str, Any]]:
        """The alarms' history (`alarm_log`: the registry opens a row when an alarm is raised
        and closes it when it clears), newest first; `state` one of `ALARM_LOG_STATES`."""
        with self.lock:
            rows = self.box.alarms.log(state, node, limit=limit, since=time.time() - RECENT_S)
        return [_alarm_row(r) for r in rows]

    def acknowledge(self, alarm_id: int, note: str, by: str) -> dict[str, Any]:
        """An operator saw alarm `alarm_id` (a row of `alarm_log`, active or cleared): who,
        when and their note (empty: none). 404 when there is no such row, 409 naming who
        acknowledged it when that was done already (the first acknowledgement stands)."""
        note = note.strip()
        now = time.time()
        with self.lock, self.box.transaction():
            done, row = self.box.alarms.acknowledge(alarm_id, now, by, note or None)
        if row is None:
            raise ApiError(404, f"no alarm {alarm_id} in the alarm log")
        if not done:
            at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row["acked_at"]))
            raise ApiError(409, f"alarm {alarm_id} ({row['node']} {row['alarm']}) was "
                                f"acknowledged already, by {row['acked_by']} at {at}")
        log.info("alarm_acknowledged", extra=kv(id=alarm_id, node=row["node"],
                                                alarm=row["alarm"], by=by))
        return _alarm_row(row)

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

    def downlinks(self, node: str | None, limit: int) -> list[dict[str, Any]]:
        """The downlinks sent through the API (table `downlinks`), newest first, each with its
        `result`: "waiting" (unanswered, its deadline ahead), "ok", "failed" (the node refused
        it; `ack.err` says why) or "timeout" (unanswered at its deadline; a late answer still
        counts). `request` is what was sent (without `id`), `ack` the node's answer (without
        `id` and `ok`: `result` says)."""
        with self.lock:
            rows = self.box.downlinks.rows(node, limit=limit)
        now = time.time()
        return [_downlink_row(r, now) for r in rows]


def _alarm_row(row: dict[str, Any]) -> dict[str, Any]:
    """An `alarm_log` row for the API: `active` while it is not cleared."""
    return {**row, "active": row["cleared_at"] is None}


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
            nodes = box.nodes.in_group(body["group"])
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


def _plain(obj: Any) -> Any:
    """A decoded control message as JSON can carry it: bytes as hex, other odd values as text."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).hex()
    if isinstance(obj, float) and obj - obj != 0:  # inf, nan: not JSON
        return repr(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


def _downlink_row(row: dict[str, Any], now: float) -> dict[str, Any]:
    """A `downlinks` row for the API. The body is the CBOR sent, as hex; the reply is the
    ingest's `repr()` of the acknowledgement, read back with `ast.literal_eval` (a value
    it cannot read, such as a CBOR tag, leaves the text as `{"text": ...}`)."""
    import ast

    import cbor2

    if row["acked_at"] is not None:
        result = "ok" if row["ok"] else "failed"
    else:
        result = "waiting" if now < row["deadline"] else "timeout"
    try:
        request = _plain(cbor2.loads(bytes.fromhex(row["body"])))
    except Exception:  # noqa: BLE001 - cbor2 raises several types; the row is ours anyway
        request = {"hex": row["body"]}
    ack = None
    if row["reply"] is not None:
        try:
            ack = _plain(ast.literal_eval(row["reply"]))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            ack = {"text": row["reply"]}
    if isinstance(request, dict):
        request.pop("id", None)
    if isinstance(ack, dict):
        ack.pop("id", None)
        ack.pop("ok", None)
    return {"id": row["id"], "node": row["node"], "kind": row["kind"],
            "request_id": row["request_id"], "sent_at": row["sent_at"],
            "deadline": row["deadline"], "acked_at": row["acked_at"], "result": result,
            "request": request if isinstance(request, dict) else {"value": request},
            "ack": ack if ack is None or isinstance(ack, dict) else {"value": ack}}
