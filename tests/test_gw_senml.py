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

import pytest

from gateway.config import parse_config
from gateway.errors import Unconvertible
from gateway.outbox import Outbox
from gateway.sinks import convert_each, make_sink
from gateway.sinks.mqtt import MqttSink
from gateway_support import Recorder, resolve_senml, subscriber, wait_for

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
    sub = subscriber(broker, lambda topic, pack: got.append((topic, pack)))
    sink = make_sink(config(tmp_path, "mqtt", host=broker.host, port=broker.port,
                            topic_prefix="city", tls=True, ca_file=str(broker.tls.ca_crt)))
    sink.open()
    try:
        wait_for(lambda: sink.client.is_connected(), 10, "the bridge connected")
        sink.deliver(batch(tmp_path, "mqtt"))
        wait_for(lambda: len(got) == 2, 10, "the readings' pack and the event upstream")
    finally:
        sink.close()
        sub.loop_stop()
    # one pack holds the batch's readings (both nodes); the event goes on its own
    assert [t for t, _ in got] == ["city/senml", "city/w1/event"]
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


# ---- the packs as sent: formatted straight from the records, bounded for MQTT ---------------

def test_resolved_records_are_formatted_as_the_general_encoder_writes_them_byte_for_byte():
    """The http and mqtt sinks (`pack_json`) and the file sink (`reading_lines`) format the
    records the resolver made (`wire.Resolved`, what the outbox hands out for every stored
    reading) straight from their values. For every key of the channel table (every unit, the
    secondary unit dBm, the unitless alarm bits, every instance), values of every scale, sign
    and size the wire takes, in readings of two records at two times, that is exactly the bytes
    of the general encoder; names and units JSON escapes, and a time SenML would read as
    relative, go to the general encoder, which writes them or raises what it raises."""
    from gateway.channels import default_table
    from gateway.outbox import Item
    from gateway.sinks.base import CONVERSION_ERRORS, _encode, _resolved_json, pack_json, \
        senml_pack, senml_records
    from gateway.sinks.file import encode_line, reading_lines
    from gateway.wire import Reading, Record, Resolved, Resolver

    def general(item):
        try:
            return _encode(senml_pack(item))[1:-1], [encode_line(r) for r in senml_records(item)]
        except CONVERSION_ERRORS as exc:
            return type(exc)

    def formatted(item):
        try:
            return pack_json(item), reading_lines(item)
        except CONVERSION_ERRORS as exc:
            return type(exc)

    table = default_table()
    resolver = Resolver(table)
    values = [0, 1, -1, 7, 2153, -61, 101325, 10**15 + 7, 2**53 - 1, -(2**53 - 1)]
    fast = 0
    units = set()
    for key in sorted(table.keys):
        channel, _ = table.lookup(key)
        units.add(channel.unit)
        other = 1 if key != 1 else 2
        for v in values:
            reading = Reading(40, T0, [Record(0, {key: v, other: 3}), Record(60, {key: -v})])
            for i, senml in enumerate(resolver.records("w1-7", reading, received_at=T0)):
                assert type(senml) is Resolved
                item = Item(1, "reading", "w1-7", 40 + i, T0, senml)
                assert formatted(item) == general(item), item
                fast += _resolved_json(item.node, item.seq, senml) is not None
    assert fast == 2 * len(values) * len(table.keys)
    assert {"", "dBm", "Cel", "m3"} <= units  # (unitless, secondary and primary units met)
    # wire key -> (SenML n, unit, scale), as the resolver would hold them if it could
    odd = [(T0, {1: ("w1:temperature", 'a"b', 0)}),                   # escapes in u
           (T0, {1: ("w1:temperature", "\u00b5S", 0)}),                # non-ASCII u
           (T0, {1: ('w1:x"y', "", 0)}),                                # escapes in n
           (T0, {1: ("other:temperature", "Cel", 0)}),                  # another node's name
           (86400, {1: ("w1:temperature", "Cel", 0)})]                  # relative in SenML
    for t, names in odd:
        item = Item(1, "reading", "w1", 7, T0, Resolved(t, {1: 2}, names))
        assert formatted(item) == general(item), item
        assert _resolved_json("w1", 7, item.body) is None


def test_the_mqtt_packs_fit_pack_max_bytes_and_resolve_to_the_batch(tmp_path):
    """The bridge packs a batch's readings into as few messages as fit `pack_max_bytes`; a
    reading record too big for one pack is cut into parts, each led by its base name and
    time again; an event goes on its own. Together they resolve to the file sink's records."""
    big = [(8, [{"n": f"w1:temperature:{i}" if i else "w1:temperature", "u": "Cel",
                 "v": 10 + i / 4, "t": T0 + 30} for i in range(16)])]
    small = [(9 + i, [{"n": "w1:water_volume", "u": "m3", "v": 12.5 + i, "t": T0 + 60 + i},
                      {"n": "w1:rssi", "u": "dBm", "v": -60 - i, "t": T0 + 60 + i}])
             for i in range(12)]
    b = outbox(tmp_path / "m.db", "mqtt", big + small).claim_batch(
        "mqtt", max_records=50, max_bytes=1 << 20)
    file_sink = make_sink(config(tmp_path, "file"))
    want = [json.loads(line) for item in b.items for line in file_sink.convert(item)]
    sink = make_sink(config(tmp_path, "mqtt", host="127.0.0.1", pack_max_bytes=1024))
    messages = sink.messages(b)
    assert [t for t, _ in messages] == ["meterlink/senml"] * (len(messages) - 1) + [
        "meterlink/w1/event"]
    assert all(len(payload) <= 1024 for _, payload in messages), \
        [len(p) for _, p in messages]
    packs = [json.loads(payload) for _, payload in messages]
    assert [r for pack in packs for r in resolve_senml(pack)] == want
    for pack in packs:
        assert_compact(pack)
        assert pack[0]["bn"] and pack[0]["bt"]
    assert 5 <= len(messages) <= 8, "as few packs as fit, not one per record"
    # the big record (16 values, about 1.6 KB) is cut in two; no other record is cut
    seqs = [{r.get("seq") for r in pack} for pack in packs]
    assert sum(8 in s for s in seqs) == 2
    assert all(sum(seq in s for s in seqs) == 1 for seq in [7, *range(9, 21)])
    # and the whole batch in one message when it fits
    roomy = make_sink(config(tmp_path, "mqtt", host="127.0.0.1"))
    assert [t for t, _ in roomy.messages(b)] == ["meterlink/senml", "meterlink/w1/event"]
    with pytest.raises(Exception, match=r"sinks\.mqtt\.pack_max_bytes must be an integer "
                                        r"1024-16777216: got 100"):
        config(tmp_path, "mqtt", host="127.0.0.1", pack_max_bytes=100)
