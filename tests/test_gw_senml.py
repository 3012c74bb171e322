"""The SenML feeds (RFC 8428, with the RFC 8798 units registries and RFC 9100 versions), as a
platform that knows only RFC 8428 reads them.

- The `http` pack and the `mqtt` packs resolve, by the RFC's rules (`resolve_senml`, written
  from the RFC in the tests), to the same records the `file` sink writes one per line; those
  records are written out here by hand.
- Packs lean on base name and base time: no record repeats its item's node prefix or time.
- RSSI, measured in dBm (a secondary unit, which needs the RFC 9100 feature bit in `bver`), is
  sent in the primary unit dBW, so no pack carries a `bver` a plain RFC 8428 consumer refuses.
- An absolute time below 2^28 (SenML would read it as relative to now) is never sent: the item
  is unconvertible, named with its reason, and the rest of the batch goes.
"""

from __future__ import annotations

import dataclasses
import gzip
import json

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import parse_config
from gateway.errors import Unconvertible
from gateway.outbox import Outbox
from gateway.sinks import convert_each, make_sink
from gateway.sinks.mqtt import MqttSink
from gateway_support import Recorder, resolve_senml, wait_for

T0 = 1763712000
EVENT_T = T0 + 61.5

# What the platform must end up with: written by hand from the items below.
RESOLVED = [
    {"n": "w1:water_volume", "u": "m3", "v": 12.345, "t": T0, "node": "w1", "seq": 7,
     "rid": "w1/7/water_volume"},
    {"n": "w1:rssi", "u": "dBW", "v": -91, "t": T0, "node": "w1", "seq": 7, "rid": "w1/7/rssi"},
    {"n": "w1:temperature:2", "u": "Cel", "v": 9.5, "t": T0, "node": "w1", "seq": 7,
     "rid": "w1/7/temperature:2"},
    {"n": "w2:battery_voltage", "u": "V", "v": 3.61, "t": T0 + 60, "node": "w2", "seq": 3,
     "rid": "w2/3/battery_voltage"},
    {"n": "w2:rssi", "u": "dBW", "v": -107, "t": T0 + 60, "node": "w2", "seq": 3,
     "rid": "w2/3/rssi"},
]
EVENT = {"n": "w1:alarm:leak", "vb": True, "t": EVENT_T, "node": "w1", "event": "alarm",
         "rid": f"w1/alarm/leak/{EVENT_T * 1000:.0f}/raised", "vs": "alarms channel = 1"}


def outbox(path, sink: str, extra: list | None = None) -> Outbox:
    box = Outbox(path, sinks=[sink])
    with box.transaction():
        box.add_item("reading", "w1", 7, [
            {"n": "w1:water_volume", "u": "m3", "v": 12.345, "t": T0},
            {"n": "w1:rssi", "u": "dBm", "v": -61, "t": T0},
            {"n": "w1:temperature:2", "u": "Cel", "v": 9.5, "t": T0}], T0)
        for seq, body in extra or []:
            box.add_item("reading", "w1", seq, body, T0)
        box.add_item("reading", "w2", 3, [
            {"n": "w2:battery_voltage", "u": "V", "v": 3.61, "t": T0 + 60},
            {"n": "w2:rssi", "u": "dBm", "v": -77, "t": T0 + 60}], T0)
        box.add_item("event", "w1", None, {"node": "w1", "alarm": "leak", "active": True,
                                           "t": EVENT_T, "detail": "alarms channel = 1"}, T0)
    return box


def batch(tmp_path, sink: str, extra: list | None = None):
    return outbox(tmp_path / f"{sink}.db", sink, extra).claim_batch(
        sink, max_records=20, max_bytes=1 << 20)


def config(tmp_path, name: str, **keys):
    return parse_config({"sinks": {name: keys}}, base_dir=tmp_path).sinks[0]


def assert_compact(pack: list[dict]) -> None:
    """Each record names only its channel and carries no time its base time already says."""
    for rec in pack:
        assert "t" not in rec, rec
        assert not rec["n"].startswith(rec["node"] + ":"), rec
    assert "bver" not in json.dumps(pack) and "dBm" not in json.dumps(pack)


def test_the_http_pack_resolves_to_the_records_with_base_name_and_time(tmp_path):
    rec = Recorder()
    try:
        make_sink(config(tmp_path, "http", url=rec.url)).deliver(batch(tmp_path, "http"))
        [(_, _, body)] = rec.requests
    finally:
        rec.close()
    pack = json.loads(gzip.decompress(body))
    assert resolve_senml(pack) == RESOLVED + [EVENT]
    assert_compact(pack)
    assert [r.get("bn") for r in pack] == ["w1:", None, None, "w2:", None, "w1:"]
    assert [r.get("bt") for r in pack] == [T0, None, None, T0 + 60, None, EVENT_T]


def test_the_file_sink_writes_the_same_records_resolved_one_per_line(tmp_path):
    sink = make_sink(config(tmp_path, "file", path=str(tmp_path / "r.jsonl"),
                            events_path=str(tmp_path / "e.jsonl")))
    sink.open()
    sink.deliver(batch(tmp_path, "file"))
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert lines == RESOLVED
    assert [json.loads(x) for x in (tmp_path / "e.jsonl").read_text().splitlines()] == [EVENT]


def test_the_mqtt_packs_resolve_to_the_same_records(tmp_path, broker):
    got: list[tuple[str, list]] = []
    sub = broker.secure(mqtt.Client(CallbackAPIVersion.VERSION2, client_id="upstream-sub",
                                    protocol=mqtt.MQTTv311))
    sub.on_message = lambda c, u, m: got.append((m.topic, json.loads(m.payload)))
    sub.connect(broker.host, broker.port)
    sub.subscribe("city/#", qos=1)
    sub.loop_start()
    sink = make_sink(config(tmp_path, "mqtt", host=broker.host, port=broker.port,
                            topic_prefix="city", tls=True, ca_file=str(broker.tls.ca_crt)))
    sink.open()
    try:
        wait_for(lambda: sink.client.is_connected(), 10, "the bridge connected")
        sink.deliver(batch(tmp_path, "mqtt"))
        wait_for(lambda: len(got) == 3, 10, "three packs upstream")
    finally:
        sink.close()
        sub.loop_stop()
    assert [t for t, _ in got] == ["city/w1/senml", "city/w2/senml", "city/w1/event"]
    assert [r for _, pack in got for r in resolve_senml(pack)] == RESOLVED + [EVENT]
    for _, pack in got:
        assert_compact(pack)
        assert pack[0]["bn"] and pack[0]["bt"]


RELATIVE = [{"n": "w1:water_volume", "u": "m3", "v": 12.5, "t": 86400}]


@pytest.mark.parametrize("sink", ["http", "mqtt", "file"])
def test_an_absolute_time_below_2_28_is_never_sent(tmp_path, sink):
    """An outbox written before the ingest time window (or a hand-made item) holding a
    reading at 1970-01-02: sent as it is, every platform would read it as one day from now."""
    b = batch(tmp_path, sink, extra=[(8, RELATIVE)])
    convert = {"http": make_sink(config(tmp_path, "http", url="http://127.0.0.1:9/")).convert,
               "mqtt": MqttSink.convert,
               "file": make_sink(config(tmp_path, "file")).convert}[sink]
    with pytest.raises(Unconvertible) as info:
        convert_each(b, convert)
    [(item, reason)] = info.value.items
    assert (item.node, item.seq) == ("w1", 8)
    assert "w1:water_volume: t 86400 is below 2^28" in reason
    rest = dataclasses.replace(b, items=tuple(i for i in b.items if i.seq != 8))
    assert len(convert_each(rest, convert)) == len(b.items) - 1
