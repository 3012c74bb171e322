"""`make bench`: the gateway's ingest and upstream drain rates, each against a baseline measured
in the same run on the same machine.

1. Sustained ingest, QoS 1 publish -> committed in the SQLite outbox: N reading messages are
   queued at a real Mosquitto for a persistent session, then the gateway connects and drains
   them (manual PUBACK after each commit), with its file sink running beside it. Baseline: a
   bare paho QoS 1 subscriber (automatic acks, stores nothing) draining the same N messages
   from the same broker the same way. Each run has the broker to itself: its session is the
   only one holding messages, and it is removed afterwards. Five rounds, each a bare run and
   the gateway run right after it; the ratio is the median of the rounds' ratios, so that a
   host that gets busier or quieter over the minutes weighs on both sides of each ratio alike.
   N = 50 000 (a 1-2 s stream): with a few thousand the
   run lasts a tenth of a second and the gateway's start (creating the outbox, threads,
   connecting) weighs as much as the stream. Target: ratio >= 0.7.
2. Outbox commit latency: one `handle_batch` transaction of 1, 20 and 256 messages, against a
   plain SQLite insert of the same rows (same synchronous=FULL, same batch size).
3. Upstream drain: a backlog of 100 000 records in the outbox, delivered by the `http` sink
   (SenML, gzip, Idempotency-Key) to a local HTTP/1.1 server. Baseline: the same server
   receiving the same packs from a bare loop of `http.client` POSTs (prebuilt gzip bodies, at
   the sink's level).
   Both keep their connection open between requests.
4. The `mqtt` bridge end to end: READINGS QoS 1 reading messages published to a real Mosquitto
   (by a child process, the nodes), received by the gateway (ingest, outbox, the `mqtt` sink
   and nothing else) and republished to a second real Mosquitto, from the first publish to
   the last record's arrival at a platform's subscriber there (another child process).
   Baseline: a bare paho relay (subscribes on the first broker, republishes every message as
   it is to the second, QoS 1 both ways) between the same publisher and subscriber. Three
   rounds, each a relay run and the gateway run right after it; the ratio is the median of
   the rounds' ratios. The sink's `batch_max_age_s` is 0.1 s (default 1 s): otherwise the
   stream's last partial batch waits a second, a sizeable part of a run this short.

5. The `http` sink end to end: the same READINGS QoS 1 readings published to a real Mosquitto,
   received by the gateway (ingest, outbox, the `http` sink and nothing else) and POSTed as
   SenML packs (gzip, Idempotency-Key, keep-alive) to a local HTTP/1.1 server in a child
   process (the platform), from the first publish to the last record's arrival there.
   Baseline: a bare relay (paho QoS 1 subscriber, POSTing what arrived since its last POST
   as one body of the raw payloads, keep-alive) to the same server. Three rounds, as in 4.

    .venv/bin/python tests/bench/bench_gateway.py [ingest] [latency] [drain] [bridge] [http]

runs the parts named (all by default).
"""

from __future__ import annotations

import gzip
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.batcher import SinkWorker  # noqa: E402
from gateway.config import parse_config  # noqa: E402
from gateway.daemon import Gateway  # noqa: E402
from gateway.ingest import Message  # noqa: E402
from gateway.logfmt import configure_logging  # noqa: E402
from gateway.sinks import make_sink  # noqa: E402
from host_tools.broker import Mosquitto  # noqa: E402

T0 = 1763712000
MESSAGES = 50_000
ROUNDS = 5
RECORDS_PER_MESSAGE = 2
SENML_PER_MESSAGE = 5  # the two reading records carry 4 + 1 channel values
BACKLOG_RECORDS = 100_000
DRAIN_ROUNDS = 9
READINGS = 20_000
BRIDGE_ROUNDS = 3
PARTS = ("ingest", "latency", "drain", "bridge", "http")


def payload(seq: int) -> bytes:
    return cbor2.dumps([1, seq, T0 + seq, {1: 2153, 2: 4523, 3: 101325, 7: 3712},
                        {0: 60, 1: 3}], canonical=True)


def queue_messages(broker: Mosquitto, n: int, nodes: int = 10) -> None:
    pub = broker.secure(mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub",
                                    protocol=mqtt.MQTTv311))
    pub.max_inflight_messages_set(100)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    # each node's seqs are consecutive, as a healthy node sends them (no gaps)
    infos = [pub.publish(f"m/b{i % nodes}/r", payload(i // nodes * RECORDS_PER_MESSAGE), qos=1)
             for i in range(n)]
    for info in infos:
        info.wait_for_publish(60)
    pub.disconnect()
    pub.loop_stop()


def register_session(broker: Mosquitto, client_id: str) -> None:
    """Creates the persistent session and its subscription, then leaves."""
    done = threading.Event()
    c = broker.secure(mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False, protocol=mqtt.MQTTv311))
    c.on_subscribe = lambda *a: done.set()
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.subscribe("m/+/r", qos=1)
    done.wait(10)
    c.disconnect()
    c.loop_stop()


def drop_session(broker: Mosquitto, client_id: str) -> None:
    """Removes a persistent session (a clean-session connect), so that later rounds' messages
    are not queued for it."""
    c = broker.secure(mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=True, protocol=mqtt.MQTTv311))
    done = threading.Event()
    c.on_connect = lambda *a: done.set()
    c.connect(broker.host, broker.port)
    c.loop_start()
    done.wait(10)
    c.disconnect()
    c.loop_stop()


def bare_subscriber_rate(broker: Mosquitto, n: int, client_id: str = "bench-bare") -> float:
    register_session(broker, client_id)
    queue_messages(broker, n)
    got = 0
    finished = threading.Event()
    start = [0.0]

    def on_message(c, u, m):
        nonlocal got
        if got == 0:
            start[0] = time.perf_counter()
        got += 1
        if got == n:
            finished.set()

    c = broker.secure(mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False, protocol=mqtt.MQTTv311))
    c.on_message = on_message
    t0 = time.perf_counter()
    c.connect(broker.host, broker.port)
    c.loop_start()
    finished.wait(300)
    elapsed = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    drop_session(broker, client_id)
    if got < n:
        raise RuntimeError(f"bare subscriber received {got} of {n} messages")
    return n / elapsed


def gateway_rate(broker: Mosquitto, work: Path, n: int,
                 client_id: str = "bench-gw") -> tuple[float, float]:
    """(msg/s committed in the outbox, msg/s with every SenML record also written by the file
    sink): the first is the target's figure, the second what the gateway sustains when its
    sink must keep up (the sink threads share the interpreter with ingest)."""
    mqtt_cfg = {"host": broker.host, "port": broker.port, "client_id": client_id}
    if broker.tls is not None:
        mqtt_cfg["ca_file"] = str(broker.tls.ca_crt)
    config = parse_config({"mqtt": mqtt_cfg,
                           "sinks": {"file": {"path": "readings.jsonl"}},
                           "api": {"enabled": False}}, base_dir=work)
    register_session(broker, client_id)
    queue_messages(broker, n)
    gw = Gateway(config)
    t0 = time.perf_counter()
    gw.start()
    try:
        while gw.stats.snapshot()["accepted_messages"] < n:
            time.sleep(0.005)
        elapsed = time.perf_counter() - t0
        while gw.stats.snapshot()["sink_records"].get("file", 0) < n * SENML_PER_MESSAGE:
            time.sleep(0.005)
        written = time.perf_counter() - t0
    finally:
        gw.stop()
        gw.shutdown()
        drop_session(broker, client_id)
    return n / elapsed, n / written


def commit_latency(work: Path) -> list[tuple[int, float, float]]:
    config = parse_config({"sinks": {"file": {}}, "api": {"enabled": False}},
                          base_dir=work / "lat")
    gw = Gateway(config)
    gw.open_storage()
    plain = sqlite3.connect(work / "lat" / "plain.db", isolation_level=None)
    plain.execute("PRAGMA journal_mode=WAL")
    plain.execute("PRAGMA synchronous=FULL")
    plain.execute("CREATE TABLE r(node TEXT, seq INTEGER, body TEXT, PRIMARY KEY(node, seq))")
    out = []
    seq = pseq = 0
    for size in (1, 20, 256):
        ours, base = [], []
        for _ in range(max(5, 400 // size)):
            msgs = [Message(f"m/l{i % 7}/r", payload(seq + 2 * (i // 7)), received_at=T0)
                    for i in range(size)]
            t = time.perf_counter()
            gw.ingestor.handle_batch(msgs)
            ours.append(time.perf_counter() - t)
            rows = [(f"l{i % 7}", pseq + 2 * i + k, json.dumps({"v": 1}))
                    for i in range(size) for k in range(RECORDS_PER_MESSAGE)]
            pseq += 2 * size
            t = time.perf_counter()
            plain.execute("BEGIN")
            plain.executemany("INSERT INTO r VALUES (?, ?, ?)", rows)
            plain.execute("COMMIT")
            base.append(time.perf_counter() - t)
            seq += 2 * (size // 7 + 1)
        out.append((size, statistics.median(ours), statistics.median(base)))
    return out


def serve_posts(took: Callable[[Any, bytes], None]) -> ThreadingHTTPServer:
    """(In a platform child.) An HTTP/1.1 keep-alive server on a free loopback port, as a
    platform's: each POST's body is read (gunzipped when so sent), given to `took(headers,
    body)`, and answered 200. Prints "ready PORT"."""

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            took(self.headers, body)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"ready {server.server_address[1]}", flush=True)
    return server


def drain_platform_child() -> None:
    """(A child process: the platform of the drain, which is never in the gateway's process.)
    `serve_posts`, counting the records of every pack. For each line "expect N" on stdin it
    counts from 0 again (printing "ok"), and prints "done" once N records came."""
    state = {"records": 0, "target": None}
    lock = threading.Lock()

    def took(headers, body: bytes) -> None:
        n = len(json.loads(body))
        with lock:
            state["records"] += n
            if state["target"] is not None and state["records"] >= state["target"]:
                state["target"] = None
                print("done", flush=True)

    server = serve_posts(took)
    for line in sys.stdin:
        with lock:
            state["records"], state["target"] = 0, int(line.split()[1])
        print("ok", flush=True)
    server.shutdown()


class Platform:
    """`drain_platform_child`, from the bench's side."""

    def __init__(self) -> None:
        self.child = subprocess.Popen(
            [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
             "import bench_gateway; bench_gateway.drain_platform_child()"],
            text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = self.child.stdout.readline().split()
        if not line or line[0] != "ready":
            self.child.kill()
            raise RuntimeError("bench child drain_platform_child did not start")
        self.port = int(line[1])
        self.url = f"http://127.0.0.1:{self.port}/senml"

    def _line(self, want: str) -> None:
        got = self.child.stdout.readline().strip()  # blocks without polling
        if got != want:
            raise RuntimeError(f"the drain platform said {got!r}, not {want!r}")

    def expect(self, records: int) -> None:
        """Counts from 0 again; `wait` returns once `records` have arrived."""
        self.child.stdin.write(f"expect {records}\n")
        self.child.stdin.flush()
        self._line("ok")

    def wait(self) -> None:
        self._line("done")

    def close(self) -> None:
        self.child.kill()
        self.child.wait()


def drain_rates(work: Path) -> tuple[list[float], list[float], int]:
    """Rounds of: a backlog of `BACKLOG_RECORDS` SenML records drained by the http sink to a
    local server, then the same number of records POSTed by a bare loop of prebuilt bodies
    of the same size to the same server. The two runs of a round are back to back, so a busy
    moment of the machine weighs on both; returns (ours, bare, records) per round."""
    import http.client

    plat = Platform()
    pack = [{"n": "d1:temperature", "u": "Cel", "v": 21.53, "t": T0, "node": "d1", "seq": i,
             "rid": f"d1/{i}/temperature"} for i in range(500 * 5 // 2)]
    text = json.dumps(pack, separators=(",", ":")).encode()
    ours, bare = [], []
    for r in range(DRAIN_ROUNDS):
        config = parse_config({"sinks": {"http": {"url": plat.url, "batch_max_records": 500,
                                                  "batch_max_bytes": 1 << 22}},
                               "api": {"enabled": False}}, base_dir=work / f"drain{r}")
        gw = Gateway(config)
        gw.open_storage()
        records = 0
        seq = 0
        while records < BACKLOG_RECORDS:  # SenML records: 4 + 1 channel values per message
            msgs = [Message(f"m/d{i % 50}/r", payload(seq + 2 * (i // 50)), received_at=T0)
                    for i in range(500)]
            gw.ingestor.handle_batch(msgs)
            seq += 20
            records += 500 * 5
        cfg = config.sinks[0]
        body = gzip.compress(text, cfg.options.get("gzip_level", 5))  # the server gunzips the same
        worker = SinkWorker(make_sink(cfg), cfg, config.outbox.path, gw.stats)
        plat.expect(records)
        t0 = time.perf_counter()
        worker.start()
        plat.wait()
        ours.append(records / (time.perf_counter() - t0))
        worker.stop()
        gw.box.close()

        # baseline: the same number of packs of the same size, prebuilt, in a bare loop
        plat.expect(records)
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", plat.port, timeout=10)
        for _ in range(-(-records // len(pack))):
            conn.request("POST", "/senml", body=body, headers={
                "Content-Type": "application/senml+json", "Content-Encoding": "gzip",
                "Content-Length": str(len(body))})
            conn.getresponse().read()
        bare.append(records / (time.perf_counter() - t0))
        plat.wait()
        conn.close()
    plat.close()
    return ours, bare, records


def ingest(work: Path) -> None:
    """Part 1, printed: five rounds of `bare_subscriber_rate` and `gateway_rate`."""
    bares, gws, ends = [], [], []
    with Mosquitto(work / "broker") as broker:
        for r in range(ROUNDS):
            bares.append(bare_subscriber_rate(broker, MESSAGES, f"bench-bare-{r}"))
            committed, written = gateway_rate(broker, work / f"gw{r}", MESSAGES,
                                              f"bench-gw-{r}")
            gws.append(committed)
            ends.append(written)
    bare, gw_msgs, end = (statistics.median(x) for x in (bares, gws, ends))
    ratios = [g / b for g, b in zip(gws, bares)]
    print(f"ingest, QoS 1 publish -> committed in the outbox ({MESSAGES} queued messages, "
          f"{RECORDS_PER_MESSAGE} records each, real Mosquitto, median of {ROUNDS} rounds):")
    print(f"  bare paho QoS 1 subscriber   {bare:9.0f} msg/s   rounds "
          + " ".join(f"{x:.0f}" for x in bares))
    print(f"  gateway                      {gw_msgs:9.0f} msg/s   rounds "
          + " ".join(f"{x:.0f}" for x in gws)
          + f"   ({gw_msgs * RECORDS_PER_MESSAGE:.0f} records/s)")
    print(f"  ratio gateway / bare         {statistics.median(ratios):9.2f}   rounds "
          + " ".join(f"{x:.2f}" for x in ratios) + "   (target >= 0.9)")
    print(f"  through the file sink too    {end:9.0f} msg/s   rounds "
          + " ".join(f"{x:.0f}" for x in ends)
          + f"   (ratio {statistics.median(e / b for e, b in zip(ends, bares)):.2f}: every "
          "record also written to readings.jsonl)")


def stop_client(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def publisher_child(host: str, port: str, n: str, client_id: str) -> None:
    """(A child process: the nodes.) Publishes `n` reading messages, QoS 1, 100 in flight,
    once told to (a line on stdin); prints the monotonic time of the first publish, and
    returns once the broker acknowledged them all."""
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    pub.max_inflight_messages_set(100)
    pub.connect(host, int(port))
    pub.loop_start()
    payloads = [(f"m/b{i % 10}/r", payload(i // 10 * RECORDS_PER_MESSAGE))
                for i in range(int(n))]
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.monotonic()
    infos = [pub.publish(topic, data, qos=1) for topic, data in payloads]
    print(t0, flush=True)
    for info in infos:
        info.wait_for_publish(300)
    stop_client(pub)


def platform_child(host: str, port: str, topic: str, want: str, packs: str) -> None:
    """(A child process: the platform.) Subscribes to `topic` at QoS 1, prints "ready", then
    the monotonic time of the arrival that completes `want` (records of SenML packs, counted
    by their `rid`, or else messages)."""
    want_n, got = int(want), [0]
    done = threading.Event()
    count = (lambda data: data.count(b'"rid"')) if packs == "1" else (lambda data: 1)

    def on_message(c, u, m):
        got[0] += count(m.payload)
        if got[0] >= want_n and not done.is_set():
            print(time.monotonic(), flush=True)
            done.set()

    subscribed = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="platform", protocol=mqtt.MQTTv311)
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect(host, int(port))
    sub.loop_start()
    sub.subscribe(topic, qos=1)
    subscribed.wait(10)
    print("ready", flush=True)
    done.wait(300)
    stop_client(sub)


def _child(function: str, *args: object) -> subprocess.Popen:
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import bench_gateway; bench_gateway.{function}(*sys.argv[1:])")
    child = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    if child.stdout.readline().strip() != "ready":
        child.kill()
        raise RuntimeError(f"bench child {function} did not start")
    return child


def stream_rate(source: Mosquitto, upstream: Mosquitto, topic: str, *, packs: bool,
                n: int, r: int) -> float:
    """Readings/s from the first publish of `n` readings to `source` (a child process) to
    the last arrival at a platform subscribed to `topic` on `upstream` (another)."""
    want = n * SENML_PER_MESSAGE if packs else n
    plat = _child("platform_child", upstream.host, upstream.port, topic, want, int(packs))
    pub = _child("publisher_child", source.host, source.port, n, f"bench-pub-{topic}-{r}")
    try:
        t0 = float(pub.communicate("go\n", timeout=300)[0])
        done = plat.communicate(timeout=300)[0].strip()
    finally:
        for child in (pub, plat):
            child.kill()
            child.wait()
    if not done:
        raise RuntimeError(f"the platform did not receive all {want} on {topic}")
    return n / (float(done) - t0)


def relay_rate(source: Mosquitto, upstream: Mosquitto, n: int, r: int) -> float:
    """Readings/s through a bare paho relay: every message republished as it is, QoS 1."""
    out = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"relay-out-{r}",
                      protocol=mqtt.MQTTv311)
    out.max_inflight_messages_set(100)
    out.connect(upstream.host, upstream.port)
    out.loop_start()
    relay = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"relay-in-{r}",
                        protocol=mqtt.MQTTv311)
    relay.on_message = lambda c, u, m: out.publish("relay/" + m.topic, m.payload, qos=1)
    subscribed = threading.Event()
    relay.on_subscribe = lambda *a: subscribed.set()
    relay.connect(source.host, source.port)
    relay.loop_start()
    relay.subscribe("m/+/r", qos=1)
    try:
        if not subscribed.wait(10):
            raise RuntimeError("the relay did not subscribe")
        return stream_rate(source, upstream, "relay/#", packs=False, n=n, r=r)
    finally:
        stop_client(relay)
        stop_client(out)


def bridge_rate(source: Mosquitto, upstream: Mosquitto, work: Path, n: int, r: int) -> float:
    """Readings/s through the gateway and its `mqtt` sink (and nothing else)."""
    client_id = f"bench-bridge-{r}"
    config = parse_config({"mqtt": {"host": source.host, "port": source.port,
                                    "client_id": client_id},
                           "sinks": {"mqtt": {"host": upstream.host, "port": upstream.port,
                                              "topic_prefix": "city",
                                              "client_id": f"bench-bridge-up-{r}",
                                              "batch_max_age_s": 0.1}},
                           "api": {"enabled": False}}, base_dir=work)
    gw = Gateway(config)
    gw.start()
    try:
        deadline = time.monotonic() + 20
        while not (gw.stats.snapshot().get("subscribed")
                   and all(w.sink.client.is_connected() for w in gw.workers)):
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not subscribe or connect upstream")
            time.sleep(0.01)
        return stream_rate(source, upstream, "city/#", packs=True, n=n, r=r)
    finally:
        gw.stop()
        gw.shutdown()
        drop_session(source, client_id)


def http_platform_child(want: str) -> None:
    """(A child process: the platform.) `serve_posts`; prints the monotonic time of the POST
    that completes `want`: SenML packs' reading records are counted (distinct `{node}/{seq}`
    of the rids), a relay's raw bodies count the messages in their X-Messages header."""
    want_n = int(want)
    seen: set[bytes] = set()
    got = [0]
    done = threading.Event()

    def took(headers, body: bytes) -> None:
        if headers.get("X-Messages"):
            got[0] += int(headers["X-Messages"])
        else:
            for rec in json.loads(body):  # a reading is node/seq, its values share it
                seen.add(rec["rid"].rsplit("/", 1)[0].encode())
            got[0] = len(seen)
        if got[0] >= want_n and not done.is_set():
            print(time.monotonic(), flush=True)
            done.set()

    server = serve_posts(took)
    done.wait(300)
    server.shutdown()


def http_stream_rate(source: Mosquitto, start_receiver, n: int, r: int, *, want: int) -> float:
    """Readings/s from the first publish of `n` reading messages to `source` to the last
    arrival at the HTTP platform child (`want`: what it counts then); `start_receiver(url)`
    starts what carries them there (and returns a function that stops it)."""
    plat = subprocess.Popen([sys.executable, "-c",
                             f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                             "import bench_gateway; bench_gateway.http_platform_child(sys.argv[1])",
                             str(want)], text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    line = plat.stdout.readline().split()
    if not line or line[0] != "ready":
        plat.kill()
        raise RuntimeError("bench child http_platform_child did not start")
    stop = start_receiver(f"http://127.0.0.1:{line[1]}/senml")
    try:
        pub = _child("publisher_child", source.host, source.port, n, f"bench-pub-http-{r}")
        try:
            t0 = float(pub.communicate("go\n", timeout=300)[0])
            done = plat.communicate(timeout=300)[0].strip()
        finally:
            pub.kill()
            pub.wait()
    finally:
        plat.kill()
        plat.wait()
        stop()
    if not done:
        raise RuntimeError(f"the HTTP platform did not receive all {n} readings")
    return n / (float(done) - t0)


def http_relay(source: Mosquitto, r: int):
    """A bare relay to HTTP: a paho QoS 1 subscriber; a thread POSTs what arrived since its
    last POST as one body (the raw payloads), keep-alive. Returns start_receiver for
    `http_stream_rate`."""
    import http.client
    import urllib.parse

    def start(url: str):
        inbox: list[bytes] = []
        lock = threading.Condition()
        stop = threading.Event()
        relay = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"relay-http-{r}",
                            protocol=mqtt.MQTTv311)

        def on_message(c, u, m):
            with lock:
                inbox.append(m.payload)
                lock.notify()

        def poster():
            parts = urllib.parse.urlsplit(url)
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            while not stop.is_set():
                with lock:
                    if not inbox:
                        lock.wait(0.05)
                        continue
                    taken = inbox[:]
                    inbox.clear()
                body = b"".join(taken)
                conn.request("POST", parts.path, body=body, headers={
                    "Content-Type": "application/octet-stream", "X-Messages": str(len(taken)),
                    "Content-Length": str(len(body))})
                conn.getresponse().read()
            conn.close()

        subscribed = threading.Event()
        relay.on_message = on_message
        relay.on_subscribe = lambda *a: subscribed.set()
        relay.connect(source.host, source.port)
        relay.loop_start()
        relay.subscribe("m/+/r", qos=1)
        thread = threading.Thread(target=poster, daemon=True)
        thread.start()
        if not subscribed.wait(10):
            raise RuntimeError("the relay did not subscribe")

        def halt() -> None:
            stop.set()
            thread.join(10)
            stop_client(relay)
        return halt
    return start


def http_gateway(source: Mosquitto, work: Path, r: int):
    """The gateway with its `http` sink (and nothing else); start_receiver for
    `http_stream_rate`."""
    def start(url: str):
        client_id = f"bench-http-{r}"
        config = parse_config({"mqtt": {"host": source.host, "port": source.port,
                                        "client_id": client_id},
                               "sinks": {"http": {"url": url, "batch_max_age_s": 0.1}},
                               "api": {"enabled": False}}, base_dir=work)
        gw = Gateway(config)
        gw.start()
        deadline = time.monotonic() + 20
        while not gw.stats.snapshot().get("subscribed"):
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not subscribe")
            time.sleep(0.01)

        def halt() -> None:
            gw.stop()
            gw.shutdown()
            drop_session(source, client_id)
        return halt
    return start


def http_rates(work: Path) -> tuple[list[float], list[float]]:
    relays, ours = [], []
    with Mosquitto(work / "http-source") as source:
        for r in range(BRIDGE_ROUNDS):
            relays.append(http_stream_rate(source, http_relay(source, r), READINGS, r,
                                           want=READINGS))
            ours.append(http_stream_rate(source, http_gateway(source, work / f"http{r}", r),
                                         READINGS, r, want=READINGS * RECORDS_PER_MESSAGE))
    return relays, ours


def bridge_rates(work: Path) -> tuple[list[float], list[float]]:
    relays, ours = [], []
    with Mosquitto(work / "source") as source, Mosquitto(work / "upstream") as upstream:
        for r in range(BRIDGE_ROUNDS):
            relays.append(relay_rate(source, upstream, READINGS, r))
            ours.append(bridge_rate(source, upstream, work / f"bridge{r}", READINGS, r))
    return relays, ours


def main(argv: list[str]) -> int:
    parts = argv or list(PARTS)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"bench_gateway: unknown part {unknown[0]!r} (parts: {', '.join(PARTS)})",
              file=sys.stderr)
        return 2
    configure_logging("ERROR")
    with tempfile.TemporaryDirectory(prefix="bench-gw-") as tmp:
        work = Path(tmp)
        if "ingest" in parts:
            ingest(work)
        if "latency" in parts:
            print("outbox commit latency (median), one transaction, against plain SQLite "
                  "inserts of the same rows:")
            for size, ours, base in commit_latency(work):
                print(f"  {size:4d} messages   gateway {ours * 1000:8.2f} ms   plain sqlite "
                      f"{base * 1000:8.2f} ms   ratio {ours / base:6.2f}")
        if "drain" in parts:
            ours, bare_post, records = drain_rates(work)
            ratios = [o / b for o, b in zip(ours, bare_post)]
            print(f"upstream drain of a {records} record backlog, http sink (SenML, gzip, "
                  "Idempotency-Key) to a local server, keep-alive both, median of "
                  f"{DRAIN_ROUNDS} rounds:")
            print(f"  bare http.client POST loop   {statistics.median(bare_post):9.0f} "
                  "records/s   rounds " + " ".join(f"{x:.0f}" for x in bare_post))
            print(f"  gateway http sink            {statistics.median(ours):9.0f} "
                  "records/s   rounds " + " ".join(f"{x:.0f}" for x in ours))
            print(f"  ratio gateway / bare         {statistics.median(ratios):9.2f}   "
                  "rounds " + " ".join(f"{x:.2f}" for x in ratios) + "   (target >= 0.3)")
        if "bridge" in parts:
            print_end_to_end(f"mqtt bridge end to end, first publish to last arrival upstream "
                             f"({READINGS} QoS 1 readings of {SENML_PER_MESSAGE} values, two "
                             f"real Mosquittos, median of {BRIDGE_ROUNDS} rounds):",
                             "bare paho relay", "gateway mqtt sink", *bridge_rates(work))
        if "http" in parts:
            print_end_to_end(f"http sink end to end, first publish to last arrival at a local "
                             f"HTTP server ({READINGS} QoS 1 readings of {SENML_PER_MESSAGE} "
                             f"values, real Mosquitto, median of {BRIDGE_ROUNDS} rounds):",
                             "bare relay (paho -> POST)", "gateway http sink", *http_rates(work))
    return 0


def print_end_to_end(title: str, bare_name: str, ours_name: str, relays: list[float],
                     ours: list[float]) -> None:
    """The rates of an end-to-end part and the median of its rounds' ratios."""
    ratios = [o / b for o, b in zip(ours, relays)]
    print(title)
    print(f"  {bare_name:28s} {statistics.median(relays):9.0f} readings/s   rounds "
          + " ".join(f"{x:.0f}" for x in relays))
    print(f"  {ours_name:28s} {statistics.median(ours):9.0f} readings/s   rounds "
          + " ".join(f"{x:.0f}" for x in ours))
    print(f"  ratio gateway / relay        {statistics.median(ratios):9.2f}   rounds "
          + " ".join(f"{x:.2f}" for x in ratios))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
