"""One record shape: a reading is decoded once, stored in that shape, resolved once.

`wire.decode_reading` is the gateway's only decoder: these tests hold it to encodings the
vectors do not spell out (non-shortest heads, repeated keys, tags ...) and to mutations of the
vectors against a reference built from cbor2's plain decode; what ingest stores resolves to the
vectors' SenML; a partly duplicate message stores its new records only; outboxes of schema 3
(per-record SenML items) and 8 (messages as their CBOR bytes) are carried forward and
delivered.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import cbor2
import pytest

from gateway.channels import default_table
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.errors import WireError
from gateway.outbox import MIGRATIONS, Outbox
from gateway.wire import MAX_PAYLOAD, decode_reading
from gateway_support import old_outbox

VECTORS = Path(__file__).parent / "vectors"
TABLE = default_table()
T0 = 1763712000


def vectors() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(VECTORS.glob("*.json"))]


def valid_payloads() -> list[bytes]:
    return [bytes.fromhex(v["hex"]) for v in vectors()]


def reference(payload: bytes):
    """What a message means, from cbor2's plain decode: (seq, time, [(elapsed, values)]),
    deltas added back by the rule of docs/wire-format.md. Only for payloads the decoder took."""
    msg = cbor2.loads(payload)
    last: dict[int, int] = {}
    elapsed = 0
    records = []
    for rec in msg[3:]:
        elapsed += rec.get(0, 0)
        values = {k: v + last.get(k, 0) for k, v in rec.items() if k}
        last.update(values)
        records.append((elapsed, values))
    return msg[1], msg[2], records


def decoded(payload: bytes):
    r = decode_reading(payload, TABLE)
    return r.seq, r.time, [(rec.elapsed, dict(rec.values)) for rec in r.records]


@pytest.mark.parametrize("variant, reason, offset", [
    ("84011904121a69201c00a2010101", "structure", 13),   # key 1 twice: cbor2 keeps one
    ("84011904121a69201c00a1011801", None, None),         # value 1 in a two-byte head: taken
    ("8401fa3f8000001a69201c00a10101", "type", 2),        # seq as a float
    ("84011904121a69201c00a10101ff", "trailing", 13),     # a trailing byte
    ("9f011904121a69201c00a10101ff", "indefinite", 0),    # indefinite-length message array
    ("84011904121a69201c00bf0101ff", "indefinite", 10),   # indefinite-length record map
    ("84011904121a69201c00a101c24101", "type", 12),       # tag 2 (bignum) value
    ("84011904121a69201c00a101f93c00", "type", 12),       # float value 1.0
    ("84011904121a69201c00a12001", "structure", 11),      # negative key
    ("85021904121a69201c00a10101a1", "version", 1),       # version 2, then truncated
])
def test_encodings_the_vectors_do_not_spell_out(variant, reason, offset):
    payload = bytes.fromhex(variant)
    if reason is None:
        assert decoded(payload) == (1042, 1763712000, [(0, {1: 1})])
        return
    with pytest.raises(WireError) as info:
        decode_reading(payload, TABLE)
    assert (info.value.reason, info.value.offset) == (reason, offset), str(info.value)


def test_mutations_decode_to_what_they_mean_or_name_a_fault():
    """Byte flips, truncations and insertions of every valid vector: each is decoded to the
    reference's values (cbor2's plain decode, deltas added) or rejected with a WireError
    whose offset lies in the payload."""
    rng = random.Random(5)
    checked = accepted = 0
    for payload in valid_payloads():
        variants = [payload[:i] for i in range(len(payload))]
        for _ in range(300):
            b = bytearray(payload)
            i = rng.randrange(len(b))
            op = rng.randrange(3)
            if op == 0:
                b[i] = rng.randrange(256)
            elif op == 1:
                b.insert(i, rng.randrange(256))
            else:
                del b[i]
            variants.append(bytes(b))
        for v in variants:
            checked += 1
            try:
                got = decoded(v)
            except WireError as exc:
                assert 0 <= exc.offset <= max(len(v), 1) and len(v) <= MAX_PAYLOAD, v.hex()
                continue
            assert got == reference(v), v.hex()
            accepted += 1
    assert checked > 3000 and accepted > 50  # some mutations stay valid


def outbox_items(box: Outbox, sink: str) -> list[tuple[str, int | None, list]]:
    batch = box.claim_batch(sink, max_records=10_000, max_bytes=1 << 30)
    return [(it.kind, it.seq, it.body) for it in batch.items]


def test_stored_records_resolve_to_the_vectors_senml(tmp_path):
    config = parse_config({"sinks": {"file": {}}, "api": {"enabled": False}},
                          base_dir=tmp_path)
    gw = Gateway(config)
    gw.open_storage()
    want = []
    for vector in vectors():
        node = vector["node_id"] + "-" + str(len(want))
        received = vector.get("received_at", T0) + 0.75
        payload = bytes.fromhex(vector["hex"])
        assert gw.handle_message(f"m/{node}/r", payload, received_at=received) == "accepted"
        want += [{**r, "n": node + r["n"][len(vector["node_id"]):]} for r in vector["senml"]]
    kinds = {k for (k,) in gw.box.db.execute("SELECT kind FROM items")}
    assert kinds == {"records"}  # the decoded records, not SenML
    got = [r for _, _, body in outbox_items(Outbox(config.outbox.path), "file") for r in body]
    assert json.dumps(got) == json.dumps(want)  # same values, same types (21.53, not 21.5300)


def test_partly_duplicate_message_stores_only_new_records(tmp_path):
    config = parse_config({"sinks": {"file": {}}, "api": {"enabled": False}},
                          base_dir=tmp_path)
    gw = Gateway(config)
    msg = lambda seq, n: cbor2.dumps([1, seq, T0, *({1: 100 + k} for k in range(n))])
    assert gw.handle_message("m/n1/r", msg(10, 3), received_at=T0) == "accepted"  # 10-12
    assert gw.handle_message("m/n1/r", msg(11, 3), received_at=T0) == "accepted"  # 13 new
    assert gw.handle_message("m/n1/r", msg(10, 3), received_at=T0) == "duplicate"
    seqs = [seq for _, seq, _ in outbox_items(gw.box, "file")]
    assert seqs == [10, 11, 12, 13]
    assert gw.stats.snapshot()["accepted_records"] == 4
    assert gw.stats.snapshot()["duplicates"] == 5


def test_schema_3_outbox_with_pending_records_is_delivered_after_the_upgrade(tmp_path):
    path = tmp_path / "o.db"
    db = old_outbox(path, 3)
    body = json.dumps([{"n": "n1:temperature", "u": "Cel", "v": 21.5, "t": T0}])
    db.execute("INSERT INTO items(id, kind, node, seq, created, body) "
               "VALUES (1, 'reading', 'n1', 7, ?, ?)", (T0, body))
    db.execute("INSERT INTO pending(sink, item, batch, bytes, created) VALUES "
               "('file', 1, NULL, ?, ?)", (len(body), T0))
    db.execute("INSERT INTO nodes(node, min_seq, max_seq) VALUES ('n1', 7, 7)")
    db.close()
    config = parse_config({"sinks": {"file": {}}, "api": {"enabled": False},
                           "outbox": {"path": "o.db"}}, base_dir=tmp_path)
    gw = Gateway(config)
    gw.open_storage()
    assert gw.box.schema_version == len(MIGRATIONS) == 10
    assert gw.box.backlog("file")[0] == 1
    assert gw.handle_message("m/n1/r", cbor2.dumps([1, 7, T0, {1: 2150}]),
                             received_at=T0) == "duplicate"
    assert gw.handle_message("m/n1/r", cbor2.dumps([1, 8, T0, {1: 2160}, {1: 10}]),
                             received_at=T0) == "accepted"
    assert gw.box.backlog("file")[0] == 3
    items = outbox_items(gw.box, "file")
    assert [(k, s, [r["v"] for r in b]) for k, s, b in items] == [
        ("reading", 7, [21.5]), ("reading", 8, [21.6]), ("reading", 9, [21.7])]


def test_acknowledged_messages_are_not_delivered_again(tmp_path, broker):
    """The PUBACKs of a batch go out together: after the gateway committed and stopped, the
    broker holds nothing more for its session (while a message it never saw is kept)."""
    import threading
    import time

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    config = parse_config({"mqtt": {"host": broker.host, "port": broker.port,
                                    "client_id": "gw-acks", "ca_file": str(broker.tls.ca_crt)},
                           "sinks": {"file": {"path": "r.jsonl"}}, "api": {"enabled": False}},
                          base_dir=tmp_path)
    pub = broker.secure(mqtt.Client(CallbackAPIVersion.VERSION2, client_id="acks-pub",
                                    protocol=mqtt.MQTTv311))
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    gw = Gateway(config)
    gw.start()
    try:
        deadline = time.monotonic() + 30
        while not gw.stats.snapshot().get("subscribed"):
            assert time.monotonic() < deadline, "gateway did not subscribe"
            time.sleep(0.02)
        infos = [pub.publish(f"m/a{i % 3}/r", cbor2.dumps([1, i // 3, T0, {1: i}]), qos=1)
                 for i in range(600)]
        for info in infos:
            info.wait_for_publish(30)
        while gw.stats.snapshot()["accepted_messages"] < 600:
            assert time.monotonic() < deadline, gw.stats.snapshot()
            time.sleep(0.02)
    finally:
        gw.stop()
        gw.shutdown()
    pub.publish("m/a9/r", cbor2.dumps([1, 0, T0, {1: 1}]), qos=1).wait_for_publish(30)
    pub.disconnect()
    pub.loop_stop()

    got: list[str] = []
    arrived = threading.Event()
    sub = broker.secure(mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gw-acks",
                                    clean_session=False, protocol=mqtt.MQTTv311))

    def on_message(client, userdata, message):
        got.append(message.topic)
        arrived.set()

    sub.on_message = on_message
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    try:
        assert arrived.wait(30)
        time.sleep(0.5)  # anything still unacknowledged arrives with it
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert got == ["m/a9/r"]


def test_a_bug_on_the_hot_path_quarantines_only_its_message(tmp_path, monkeypatch):
    """A message that raises after it was queued for the batch insert is rolled back alone
    (the rerun with a savepoint per message); the messages around it are stored."""
    from gateway.ingest import Message
    from gateway_support import break_readings_of

    config = parse_config({"sinks": {"file": {}}, "api": {"enabled": False}},
                          base_dir=tmp_path)
    gw = Gateway(config)
    gw.open_storage()
    break_readings_of(monkeypatch, "boom")
    msg = lambda node, seq: Message(f"m/{node}/r", cbor2.dumps([1, seq, T0, {1: seq}]),
                                    received_at=T0)
    outcomes = gw.ingestor.handle_batch([msg("n1", 1), msg("boom", 1), msg("n1", 2)])
    assert outcomes == ["accepted", "internal", "accepted"]
    assert gw.box.db.execute("SELECT node, seq FROM items ORDER BY id").fetchall() == [
        ("n1", 1), ("n1", 2)]
    assert gw.box.db.execute("SELECT reason FROM quarantine").fetchall() == [("internal",)]
    assert [s for _, s, _ in outbox_items(gw.box, "file")] == [1, 2]


def test_a_rolled_back_message_leaves_no_trace_in_dedup(tmp_path, monkeypatch):
    """The message that failed is rolled back with its node's in-memory dedup state: when the
    node sends the same seq again (a retry after the fix), it is stored, not dropped as a
    duplicate of something never stored."""
    from gateway.ingest import Message
    from gateway_support import break_readings_of

    config = parse_config({"sinks": {"file": {}}, "api": {"enabled": False}},
                          base_dir=tmp_path)
    gw = Gateway(config)
    gw.open_storage()
    broken = [True]
    break_readings_of(monkeypatch, "n2", lambda: broken[0])
    msg = lambda node, seq: Message(f"m/{node}/r", cbor2.dumps([1, seq, T0, {1: seq}]),
                                    received_at=T0)
    assert gw.ingestor.handle_batch([msg("n1", 1), msg("n2", 7)]) == ["accepted", "internal"]
    broken[0] = False
    assert gw.ingestor.handle_batch([msg("n2", 7)]) == ["accepted"]
    assert gw.box.db.execute("SELECT node, seq FROM items ORDER BY id").fetchall() == [
        ("n1", 1), ("n2", 7)]



def test_schema_8_outbox_of_cbor_messages_is_delivered_after_the_upgrade(tmp_path):
    """Gateways before schema 9 stored each message's CBOR bytes (kind "message", with the
    first new seq and the count of new records), and marked a claimed batch on its pending
    rows: after the upgrade the open batch is handed out again with its key and its items
    only, those items resolve to the vectors' SenML, a run of a partly duplicate message
    included, and new messages are stored as records beside them."""
    path = tmp_path / "o.db"
    db = old_outbox(path, 8)
    want = []
    for item, vector in enumerate(vectors(), 1):
        payload = bytes.fromhex(vector["hex"])
        reading = decode_reading(payload, TABLE)
        received = vector.get("received_at", T0)
        seq, count, senml = reading.seq, len(reading.records), vector["senml"]
        if count > 1:  # the run of its last records only, as a partly duplicate message was
            seq, count = seq + 1, count - 1
            senml = senml[len(reading.records[0].values):]  # (the pack is in record order)
        db.execute("INSERT INTO items(id, kind, node, seq, created, body) "
                   "VALUES (?, 'message', ?, ?, ?, ?)",
                   (item, vector["node_id"], seq, received, payload))
        db.execute("INSERT INTO pending(sink, item, batch, bytes, created, records) VALUES "
                   "('file', ?, NULL, 100, ?, ?)", (item, received, count))
        want += senml
    db.execute("INSERT INTO batches(id, sink, key, created) VALUES (4, 'file', 'k-open', ?)",
               (T0,))
    db.execute("UPDATE pending SET batch=4 WHERE item<=2")
    db.close()
    config = parse_config({"sinks": {"file": {}}, "api": {"enabled": False},
                           "outbox": {"path": "o.db"}}, base_dir=tmp_path)
    gw = Gateway(config)
    gw.open_storage()
    assert gw.box.schema_version == 10
    assert gw.handle_message("m/n9/r", cbor2.dumps([1, 3, T0, {1: 2150}]),
                             received_at=T0) == "accepted"
    retry = gw.box.claim_batch("file", max_records=10_000, max_bytes=1 << 30)
    assert retry.key == "k-open" and {it.id for it in retry.items} == {1, 2}
    gw.box.confirm(retry)
    got = [r for it in retry.items for r in it.body]
    got += [r for _, _, body in outbox_items(gw.box, "file") for r in body]
    assert json.dumps(got) == json.dumps(want + [{"n": "n9:temperature", "u": "Cel",
                                                  "v": 21.5, "t": T0}])
    assert any(len(v["senml"]) > 1 for v in vectors())  # (a run was checked)



def test_a_stored_body_of_the_wrong_type_is_named_not_a_crash(tmp_path):
    """A body a damaged file turned into text is set apart like any unreadable one (the
    batcher dead-letters it, tests/test_gw_poison.py), named with what it holds; the
    reading beside it resolves."""
    config = parse_config({"sinks": {"file": {}}, "api": {"enabled": False}},
                          base_dir=tmp_path)
    gw = Gateway(config)
    gw.open_storage()
    for seq in (1, 2):
        assert gw.handle_message("m/n1/r", cbor2.dumps([1, seq, T0, {1: 2150 + seq}]),
                                 received_at=T0) == "accepted"
    gw.box.db.execute("UPDATE items SET body='{oops' WHERE seq=1")
    bad, good = gw.box.claim_batch("file", max_records=10, max_bytes=1 << 20).items
    assert bad.body == {"unreadable": "stored item 1 (records) cannot be read: TypeError: "
                                      "a bytes-like object is required, not 'str'",
                        "stored": "'{oops'"}
    assert (good.seq, [r["v"] for r in good.body]) == (2, [21.52])
