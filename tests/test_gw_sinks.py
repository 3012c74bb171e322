"""The http, ngsi-ld and mqtt sinks against real local servers: a stdlib HTTP server and a real
Mosquitto; batches come from a real outbox."""

import gzip
import json
import time
from email.utils import formatdate

import pytest

from gateway.config import parse_config
from gateway.errors import DeliveryFailed, DeliveryRejected
from gateway.outbox import Outbox
from gateway.sinks import make_sink
from gateway.sinks.http import parse_retry_after
from gateway_support import Recorder, subscriber

T0 = 1763712000


@pytest.fixture
def recorder():
    r = Recorder()
    yield r
    r.close()


def batch_for(tmp_path, sink: str):
    box = Outbox(tmp_path / "o.db", sinks=[sink])
    with box.transaction():
        box.add_item("reading", "w1", 7, [
            {"n": "w1:water_volume", "u": "m3", "v": 12.345, "t": T0},
            {"n": "w1:temperature", "u": "Cel", "v": 9.5, "t": T0}], T0)
        box.add_item("reading", "w1", 8, [
            {"n": "w1:water_volume", "u": "m3", "v": 12.35, "t": T0 + 60}], T0)
        box.add_item("event", "w1", None, {"node": "w1", "alarm": "leak", "active": True,
                                           "t": T0 + 61.5, "detail": "alarms channel = 1"}, T0)
    return box.claim_batch(sink, max_records=10, max_bytes=1 << 20)


def sink_config(tmp_path, name, **keys):
    return parse_config({"sinks": {name: keys}}, base_dir=tmp_path).sinks[0]


def test_http_sink_posts_gzipped_senml_with_token_and_idempotency_key(tmp_path, recorder):
    batch = batch_for(tmp_path, "http")
    sink = make_sink(sink_config(tmp_path, "http", url=recorder.url + "/in", token="s3cret"))
    sink.deliver(batch)
    path, headers, body = recorder.requests[0]
    assert path == "/in"
    assert headers["Idempotency-Key"] == batch.key
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["Content-Type"] == "application/senml+json"
    assert headers["Content-Encoding"] == "gzip"
    pack = json.loads(gzip.decompress(body))
    # each item's first record carries the base name and base time (RFC 8428 4.5), the
    # records after it only what they do not share
    assert pack == [
        {"bn": "w1:", "bt": T0, "n": "water_volume", "u": "m3", "v": 12.345, "node": "w1",
         "seq": 7, "rid": "w1/7/water_volume"},
        {"n": "temperature", "u": "Cel", "v": 9.5, "node": "w1", "seq": 7,
         "rid": "w1/7/temperature"},
        {"bn": "w1:", "bt": T0 + 60, "n": "water_volume", "u": "m3", "v": 12.35, "node": "w1",
         "seq": 8, "rid": "w1/8/water_volume"},
        {"bn": "w1:", "bt": T0 + 61.5, "n": "alarm:leak", "vb": True, "node": "w1",
         "event": "alarm", "rid": f"w1/alarm/leak/{(T0 + 61.5) * 1000:.0f}/raised",
         "vs": "alarms channel = 1"}]


def test_http_sink_classifies_replies(tmp_path, recorder):
    batch = batch_for(tmp_path, "http")
    sink = make_sink(sink_config(tmp_path, "http", url=recorder.url, gzip=False))
    recorder.reply = (503, b"later", {"Retry-After": "7"})
    with pytest.raises(DeliveryFailed) as info:
        sink.deliver(batch)
    assert info.value.retry_after == 7.0
    recorder.reply = (429, b"slow down", {})
    with pytest.raises(DeliveryFailed):
        sink.deliver(batch)
    recorder.reply = (422, b'{"error": "unit"}', {})
    with pytest.raises(DeliveryRejected) as rej:
        sink.deliver(batch)
    assert (rej.value.status, rej.value.reply) == (422, '{"error": "unit"}')
    recorder.close()
    with pytest.raises(DeliveryFailed, match="ConnectionRefusedError"):
        sink.deliver(batch)


def test_retry_after_accepts_seconds_and_http_dates():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(formatdate(1000 + 30, usegmt=True), now=1000) == pytest.approx(30)
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_ngsi_ld_sink_upserts_smart_data_model_entities(tmp_path, recorder):
    batch = batch_for(tmp_path, "ngsi-ld")
    sink = make_sink(sink_config(tmp_path, "ngsi-ld", url=recorder.url, tenant="city"))
    recorder.reply = (204, b"", {})
    sink.deliver(batch)
    path, headers, body = recorder.requests[0]
    assert path == "/ngsi-ld/v1/entityOperations/upsert?options=update"
    assert headers["Content-Type"] == "application/ld+json"
    assert headers["NGSILD-Tenant"] == "city"
    entities = {e["id"]: e for e in json.loads(body)}
    meter = entities["urn:ngsi-ld:WaterConsumptionObserved:w1"]
    assert meter["type"] == "WaterConsumptionObserved"
    assert meter["waterConsumption"] == {
        "type": "Property", "value": 12350, "unitCode": "LTR",
        "observedAt": "2025-11-21T08:01:00Z",  # T0 is 08:00:00Z
        "observedBy": {"type": "Relationship", "object": "urn:ngsi-ld:Device:w1"}}
    # the temperature in the water meter's record is the water's, not a weather station's
    medium = entities["urn:ngsi-ld:DeviceMeasurement:w1:temperature"]
    assert medium["numValue"]["value"] == 9.5 and medium["numValue"]["unitCode"] == "CEL"
    alert = entities["urn:ngsi-ld:Alert:w1:leak"]
    assert alert["name"]["value"] == "leak" and alert["data"]["value"]["active"] is True
    assert all("@context" in e for e in entities.values())
    recorder.reply = (207, b'{"errors": [{"entityId": '
                           b'"urn:ngsi-ld:WaterConsumptionObserved:w1"}]}', {})
    with pytest.raises(DeliveryRejected) as rej:
        sink.deliver(batch)
    assert "urn:ngsi-ld:WaterConsumptionObserved:w1" in rej.value.reply


@pytest.mark.slow
def test_mqtt_bridge_republishes_and_fails_over_when_the_upstream_is_down(tmp_path, broker):
    got: list[tuple[str, list]] = []
    sub = subscriber(broker, lambda topic, pack: got.append((topic, pack)))
    batch = batch_for(tmp_path, "mqtt")
    sink = make_sink(sink_config(tmp_path, "mqtt", host=broker.host, port=broker.port,
                                 topic_prefix="city", timeout_s=2.0, tls=True,
                                 ca_file=str(broker.tls.ca_crt)))
    sink.open()
    try:
        deadline = time.monotonic() + 10
        while not sink.client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        sink.deliver(batch)
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [t for t, _ in got] == ["city/senml", "city/w1/event"]
        assert [r["rid"] for r in got[0][1]] == ["w1/7/water_volume", "w1/7/temperature",
                                                 "w1/8/water_volume"]
        broker.stop()
        with pytest.raises(DeliveryFailed):
            sink.deliver(batch)
    finally:
        sink.close()
        sub.loop_stop()


def test_https_sinks_verify_the_platform_and_present_the_gateways_client_certificate(tmp_path,
                                                                                     pki):
    """A platform that authenticates the gateway by mTLS: the http and ngsi-ld sinks trust its
    CA (ca_file), present cert_file/key_file, and a gateway without a certificate, or one that
    does not trust the platform's CA, delivers nothing."""
    import ssl

    from host_tools.pki import Pki

    pki.issue("broker", "platform", hosts=["localhost"], ips=["127.0.0.1"], renew=True)
    pki.issue("client", "gw-platform", renew=True)
    recorder = Recorder()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_crt))
    ctx.verify_mode = ssl.CERT_REQUIRED  # the platform wants a client certificate of the CA
    ctx.load_cert_chain(pki.cert_path("broker", "platform"), pki.key_path("broker", "platform"))
    recorder.server.socket = ctx.wrap_socket(recorder.server.socket, server_side=True)
    url = recorder.url.replace("http://", "https://")
    cert = {"cert_file": str(pki.cert_path("client", "gw-platform")),
            "key_file": str(pki.key_path("client", "gw-platform"))}
    stranger = Pki(tmp_path / "stranger")
    stranger.init("not the platform's CA")
    try:
        for name, path in (("http", "/in"), ("ngsi-ld", "")):
            (tmp_path / name).mkdir()
            batch = batch_for(tmp_path / name, name)
            sink = make_sink(sink_config(tmp_path, name, url=url + path,
                                         ca_file=str(pki.ca_crt), **cert))
            sink.deliver(batch)
            assert recorder.requests, name
            recorder.requests.clear()
            for bad in ({"ca_file": str(pki.ca_crt)},  # no client certificate
                        {"ca_file": str(stranger.ca_crt), **cert}):  # the platform unverified
                sink = make_sink(sink_config(tmp_path, name, url=url + path, **bad))
                with pytest.raises(DeliveryFailed):
                    sink.deliver(batch)
            assert not recorder.requests, name
    finally:
        recorder.close()
    with pytest.raises(Exception, match="cert_file needs key_file"):
        sink_config(tmp_path, "http", url=url, cert_file=cert["cert_file"])


@pytest.mark.slow
def test_mqtt_bridge_delivers_within_seconds_of_the_upstreams_return(tmp_path, broker):
    """After an outage the bridge delivers as soon as it is connected again, not when its
    backoff runs out: with a 30 s backoff configured, what waited goes within a few seconds
    of the upstream broker's return (field trial: 44.5 s after a 60 s outage)."""
    from gateway.batcher import SinkWorker
    from gateway.stats import Stats
    from gateway_support import wait_for

    got: list[int] = []
    config = sink_config(tmp_path, "mqtt", host=broker.host, port=broker.port,
                         topic_prefix="city", timeout_s=2.0, tls=True,
                         ca_file=str(broker.tls.ca_crt), batch_max_age_s=0,
                         backoff_initial_s=30.0)
    box = Outbox(tmp_path / "o.db", sinks=["mqtt"])
    # the platform's subscriber, with a session the broker keeps through its outage
    sub = subscriber(broker, lambda topic, pack: got.extend(r["seq"] for r in pack),
                     client_id="platform", clean_session=False)
    wait_for(sub.is_connected, 10, "the platform's subscriber")
    time.sleep(0.2)
    broker.stop()
    worker = SinkWorker(make_sink(config), config, tmp_path / "o.db", Stats())
    worker.start()
    try:
        with box.transaction():
            box.add_item("reading", "w1", 1, [{"n": "w1:water_volume", "u": "m3", "v": 1.5,
                                               "t": T0}], T0)
        worker.wake()
        time.sleep(3)  # the first attempt failed: the batcher now backs off for 15-30 s
        broker.start()
        back = time.monotonic()
        wait_for(lambda: box.backlog("mqtt")[0] == 0, 20,
                 "the upstream broker's acknowledgement of the waiting reading")
        took = time.monotonic() - back
        assert took < 6, f"delivered {took:.1f} s after the upstream came back"
        wait_for(lambda: got == [1], 20, "the reading at the platform's subscriber")
    finally:
        sub.loop_stop()
        worker.stop()


def test_a_clock_stepped_back_does_not_hold_the_backlog(tmp_path):
    """Items stored just before the gateway's clock was stepped back an hour (an NTP
    correction) look an hour in the future; the sink delivers them now, not in an hour."""
    from gateway.batcher import SinkWorker
    from gateway.stats import Stats
    from gateway_support import wait_for

    path = tmp_path / "readings.jsonl"
    config = sink_config(tmp_path, "file", path=str(path), batch_max_age_s=1.0)
    box = Outbox(tmp_path / "o.db", sinks=["file"])
    ahead = time.time() + 3600
    with box.transaction():
        box.add_item("reading", "w1", 1, [{"n": "w1:water_volume", "u": "m3", "v": 1.5,
                                           "t": T0}], ahead)
    worker = SinkWorker(make_sink(config), config, tmp_path / "o.db", Stats())
    worker.start()
    try:
        wait_for(lambda: path.exists() and path.read_text().count("\n") == 1, 10,
                 "the reading in the file")
    finally:
        worker.stop()


# ---- the http sink keeps its connection; the mqtt sink packs its batches ---------------------

class KeepAlivePlatform:
    """An HTTP/1.1 platform that keeps connections open and deduplicates by Idempotency-Key.
    `plan(n)` decides what its n-th request (from 0) gets: "ok"; "close": the answer, then
    the connection closed without a word (as when a platform's keep-alive timeout runs out);
    "drop": the connection closed halfway through reading the request, and no answer."""

    def __init__(self, plan=lambda n: "ok") -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from gateway_support import resolve_senml

        self.plan = plan
        self.lock = threading.Lock()
        self.connections = 0
        self.requests: list[tuple[int, str, str]] = []  # (connection, key, what it got)
        self.by_key: dict[str, list[dict]] = {}
        platform = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with platform.lock:
                    platform.connections += 1
                    self.number = platform.connections

            def do_POST(self) -> None:  # noqa: N802
                key = self.headers["Idempotency-Key"]
                with platform.lock:
                    what = platform.plan(len(platform.requests))
                    platform.requests.append((self.number, key, what))
                length = int(self.headers["Content-Length"])
                if what == "drop":
                    self.rfile.read(length // 2)
                    self.close_connection = True
                    return
                records = resolve_senml(json.loads(gzip.decompress(self.rfile.read(length))))
                with platform.lock:
                    platform.by_key.setdefault(key, records)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
                if what == "close":
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/senml"

    def rids(self) -> list[str]:
        """The record ids accepted, once per key (the platform's dedup)."""
        with self.lock:
            return sorted(r["rid"] for records in self.by_key.values() for r in records)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def readings_outbox(path, sink: str, seqs) -> tuple[Outbox, list[str]]:
    """An outbox holding a reading of two values for each seq (nodes n0..n2), and their rids."""
    box = Outbox(path, sinks=[sink])
    rids = []
    with box.transaction():
        for seq in seqs:
            node = f"n{seq % 3}"
            box.add_item("reading", node, seq, [
                {"n": f"{node}:water_volume", "u": "m3", "v": 1000 + seq / 1000, "t": T0 + seq},
                {"n": f"{node}:rssi", "u": "dBm", "v": -60 - seq % 30, "t": T0 + seq}], T0)
            rids += [f"{node}/{seq}/water_volume", f"{node}/{seq}/rssi"]
    return box, sorted(rids)


def test_http_sink_keeps_one_connection_for_many_batches(tmp_path):
    platform = KeepAlivePlatform()
    box, rids = readings_outbox(tmp_path / "o.db", "http", range(1, 13))
    sink = make_sink(sink_config(tmp_path, "http", url=platform.url))
    try:
        for _ in range(4):
            batch = box.claim_batch("http", max_records=3, max_bytes=1 << 20)
            sink.deliver(batch)
            box.confirm(batch)
    finally:
        sink.close()
        platform.close()
    assert platform.connections == 1 and len(platform.requests) == 4
    assert platform.rids() == rids


@pytest.mark.parametrize("plan", ["close", "drop"])
def test_http_sink_reconnects_without_losing_or_doubling_a_record(tmp_path, plan):
    """A platform that closes the connection after every answer (saying nothing): the next
    batch notices on its first write and goes at once on a new connection, nothing is sent
    twice and nothing waits for a backoff. One that drops every third request halfway: the
    batch goes again, with its key, on a new connection. Either way the platform, deduplicating
    by key, has every record exactly once."""
    from gateway.batcher import SinkWorker
    from gateway.stats import Stats
    from gateway_support import wait_for

    platform = KeepAlivePlatform({"close": lambda n: "close",
                                  "drop": lambda n: "drop" if n % 3 == 1 else "ok"}[plan])
    box, rids = readings_outbox(tmp_path / "o.db", "http", range(1, 41))
    config = sink_config(tmp_path, "http", url=platform.url, batch_max_records=4,
                         batch_max_age_s=0, backoff_initial_s=0.05, backoff_max_s=0.2)
    stats = Stats()
    worker = SinkWorker(make_sink(config), config, tmp_path / "o.db", stats)
    worker.start()
    try:
        wait_for(lambda: box.backlog("http")[0] == 0, 30, "the backlog delivered")
    finally:
        worker.stop()
        platform.close()
    assert platform.rids() == rids, "every record once, after dedup by key"
    batches = len(platform.by_key)
    assert batches == 10
    if plan == "close":
        assert platform.connections == batches
        assert [key for _, key, _ in platform.requests] == list(platform.by_key), \
            "no batch sent twice"
        assert "http:transient" not in stats.snapshot().get("sink_errors", {})
    else:
        dropped = {key for _, key, what in platform.requests if what == "drop"}
        assert len(dropped) >= 3 and dropped <= set(platform.by_key)
        assert platform.connections > len(dropped)


def test_http_sink_prepares_the_next_batch_in_flight_and_sends_a_failed_one_first(tmp_path):
    """Draining a backlog, the http sink claims and formats its next batch while the platform
    answers the one before (that work overlaps the round trip). A batch the platform fails
    (503) goes again, with its key, before the batch prepared behind it; the platform gets
    every record once and in order."""
    import sqlite3
    import threading

    from gateway.batcher import SinkWorker
    from gateway.stats import Stats
    from gateway_support import Upstream, wait_for

    box, rids = readings_outbox(tmp_path / "o.db", "http", range(1, 41))
    seen = sqlite3.connect(tmp_path / "o.db", check_same_thread=False)
    lock, count, open_in_flight = threading.Lock(), [0], []

    def platform(records):
        with lock:
            n = count[0]
            count[0] += 1
        if n == 0:  # the first batch is at the platform: is the next one claimed already?
            end = time.monotonic() + 5
            while time.monotonic() < end:
                opened = seen.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
                if opened >= 2:
                    break
                time.sleep(0.01)
            open_in_flight.append(opened)
        return (503, "busy") if n == 2 else (200, "{}")

    with Upstream() as up:
        up.mode = platform
        config = sink_config(tmp_path, "http", url=up.url, batch_max_records=8,
                             batch_max_age_s=0, backoff_initial_s=0.05, backoff_max_s=0.2)
        worker = SinkWorker(make_sink(config), config, tmp_path / "o.db", Stats())
        worker.start()
        try:
            wait_for(lambda: box.backlog("http")[0] == 0, 30, "the backlog delivered")
        finally:
            worker.stop()
        requests = list(up.requests)
        accepted = up.records()
    assert open_in_flight == [2], "the next batch was claimed while the first was in flight"
    keys = [key for _, key, _, _ in requests]
    assert (len(set(keys)), len(keys)) == (5, 6)  # 40 readings in batches of 8, one again
    assert [status for *_, status in requests].count(503) == 1
    failed = keys[2]
    assert keys[3] == failed, "the failed batch went again before the one prepared behind it"
    assert [r for _, key, r, _ in requests if key == failed][0] == \
        [r for _, key, r, _ in requests if key == failed][1], "the same records under its key"
    assert sorted(r["rid"] for r in accepted) == rids
    assert [r["seq"] for r in accepted] == sorted(r["seq"] for r in accepted), "in order"


def test_the_backlog_gauge_falls_while_a_slow_platform_drains_it(tmp_path):
    """An operator watches `sink_backlog` shrink during a long drain: the gauge is brought up
    to date every second also while the sink always has its next batch claimed."""
    from gateway.batcher import SinkWorker
    from gateway.stats import Stats
    from gateway_support import Upstream, wait_for

    box, _ = readings_outbox(tmp_path / "o.db", "http", range(1, 41))
    stats = Stats()
    with Upstream() as up:
        up.mode, up.delay = "timeout", 0.25  # each answer after 0.25 s: a 2.5 s drain
        config = sink_config(tmp_path, "http", url=up.url, batch_max_records=4,
                             batch_max_age_s=0)
        worker = SinkWorker(make_sink(config), config, tmp_path / "o.db", stats)
        worker.start()
        try:
            wait_for(lambda: len(up.requests) >= 1, 10, "the first batch")
            first = stats.snapshot()["sink_backlog"]["http"]
            time.sleep(1.3)
            during = stats.snapshot()["sink_backlog"]["http"]
            assert box.backlog("http")[0] > 0, "the drain was still running"
            wait_for(lambda: box.backlog("http")[0] == 0, 30, "the backlog delivered")
        finally:
            worker.stop()
    assert first == 40 and 0 < during < 40


@pytest.mark.slow
def test_mqtt_bridge_packs_fit_and_every_record_arrives_once_across_an_upstream_restart(
        tmp_path, broker):
    """A stream through the bridge with pack_max_bytes = 1024 while its upstream broker is
    restarted: every message the platform receives fits 1024 bytes, and after dedup by rid the
    platform has every record exactly once (a copy, from a batch published again, is the same
    record)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from gateway.batcher import SinkWorker
    from gateway.stats import Stats
    from gateway_support import resolve_senml, wait_for

    got: list[tuple[int, list[dict]]] = []  # (payload bytes, resolved records)
    sub = broker.secure(mqtt.Client(CallbackAPIVersion.VERSION2, client_id="platform",
                                    clean_session=False, protocol=mqtt.MQTTv311))
    sub.reconnect_delay_set(1, 1)
    sub.on_message = lambda c, u, m: got.append((len(m.payload),
                                                 resolve_senml(json.loads(m.payload))))
    sub.connect(broker.host, broker.port)
    sub.subscribe("city/#", qos=1)
    sub.loop_start()
    config = sink_config(tmp_path, "mqtt", host=broker.host, port=broker.port,
                         topic_prefix="city", tls=True, ca_file=str(broker.tls.ca_crt),
                         pack_max_bytes=1024, timeout_s=2.0, batch_max_records=40,
                         batch_max_age_s=0, backoff_initial_s=0.2, backoff_max_s=1.0)
    box, rids = readings_outbox(tmp_path / "o.db", "mqtt", [])
    worker = SinkWorker(make_sink(config), config, tmp_path / "o.db", Stats())
    worker.start()
    received = lambda: {r["rid"] for _, records in got for r in records}
    try:
        wait_for(lambda: worker.sink.client.is_connected() and sub.is_connected(), 10,
                 "the bridge and the platform connected")
        for first in range(1, 601, 20):
            if first == 301:  # mid-stream: part of it upstream, the rest still coming
                wait_for(lambda: len(received()) >= 200, 20, "the stream's first part")
                broker.stop()
            if first == 401:
                broker.start()
            more = readings_outbox(tmp_path / "o.db", "mqtt", range(first, first + 20))[1]
            rids = sorted(rids + more)
            worker.wake()
            time.sleep(0.05)
        wait_for(lambda: received() == set(rids) and box.backlog("mqtt")[0] == 0, 60,
                 "every record at the platform")
    finally:
        worker.stop()
        sub.loop_stop()
    assert max(size for size, _ in got) <= 1024
    assert len(got) < len(rids) / 5, "packs of about ten records, not one message each"
    copies: dict[str, list[dict]] = {}
    for _, records in got:
        for r in records:
            copies.setdefault(r["rid"], []).append(r)
    assert sorted(copies) == rids
    assert all(all(c == same[0] for c in same) for same in copies.values())
    assert copies["n1/301/rssi"][0] == {"n": "n1:rssi", "u": "dBW", "v": -91, "t": T0 + 301,
                                        "node": "n1", "seq": 301, "rid": "n1/301/rssi"}
