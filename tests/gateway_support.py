"""The real gateway as a child process, for tests of the whole reading path, and the MQTT
clients and HTTP servers around it.

    gw = GatewayProcess(tmp_path / "gw", broker)   # writes its config, starts `meterlink gateway`
    gw.records()          # SenML records delivered to the file sink so far (dicts with node, seq)
    gw.events("gas")      # alarm events it wrote (events.jsonl), of one alarm
    gw.readings()         # {(node, seq), ...} of those records
    gw.wait_subscribed()  # before starting nodes on a fresh broker
    gw.kill(); gw.start() # SIGKILL and restart on the same state
    gw.stop()

    GatewayProcess(dir, broker, "gw-2", extra='[sinks.http]\nurl = "http://..."\n')
    gw.api("/api/nodes")  # GET the gateway's HTTP API (JSON); gw.api(path, method, body)

    with Upstream() as up:   # a real local HTTP server standing in for the city platform
        up.url, up.records() (deduplicated by Idempotency-Key), up.requests, up.mode = ...

    link = Link(broker)       # a node's network path to the broker (VirtualNode(broker=link)):
                              # link.down(), link.up(): the node's uplink fails, not the gateway's

    publish(broker, [(topic, payload), ...])   # as one MQTT client, QoS 1, all acknowledged
    sub = subscriber(broker, lambda topic, pack: got.append(pack))   # a platform on city/#
    sub.loop_stop()

Tests of node and gateway faults use this one class, so a change to the gateway's config or
sink layout is made here once.
"""

from __future__ import annotations

import gzip
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from host_tools.broker import free_port
from host_tools.process import stop

MELINK = str(Path(sys.executable).with_name("meterlink"))


def wait_for(predicate, timeout: float, what: str, on_fail=lambda: "", poll: float = 0.05):
    """Polls `predicate` until it returns something true (returned) or `timeout` seconds pass
    (AssertionError naming `what`, with `on_fail()` appended: logs, consoles)."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            extra = on_fail()
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f"\n{extra}" if extra else ""))
        time.sleep(poll)


def break_readings_of(monkeypatch, node: str, broken=lambda: True) -> None:
    """A bug on the ingest path: `Registry.reading` raises for `node` (while `broken()`)."""
    from gateway.registry import Registry

    real = Registry.reading

    def reading(self, name, *args, **kwargs):
        if name == node and broken():
            raise RuntimeError("injected")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(Registry, "reading", reading)


class Link:
    """The node's network path to the broker: a TCP relay on its own port. `down()` makes the
    broker unreachable for the node only (connections refused, open ones cut), `up()` restores
    it; the gateway stays connected to the broker throughout."""

    def __init__(self, broker):
        self.target = (broker.host, broker.port)
        # nodes behind the relay speak TLS to the broker itself, with its settings and files
        self.node_tls, self.node_files = broker.node_tls, broker.node_files
        self.port = free_port()
        self.host = "127.0.0.1"
        self._srv = None
        self._conns: list[socket.socket] = []
        self.swallow = False  # True: broker -> node bytes are dropped (PUBACKs never arrive)
        self.up()

    def up(self):
        if self._srv is None:
            srv = socket.socket()
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind((self.host, self.port))
            srv.listen(8)
            self._srv = srv
            threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def down(self):
        srv, self._srv = self._srv, None
        if srv is not None:
            try:
                srv.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it (Linux)
            except OSError:
                pass
            srv.close()
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self._conns.clear()

    def _accept(self, srv):
        while True:
            try:
                a, _ = srv.accept()
            except OSError:
                return
            try:
                b = socket.create_connection(self.target)
            except OSError:
                a.close()
                continue
            self._conns += [a, b]
            for x, y, down in ((a, b, False), (b, a, True)):
                threading.Thread(target=self._pipe, args=(x, y, down), daemon=True).start()

    def _pipe(self, src, dst, downstream):
        try:
            while data := src.recv(4096):
                if not (downstream and self.swallow):
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def publish(broker, messages: Iterable[tuple[str, bytes]], client_id: str = "test-publisher",
            timeout: float = 30.0) -> None:
    """Publishes each (topic, payload) at QoS 1, in order, as one client of `broker` (TLS when
    it speaks it); returns once the broker has acknowledged every one (AssertionError if not
    within `timeout` seconds each)."""
    pub = broker.secure(mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                    protocol=mqtt.MQTTv311))
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    try:
        infos = [pub.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout)
            assert info.is_published()
    finally:
        pub.disconnect()
        pub.loop_stop()


def subscriber(broker, on_message: Callable[[str, Any], None], topic: str = "city/#", *,
               client_id: str = "upstream-sub", clean_session: bool = True,
               username: str | None = None, password: str | None = None) -> mqtt.Client:
    """A platform's MQTT client on `broker` (TLS when it speaks it): subscribed to `topic` at
    QoS 1, its network loop running, `on_message(topic, payload)` called with each message's
    topic and JSON payload. It reconnects a second after the broker comes back (with
    `clean_session=False` the broker keeps its subscription and messages meanwhile). Stop it
    with `sub.loop_stop()`."""
    sub = broker.secure(mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                    clean_session=clean_session, protocol=mqtt.MQTTv311))
    if username is not None:
        sub.username_pw_set(username, password)
    sub.reconnect_delay_set(1, 1)
    sub.on_message = lambda client, userdata, msg: on_message(msg.topic, json.loads(msg.payload))
    sub.connect(broker.host, broker.port)
    sub.subscribe(topic, qos=1)
    sub.loop_start()
    return sub


class GatewayProcess:
    def __init__(self, workdir: Path, broker, client_id: str = "gw-test", start: bool = True,
                 extra: str = "", mqtt_extra: str = "", gateway_extra: str = ""):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sink = self.dir / "readings.jsonl"
        self.stats = self.dir / "stats.json"
        self.conf = self.dir / "gateway.toml"
        tls = broker.gateway_conf() if hasattr(broker, "gateway_conf") else ""
        self.conf.write_text(
            f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nclient_id = "{client_id}"\n'
            f'{tls}{mqtt_extra}'
            f'[sinks.file]\npath = "{self.sink}"\n[gateway]\nstats_file = "{self.stats}"\n'
            f'{gateway_extra}[api]\nport = 0\n{extra}')
        self.proc: subprocess.Popen | None = None
        if start:
            self.start()

    def start(self) -> None:
        log = open(self.dir / "gateway.log", "ab")
        self.proc = subprocess.Popen([MELINK, "gateway", "--config", str(self.conf)],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, 10)

    def wait_subscribed(self, timeout: float = 30.0) -> "GatewayProcess":
        """Waits until the gateway has subscribed. Start nodes after this: on a fresh broker
        the gateway's session does not exist before, and a reading published then has no
        subscriber (the broker acknowledges it to the node and drops it, as MQTT specifies)."""
        wait_for(lambda: "event=subscribed" in self.log(), timeout, "the gateway's subscription",
                 lambda: self.log()[-3000:])
        return self

    def log(self) -> str:
        p = self.dir / "gateway.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def counters(self) -> dict:
        try:
            return json.loads(self.stats.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def token(self) -> str:
        """The API's bearer token: the file the gateway made beside its outbox."""
        return (self.dir / "api-token").read_text().strip()

    @property
    def url(self) -> str:
        port = self.counters().get("api_port")
        if not port:
            raise AssertionError("the gateway's API is not up (no api_port in its stats)")
        return f"http://127.0.0.1:{port}"

    def api(self, path: str, method: str = "GET", body=None, timeout: float = 30.0,
            token: str | None = "default"):
        """(status, JSON or text) of one request to the gateway's HTTP API, with its bearer
        token (`token=None`: without one; a string: that one)."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        token = self.token if token == "default" else token
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as reply:
                status, raw, ctype = reply.status, reply.read(), reply.headers["Content-Type"]
        except urllib.error.HTTPError as exc:
            status, raw, ctype = exc.code, exc.read(), exc.headers["Content-Type"]
        return status, (json.loads(raw) if "json" in (ctype or "") else raw.decode())

    def records(self) -> list[dict]:
        return _jsonl(self.sink)

    def events(self, alarm: str | None = None, node: str | None = None) -> list[dict]:
        """The alarm events the file sink wrote (events.jsonl beside the readings), of the
        alarm `alarm` ("gas", "rule:burst-ps3") and node `node` when given."""
        return [e for e in _jsonl(self.dir / "events.jsonl")
                if (alarm is None or e["n"].endswith(f":alarm:{alarm}"))
                and (node is None or e["n"].startswith(f"{node}:"))]

    def readings(self) -> set[tuple[str, int]]:
        return {(r["node"], r["seq"]) for r in self.records()}

    def __enter__(self) -> "GatewayProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


SENML_RELATIVE_LIMIT = 2**28  # RFC 8428 4.5.3: a resolved time below it is relative to now
BASE_FIELDS = ("bver", "bn", "bt", "bu", "bv", "bs")


def _jsonl(path: Path) -> list[dict]:
    """The complete lines of a JSON-lines file a process is appending to."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                break  # a line being written right now
    return out


def resolve_senml(pack: list[dict]) -> list[dict]:
    """A SenML pack as its resolved records, as a platform resolves it (RFC 8428 section 4.6,
    written here from the RFC, not from the gateway): `bn` prefixes `n`, `bt` adds to `t`, a
    base unit fills a missing `u`, `bv`/`bs` add to `v`/`s`; base fields apply to the record
    that holds them and every record after it. A version other than 10 (features this
    platform does not know), a field ending in `_` (must-understand) or a resolved time below
    2^28 fails the test: that pack would be rejected or misread."""
    out = []
    base: dict = {"bn": "", "bt": 0, "bu": None, "bv": 0, "bs": 0}
    for record in pack:
        rec = dict(record)
        assert rec.pop("bver", 10) == 10, f"pack needs SenML features: {record}"
        assert not [k for k in rec if k.endswith("_")], f"must-understand field: {record}"
        for key in BASE_FIELDS[1:]:
            if key in rec:
                base[key] = rec.pop(key)
        rec["n"] = base["bn"] + rec.get("n", "")
        rec["t"] = base["bt"] + rec.get("t", 0)
        if base["bu"] is not None:
            rec.setdefault("u", base["bu"])
        if "v" in rec:
            rec["v"] += base["bv"]
        if "s" in rec:
            rec["s"] += base["bs"]
        assert rec["t"] >= SENML_RELATIVE_LIMIT, f"time read as relative: {record}"
        out.append(rec)
    return out


class Upstream:
    """A local HTTP server in place of the city platform, deduplicating by Idempotency-Key
    like a real platform does.

    `mode` decides each reply: "ok" (200), "503" (with Retry-After: `retry_after`),
    "timeout" (answers after `delay` seconds), or a callable (records) -> (status, body).
    `requests` lists (time, key, records, status) of every request received.
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.retry_after = 1
        self.delay = 2.0
        self.lock = threading.Lock()
        self.requests: list[tuple[float, str, list[dict], int]] = []
        self.by_key: dict[str, list[dict]] = {}
        self.headers: list[dict] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                records = resolve_senml(json.loads(raw))
                key = self.headers.get("Idempotency-Key", "")
                status, body, extra = upstream._decide(records)
                if status == 0:  # a timeout: answer too late
                    time.sleep(upstream.delay)
                    status, body = 200, "{}"
                with upstream.lock:
                    upstream.requests.append((time.time(), key, records, status))
                    upstream.headers.append(dict(self.headers))
                    if 200 <= status < 300:
                        upstream.by_key.setdefault(key, records)
                data = body.encode()
                try:
                    self.send_response(status)
                    for k, v in extra.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the gateway gave up waiting (timeout) or was killed

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/senml"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _decide(self, records: list[dict]) -> tuple[int, str, dict]:
        mode = self.mode
        if callable(mode):
            status, body = mode(records)
            return status, body, {}
        if mode == "503":
            return 503, "busy", {"Retry-After": str(self.retry_after)}
        if mode == "timeout":
            return 0, "", {}
        return 200, "{}", {}

    def records(self) -> list[dict]:
        """Every record accepted, once per Idempotency-Key (the platform's dedup)."""
        with self.lock:
            return [r for recs in self.by_key.values() for r in recs]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "Upstream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Recorder:
    """An HTTP server that records requests and answers with `reply` (status, body, headers),
    or with what `decide(path, headers, body)` returns. Bodies are kept as sent (gzip too)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict, bytes]] = []
        self.reply = (200, b"{}", {})
        self.decide = None  # or (path, headers, body) -> (status, body, headers)
        rec = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                rec.requests.append((self.path, dict(self.headers), body))
                status, data, headers = rec.decide(self.path, dict(self.headers), body) \
                    if rec.decide else rec.reply
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def old_outbox(path: Path, version: int) -> sqlite3.Connection:
    """An outbox database as a gateway of schema `version` left it (its first `version`
    migrations), open for the test to fill before a current gateway opens it."""
    from gateway.outbox import MIGRATIONS

    db = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:version]):
        db.executescript(script)
        db.execute(f"PRAGMA user_version={number + 1}")
    return db
