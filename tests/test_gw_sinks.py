"""The http, ngsi-ld and mqtt sinks against real local servers: a stdlib HTTP server and a real
Mosquitto; batches come from a real outbox."""

import gzip
import json
import time
from email.utils import formatdate

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import parse_config
from gateway.errors import DeliveryFailed, DeliveryRejected
from gateway.outbox import Outbox
from gateway.sinks import make_sink
from gateway.sinks.http import parse_retry_after
from gateway_support import Recorder

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
    sub = broker.secure(mqtt.Client(CallbackAPIVersion.VERSION2, client_id="upstream-sub",
                                    protocol=mqtt.MQTTv311))
    sub.on_message = lambda c, u, m: got.append((m.topic, json.loads(m.payload)))
    sub.connect(broker.host, broker.port)
    sub.subscribe("city/#", qos=1)
    sub.loop_start()
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
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [t for t, _ in got] == ["city/w1/senml", "city/w1/senml", "city/w1/event"]
        assert [r["rid"] for r in got[0][1]] == ["w1/7/water_volume", "w1/7/temperature"]
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
    sub = broker.secure(mqtt.Client(CallbackAPIVersion.VERSION2, client_id="platform",
                                    clean_session=False,
                                    protocol=mqtt.MQTTv311))
    sub.reconnect_delay_set(1, 1)
    sub.on_message = lambda c, u, m: got.extend(r["seq"] for r in json.loads(m.payload))
    sub.connect(broker.host, broker.port)
    sub.subscribe("city/#", qos=1)
    sub.loop_start()
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
