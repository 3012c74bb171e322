"""Fuzz targets for the gateway's decoders (CPython), one function per decoder.

    setup(workdir)            once per process: where the targets keep their outbox and files
    TARGETS[name](data)       one input; returns None, or raises on a contract violation

tests/fuzz/run.py hands them to atheris; tests/test_fuzz_corpus.py replays the kept corpus
through them. Each docstring is the target's contract: the exceptions named there are the
decoder's documented rejections and are caught here; anything else escapes and is a finding,
as are the output checks (`check`) and a 5xx from the API other than the documented ones.
What the gateway does with what a decoder accepted is part of the target where it is cheap
(the SenML a reading resolves to, the registry a status updates, the downlinks table an ack
updates), since an input only the next step chokes on is the same bug to an operator.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import re
import socket
import sqlite3
import struct
import time
from pathlib import Path
from typing import Any, Callable

import cbor2
import h11

from gateway.channels import KEY_BASE, MAX_INSTANCE, default_table
from gateway.config import Config, ConfigError, load_config, parse_config
from gateway.daemon import Gateway
from gateway.downlink import Pending
from gateway.errors import TopicError, WireError
from gateway.ingest import Message, _Counts
from gateway.sinks import make_sink
from gateway.wire import (MAX_RECORDS, MAX_SEQ, REASONS, VALUE_LIMIT, decode_reading,
                          node_id_problem, parse_topic, reading_time_error, resolve)

T0 = 1763712000
TABLE = default_table()
KEYS = frozenset(k for k in range(1, KEY_BASE * (MAX_INSTANCE + 1))
                 if TABLE.key_problem(k) is None)  # the valid keys, from the table's own rule
# reasons an ingest rejection may carry besides the wire format's (gateway/ingest.py)
INGEST_REASONS = set(REASONS) | {"topic", "topic_length", "unregistered", "retired"}
API_TOKEN = "fuzz-token"

_work: Path | None = None
_state: dict[str, Any] = {}


def check(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(what)


class HangError(Exception):
    """A complete request the server does not answer in time."""


# ---- reading: decode_reading, resolve, reading_time_error -----------------------------------

def reading(data: bytes) -> None:
    """Contract: decode_reading raises only WireError, with a reason of REASONS and an offset
    inside the payload; an accepted reading is ints throughout
    (seq 0..2^32-1, values |v| < 2^53, 1..64 non-empty records), resolves to SenML records
    with a str name, an int time and an int or finite float value that JSON takes, and
    reading_time_error returns None or a WireError "time"."""
    try:
        r = decode_reading(data, TABLE)
    except WireError as exc:
        check(exc.reason in REASONS, f"unknown reason {exc.reason!r}")
        check(type(exc.offset) is int and 0 <= exc.offset <= len(data),
              f"offset {exc.offset!r} outside the {len(data)}-byte payload")
        str(exc)
        return
    check(type(r.seq) is int and 0 <= r.seq <= MAX_SEQ, f"seq {r.seq!r}")
    check(type(r.time) is int, f"time {r.time!r}")
    check(1 <= len(r.records) <= MAX_RECORDS, f"{len(r.records)} records")
    elapsed = 0
    for i, rec in enumerate(r.records):
        check(r.seq + i <= MAX_SEQ, f"record {i}: seq {r.seq + i}")
        check(type(rec.elapsed) is int and rec.elapsed >= elapsed, f"record {i}: {rec!r}")
        elapsed = rec.elapsed
        check(bool(rec.values), f"record {i} has no values")
        for k, v in rec.values.items():
            check(k in KEYS, f"record {i}: key {k!r} not in the table")
            check(type(v) is int and -VALUE_LIMIT < v < VALUE_LIMIT, f"record {i}: value {v!r}")
    senml = resolve("fz-01", r, TABLE, received_at=T0)
    for item in senml:
        check(isinstance(item["n"], str) and type(item["t"]) is int, f"SenML {item!r}")
        v = item["v"]
        check(type(v) is int or (type(v) is float and math.isfinite(v)), f"SenML {item!r}")
        check(isinstance(item.get("u", ""), str), f"SenML {item!r}")
    json.dumps(senml, allow_nan=False)
    problem = reading_time_error(data, r, received_at=T0)
    check(problem is None or (isinstance(problem, WireError) and problem.reason == "time"),
          f"time check returned {problem!r}")
    if problem is not None:
        str(problem)


# ---- topic: parse_topic ----------------------------------------------------------------------

def topic(data: bytes) -> None:
    """Input: the topic's UTF-8 bytes (an MQTT topic is UTF-8; others never reach the gateway).
    Contract: parse_topic raises only TopicError, its offset inside the topic; what it accepts
    is `m/{node_id}/{kind}` with a node id node_id_problem passes and one letter a-z."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    try:
        node, kind = parse_topic(text, "m")
    except TopicError as exc:
        check(type(exc.offset) is int and 0 <= exc.offset <= len(text),
              f"offset {exc.offset} outside {text!r}")
        str(exc)
        return
    check(node_id_problem(node) is None, f"accepted node id {node!r}")
    check(len(kind) == 1 and "a" <= kind <= "z", f"accepted kind {kind!r}")
    check(text == f"m/{node}/{kind}", f"{text!r} -> {(node, kind)!r}")


# ---- status and ack: the ingest path of `s` and `a` messages ---------------------------------

def _gateway() -> Gateway:
    """A gateway with its outbox open (no threads, no network), node `fz-01` known with a
    status and a downlink waiting for its ack."""
    gw = _state.get("gateway")
    if gw is not None:
        return gw
    config = parse_config({"sinks": {"file": {}}, "api": {"enabled": False},
                           "outbox": {"path": "ingest.db"}}, base_dir=_work)
    gw = Gateway(config)
    gw.open_storage()
    gw.box.db.execute("PRAGMA synchronous=OFF")  # scratch outbox: no fsync per input
    status = cbor2.dumps({"on": True, "fw": "0.3.0", "q": 3, "qd": 5, "bat": 3600, "cv": 2})
    gw.ingestor.handle_batch([Message("m/fz-01/s", status, received_at=T0),
                              Message("m/fz-01/r", cbor2.dumps([1, 7, T0, {1: 2150}]),
                                      received_at=T0)])
    with gw.box.transaction():
        gw.box.db.execute("INSERT INTO downlinks(node, kind, request_id, body, sent_at, "
                          "deadline) VALUES ('fz-01', 'read', 'gw-00000001', '', ?, ?)",
                          (T0, T0 + 60))
    _state["gateway"] = gw
    return gw


def _ingest(topic_: str, data: bytes) -> tuple[str, list[str]]:
    """One message through Ingestor._handle in a transaction that is rolled back (as the
    careful rerun of ingest.py would, minus the catch-all that makes a bug "internal")."""
    gw = _gateway()
    ing, box = gw.ingestor, gw.box
    gw._pending[("fz-01", "gw-00000001")] = Pending("fz-01", "gw-00000001", "read", T0)
    counts = _Counts()
    ing.stats = ing.registry.stats = counts
    acks: list[tuple[str, dict]] = []
    box._begin()
    try:
        outcome = ing._handle(Message(topic_, data, received_at=T0 + 100), acks)
        ing.registry.flush()
    finally:
        box._messages.clear()
        box.db.execute("ROLLBACK")
        ing.registry.forget()
        ing.stats = ing.registry.stats = gw.stats
    for node, ack in acks:
        ing.on_ack(node, ack)
    for reason in counts.reasons:
        check(reason in INGEST_REASONS, f"rejected with unknown reason {reason!r}")
    return outcome, counts.reasons


def status(data: bytes) -> None:
    """Input: the payload of `m/fz-01/s`. Contract: ingest takes it as a status (a CBOR map with
    text keys and a boolean `on`, stored in the registry) or rejects it with a RejectedInput
    (quarantined with a reason); nothing else escapes Ingestor._handle."""
    outcome, _ = _ingest("m/fz-01/s", data)
    check(outcome in ("status", "rejected"), f"outcome {outcome!r}")


def ack(data: bytes) -> None:
    """Input: the payload of `m/fz-01/a`. Contract: as `status`, for an acknowledgement (a map
    with a boolean `ok`, recorded in `downlinks` and handed to the waiting request)."""
    outcome, _ = _ingest("m/fz-01/a", data)
    check(outcome in ("ack", "rejected"), f"outcome {outcome!r}")


# ---- gateway_config: a gateway.toml -> load_config ------------------------------------------

def gateway_config(data: bytes) -> None:
    """Input: the bytes of a gateway.toml. Contract: load_config raises only ConfigError (which
    names the file); what it accepts is a Config whose values have their schema's types."""
    path = _work / "gateway.toml"
    path.write_bytes(data)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        check(str(exc).startswith(str(path)), f"ConfigError without the file name: {exc}")
        return
    check(isinstance(cfg, Config) and cfg.sinks, f"load_config returned {cfg!r}")
    check(type(cfg.mqtt.port) is int and isinstance(cfg.mqtt.prefix, str), repr(cfg.mqtt))
    check(type(cfg.ingest.time_min) is int and type(cfg.ingest.max_payload_bytes) is int,
          repr(cfg.ingest))
    for sink in cfg.sinks:
        check(isinstance(sink.batch_max_age_s, float) and sink.batch_max_records >= 1,
              repr(sink))
    cfg.mqtt.subscriptions  # noqa: B018 - a property: computed from the values
    repr(cfg)


# ---- api: one request's bytes -> the API server, over loopback -----------------------------

class _Capture(logging.Handler):
    """Keeps the last exception logged with its traceback (the API's 500, uvicorn's "Exception
    in ASGI application"), from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.exc_info = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.exc_info = record.exc_info


_CAPTURE = _Capture()


class _FakeMqtt:
    """The daemon's MQTT client: every downlink is answered at once by an ack."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def publish(self, topic_: str, payload: bytes, qos: int = 0, retain: bool = False):
        rid = cbor2.loads(payload)["id"]
        self.gw._on_node_ack(topic_.split("/")[1], {"ok": True, "id": rid})


def _call(port: int, method: str, path: str, body: Any = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data,
                     headers={"Authorization": f"Bearer {API_TOKEN}",
                              "Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _api() -> tuple[Any, sqlite3.Connection, _Capture]:
    """The gateway's API server, started on a loopback port once per process, over a
    registry with readings (and their history), a status, a group, a retired node,
    quarantine and a dead letter (made through the API, the ingest path and the sinks)."""
    got = _state.get("api")
    if got is not None:
        return got
    capture = _CAPTURE
    config = parse_config({"sinks": {"file": {}, "history": {}},
                           "api": {"port": 0, "token": API_TOKEN},
                           "outbox": {"path": "api.db"}}, base_dir=_work)
    gw = Gateway(config)
    gw.open_storage()
    gw.box.db.execute("PRAGMA synchronous=OFF")
    gw.client = _FakeMqtt(gw)
    now = int(time.time())
    recent = now - 2 * 86400  # the history keeps raw values for days back from now
    gw.ingestor.handle_batch([
        Message("m/n1/s", cbor2.dumps({"on": True, "q": 0, "qd": 0, "bat": 3100}),
                received_at=T0),
        Message("m/n1/r", cbor2.dumps([1, 1, T0, {1: 2150, 7: 3100}]), received_at=T0),
        Message("m/n2/r", cbor2.dumps([1, 1, T0, {4: 1234}]), received_at=T0),
        Message("m/n2/r", cbor2.dumps([1, 5, T0 + 60, {4: 1240}]), received_at=T0 + 60),
        Message("m/n3/r", cbor2.dumps([1, 1, T0, {1: 1}]), received_at=T0),
        Message("m/n2/r", cbor2.dumps([1, 6, recent, {4: 1300, 1: 2100}, {0: 3600, 4: 1420},
                                       {0: 86400, 4: 2000, 1: 1900}]), received_at=now),
        Message("m/n1/r", b"\x00", received_at=T0),
        Message("m/n1/x", b"", received_at=T0)])
    batch = gw.box.claim_batch("file", max_records=10, max_bytes=1 << 20)
    gw.box.dead_letter(batch, 400, "refused")
    history = make_sink(gw.config.sinks[1])  # what its worker would deliver: the series
    history.open()
    while (batch := gw.box.claim_batch("history", max_records=100, max_bytes=1 << 20)):
        history.deliver(batch)
        gw.box.confirm(batch)
    history.close()
    from gateway.webapp import ApiServer

    server = ApiServer(gw)
    gw.api = server
    port = server.start()
    deadline = time.monotonic() + 20
    while True:
        try:
            _call(port, "GET", "/healthz")
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    for method, path, body in (
            ("PUT", "/api/nodes/n4", {"board": "esp32-devkit", "sensors": ["bme280"],
                                      "interval_s": 60, "group": "g1"}),
            ("PUT", "/api/nodes/n1", {"board": "esp32-devkit", "sensors": [], "interval_s": 60,
                                      "group": "g1"}),
            ("POST", "/api/nodes/n3/retire", {"note": "replaced"})):
        status_ = _call(port, method, path, body)
        check(status_ < 300, f"setting up the registry: {method} {path}: {status_}")
    snap = sqlite3.connect(":memory:")
    gw.box.db.backup(snap)
    _state["api"] = (server, snap, capture)
    return server, snap, capture


def _first_request(data: bytes) -> tuple[bytes, bool, bytes]:
    """The bytes of the first request in `data` by h11 (uvicorn's parser here), whether it is
    complete, and its method; (data, False, b"GET") when h11 refuses it or it is cut short
    (the server answers 400 and closes, or waits for the rest)."""
    if not data:
        return data, False, b"GET"
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=65536)
    conn.receive_data(data)
    method = b"GET"
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED or \
                    type(event) is h11.ConnectionClosed:
                return data, False, method
            if type(event) is h11.Request:
                method = event.method
            if type(event) is h11.EndOfMessage:
                return data[:len(data) - len(conn.trailing_data[0])], True, method
    except h11.RemoteProtocolError:
        return data, False, b"GET"


def _responses(sock: socket.socket, want_one: bool, method: bytes) -> list[int]:
    """Status codes the server sends, by h11 as the client of a `method` request (a HEAD's
    answer has no body): until the first final response is complete, or the server closes.
    HangError when a complete request got no answer."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "fuzz")]))
    client.send(h11.EndOfMessage())
    codes: list[int] = []
    deadline = time.monotonic() + API_WAIT_S
    while True:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError:
            return codes  # not HTTP/1.1 framing (a 400 on a request line h11 rejects)
        if event is h11.NEED_DATA:
            left = deadline - time.monotonic()
            if left <= 0:
                if want_one:
                    raise HangError(f"no answer within {API_WAIT_S} s to a complete request")
                return codes
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionError:
                chunk = b""
            client.receive_data(chunk)
            continue
        if type(event) in (h11.InformationalResponse, h11.Response):
            codes.append(event.status_code)
        if type(event) is h11.EndOfMessage or event is h11.PAUSED or \
                type(event) is h11.ConnectionClosed:
            return codes


def _settle(server: Any) -> None:
    """Waits until the server has let go of the connection and finished every request on it
    (uvicorn's ServerState), so that the next input starts from a quiet server and the
    registry it restores is not in use. HangError when a request outlives its client by
    API_WAIT_S."""
    state = getattr(getattr(server, "server", None), "server_state", None)
    if state is None:
        return
    deadline = time.monotonic() + API_WAIT_S
    while state.tasks or state.connections:
        if time.monotonic() > deadline:
            raise HangError(f"a request still runs {API_WAIT_S} s after its client left")
        time.sleep(0.0002)


API_WAIT_S = 5.0
# 5xx the API may send: 503 from /readyz while not subscribed (docs/gateway.md)
_READYZ = re.compile(rb"^[A-Za-z]+ /readyz[ ?]")


def api(data: bytes) -> None:
    """Input: the bytes a client sends to the API (its first request is what counts), with the
    bearer token `fuzz-token`, to the real server (uvicorn, FastAPI) on a loopback port.
    Contract: a complete request is answered within 5 s; never a 5xx but the documented
    503 of /readyz (not subscribed), in particular never a 500 (an escaped exception, which
    the server logs and this re-raises with its traceback)."""
    server, snap, capture = _api()
    gw = server.gateway
    snap.backup(gw.box.db)  # every input starts from the same registry
    gw.ingestor.registry.forget()
    gw._pending.clear()
    capture.exc_info = None
    request, complete, method = _first_request(data)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=API_WAIT_S)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # no TIME_WAIT
    try:
        sock.sendall(request)
        if not complete:
            sock.shutdown(socket.SHUT_WR)  # what the client has sent is all it sends
        codes = _responses(sock, complete, method)
    finally:
        sock.close()
        _settle(server)
    exc_info, capture.exc_info = capture.exc_info, None
    if exc_info is not None:
        raise exc_info[1].with_traceback(exc_info[2])
    for code in codes:
        if code >= 500:
            check(code == 503 and _READYZ.match(request) is not None,
                  f"status {code} for {request[:200]!r}")


# ---- registry ----------------------------------------------------------------------------------

TARGETS: dict[str, Callable[[bytes], None]] = {
    "reading": reading,
    "topic": topic,
    "status": status,
    "ack": ack,
    "gateway_config": gateway_config,
    "api": api,
}


def setup(workdir: str | Path, *, quiet: bool = True) -> None:
    """Once per process: the folder the targets keep their outboxes and files in. `quiet`
    (the fuzzer): only ERROR records, kept by the capture (a rejection is a warning, and the
    fuzzer makes millions); otherwise (the replay test) the capture is added beside the
    handlers there are and `teardown()` takes it away again."""
    global _work
    _work = Path(workdir)
    _work.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    if quiet:
        root.handlers[:] = [_CAPTURE]
        root.setLevel(logging.ERROR)
    elif _CAPTURE not in root.handlers:
        root.addHandler(_CAPTURE)


def teardown() -> None:
    """Stops the API server and closes the outboxes setup() and the targets opened."""
    got = _state.pop("api", None)
    if got is not None:
        server, snap, _ = got
        server.stop()
        server.gateway.box.close()
        snap.close()
    gw = _state.pop("gateway", None)
    if gw is not None:
        gw.box.close()
    logging.getLogger().removeHandler(_CAPTURE)
