"""The outbox (SQLite), the ingest path, the registry and alarms, and the file sink, without a
broker: `Gateway.handle_message` is the whole path after MQTT, committed to a real database."""

import json
import sqlite3

import cbor2
import pytest

from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.errors import SinkError
from gateway.ingest import Message
from gateway.outbox import SCHEMA_VERSION, Outbox
from gateway.sinks import make_sink
from gateway_support import old_outbox

T0 = 1763712000


def reading(seq: int, *records: dict, t: int = T0) -> bytes:
    return cbor2.dumps([1, seq, t, *records], canonical=True)


def status(**fields) -> bytes:
    return cbor2.dumps(fields, canonical=True)


def make_gateway(tmp_path, **gateway_keys) -> Gateway:
    config = parse_config({"sinks": {"file": {}}, "api": {"enabled": False},
                           "gateway": gateway_keys}, base_dir=tmp_path)
    gw = Gateway(config)
    gw.open_storage()
    return gw


def drain(gw: Gateway, sink: str = "file") -> int:
    """Delivers everything pending for `sink` with the real sink; returns batches delivered."""
    box = Outbox(gw.config.outbox.path)
    cfg = next(s for s in gw.config.sinks if s.name == sink)
    s = make_sink(cfg)
    s.open()
    n = 0
    while (batch := box.claim_batch(sink, max_records=3, max_bytes=1 << 20)) is not None:
        s.deliver(batch)
        box.confirm(batch)
        n += 1
    box.close()
    return n


def lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_schema_is_versioned_and_a_newer_one_is_refused(tmp_path):
    box = Outbox(tmp_path / "o.db")
    assert box.schema_version == SCHEMA_VERSION
    assert box.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    box.db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    box.close()
    with pytest.raises(SinkError, match=f"schema version {SCHEMA_VERSION + 1}"):
        Outbox(tmp_path / "o.db")


def test_migrations_carry_an_old_outbox_forward(tmp_path):
    """A version-2 outbox (dedup by one `seen` row per record) becomes the current version
    (3: dedup by ranges)."""
    db = old_outbox(tmp_path / "o.db", 2)
    db.execute("INSERT INTO nodes(node, max_seq) VALUES ('n1', 12)")
    db.executemany("INSERT INTO seen VALUES ('n1', ?, 0)", [(s,) for s in (9, 10, 12)])
    db.execute("INSERT INTO gaps VALUES ('n1', 11, 11)")
    db.close()
    config = parse_config({"sinks": {"file": {}}, "api": {"enabled": False},
                           "outbox": {"path": "o.db"}}, base_dir=tmp_path)
    gw = Gateway(config)
    gw.open_storage()
    assert gw.box.schema_version == SCHEMA_VERSION == 10
    assert gw.box.query("SELECT min_seq, max_seq FROM nodes") == [{"min_seq": 9,
                                                                   "max_seq": 12}]
    outcomes = [gw.handle_message("m/n1/r", reading(s, {1: 1}), received_at=T0)
                for s in (9, 10, 11, 12, 8, 13)]
    assert outcomes == ["duplicate", "duplicate", "accepted", "duplicate", "accepted",
                        "accepted"]


def test_dedup_index_grows_with_gaps_not_with_readings(tmp_path):
    gw = make_gateway(tmp_path)
    for seq in range(100, 400):
        gw.handle_message("m/n1/r", reading(seq, {1: 1}), received_at=T0)
    assert gw.box.gaps() == []
    assert gw.handle_message("m/n1/r", reading(250, {1: 1}), received_at=T0) == "duplicate"
    assert gw.handle_message("m/n1/r", reading(99, {1: 1}), received_at=T0) == "accepted"
    assert gw.handle_message("m/n1/r", reading(90, {1: 1}), received_at=T0) == "accepted"
    assert gw.box.gaps() == [("n1", 91, 98)]
    assert gw.handle_message("m/n1/r", reading(95, {1: 1}), received_at=T0) == "accepted"
    assert gw.handle_message("m/n1/r", reading(95, {1: 1}), received_at=T0) == "duplicate"
    assert gw.box.gaps() == [("n1", 91, 94), ("n1", 96, 98)]


def test_accepts_dedups_across_restarts_and_delivers_once(tmp_path):
    gw = make_gateway(tmp_path)
    msg = reading(10, {1: 2153, 2: 4523}, {0: 60, 1: 5})
    assert gw.handle_message("m/n1/r", msg, received_at=T0) == "accepted"
    assert gw.handle_message("m/n1/r", msg, received_at=T0) == "duplicate"
    gw.box.close()
    gw2 = make_gateway(tmp_path)  # a restart: dedup comes from the database
    assert gw2.handle_message("m/n1/r", msg, received_at=T0) == "duplicate"
    assert gw2.handle_message("m/n1/r", reading(11, {1: 1}), received_at=T0) == "duplicate"
    assert gw2.handle_message("m/n1/r", reading(12, {1: 1}), received_at=T0) == "accepted"
    drain(gw2)
    got = lines(tmp_path / "readings.jsonl")
    assert [(x["node"], x["seq"], x["n"], x["v"]) for x in got] == [
        ("n1", 10, "n1:temperature", 21.53), ("n1", 10, "n1:humidity", 45.23),
        ("n1", 11, "n1:temperature", 21.58), ("n1", 12, "n1:temperature", 0.01)]
    assert got[0]["rid"] == "n1/10/temperature" and got[2]["t"] == T0 + 60
    snap = gw2.stats.snapshot()
    assert snap["duplicates"] == 3 and snap["accepted_records"] == 1
    assert gw2.box.db.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 0


def test_every_rejection_is_quarantined_with_its_bytes_and_reason(tmp_path):
    gw = make_gateway(tmp_path)
    cases = [("m/n1/r", b"", "empty"), ("m/n1/r", b"\x85\x02\x01", "version"),
             ("m/N1/r", reading(1, {1: 1}), "topic"), ("m/n1/r", b"\xa0" * 5000, "too_large"),
             ("m/" + "x" * 200 + "/r", reading(1, {1: 1}), "topic_length"),
             ("m/n1/s", b"\xa1\x61", "cbor"), ("m/n1/a", status(id=1), "structure")]
    for topic, payload, _ in cases:
        assert gw.handle_message(topic, payload, received_at=T0) == "rejected"
    rows = gw.box.query("SELECT topic, payload, reason FROM quarantine ORDER BY id")
    assert [(r["topic"], r["payload"], r["reason"]) for r in rows] == cases
    assert gw.stats.snapshot()["rejected_by_reason"] == {r: 1 for _, _, r in cases}


def test_quarantine_keeps_the_newest_rows(tmp_path):
    config = parse_config({"sinks": {"file": {}}, "api": {"enabled": False},
                           "outbox": {"quarantine_keep": 3}}, base_dir=tmp_path)
    gw = Gateway(config)
    for i in range(5):
        gw.handle_message("m/n1/r", bytes([i]), received_at=T0)
    assert [r["payload"] for r in gw.box.query("SELECT payload FROM quarantine ORDER BY id")] \
        == [b"\x02", b"\x03", b"\x04"]


def test_registration_is_enforced_only_when_configured(tmp_path):
    gw = make_gateway(tmp_path, require_registration=True)
    assert gw.handle_message("m/n1/r", reading(1, {1: 1}), received_at=T0) == "rejected"
    assert gw.stats.snapshot()["rejected_by_reason"] == {"unregistered": 1}
    gw.box.db.execute("UPDATE nodes SET registered=1 WHERE node='n1'")
    gw.box.db.execute("INSERT OR IGNORE INTO nodes(node, registered) VALUES ('n1', 1)")
    assert gw.handle_message("m/n1/r", reading(1, {1: 1}), received_at=T0) == "accepted"


def test_gaps_are_tracked_and_the_gaps_alarm_raised_and_cleared_once(tmp_path):
    gw = make_gateway(tmp_path)
    for seq in (1, 2, 6, 4):
        gw.handle_message("m/n1/r", reading(seq, {1: 1}), received_at=T0 + seq)
    assert gw.box.gaps("n1") == [("n1", 3, 3), ("n1", 5, 5)]
    for seq in (3, 5):
        gw.handle_message("m/n1/r", reading(seq, {1: 1}), received_at=T0 + 10 + seq)
    assert gw.box.gaps("n1") == []
    events = gw.box.query("SELECT body FROM items WHERE kind='event' ORDER BY id")
    got = [(json.loads(e["body"])["alarm"], json.loads(e["body"])["active"]) for e in events]
    assert got == [("gaps", True), ("gaps", False)]


def test_instances_in_a_shared_group_track_gaps_but_raise_no_gaps_alarm(tmp_path):
    # each instance sees only part of every node's messages: its gaps are not the node's
    config = parse_config({"sinks": {"file": {}}, "api": {"enabled": False},
                           "mqtt": {"shared_group": "meters"}}, base_dir=tmp_path)
    gw = Gateway(config)
    gw.open_storage()
    for seq in (1, 2, 6):
        gw.handle_message("m/n1/r", reading(seq, {1: 1}), received_at=T0 + seq)
    assert gw.box.gaps("n1") == [("n1", 3, 5)]
    assert not gw.box.query("SELECT body FROM items WHERE kind='event'")
    assert not gw.box.alarms.active()


def test_alarm_bits_battery_and_queue_overflow_raise_and_clear_once(tmp_path):
    gw = make_gateway(tmp_path, low_battery_mv=3300, offline_grace_s=0)
    h = gw.handle_message
    h("m/n1/r", reading(1, {16: 1, 7: 3600}), received_at=T0)        # leak
    h("m/n1/r", reading(2, {16: 1}, {16: 4}), received_at=T0 + 1)    # leak; + tamper (delta)
    h("m/n1/r", reading(5, {16: 0, 7: 3200}), received_at=T0 + 2)    # clear; battery low; gap
    h("m/n1/r", reading(6, {7: 3350}), received_at=T0 + 3)           # inside the hysteresis
    h("m/n1/s", status(on=True, qd=0, q=3, fw="1.2.0"), received_at=T0 + 4)
    h("m/n1/s", status(on=True, qd=7, q=50), received_at=T0 + 5)     # 7 records dropped
    h("m/n1/s", status(on=True, qd=7, q=10), received_at=T0 + 6)
    h("m/n1/s", status(on=False), received_at=T0 + 7)                # the Last Will
    events = [json.loads(r["body"]) for r in
              gw.box.query("SELECT body FROM items WHERE kind='event' ORDER BY id")]
    assert [(e["alarm"], e["active"]) for e in events] == [
        ("leak", True), ("tamper", True), ("leak", False), ("tamper", False),
        ("low_battery", True), ("gaps", True), ("queue_overflow", True),
        ("queue_overflow", False), ("offline", True)]
    node = gw.box.query("SELECT state, fw, qd, q, battery_mv FROM nodes WHERE node='n1'")[0]
    assert node == {"state": "offline", "fw": "1.2.0", "qd": 7, "q": 10, "battery_mv": 3350}


def test_the_gas_and_flood_bits_raise_and_clear_once_per_instance(tmp_path):
    gw = make_gateway(tmp_path)
    h = gw.handle_message
    h("m/n1/r", reading(1, {16: 16}), received_at=T0)                 # gas
    h("m/n1/r", reading(2, {16: 48}, {16: 0}), received_at=T0 + 1)   # + flood; held (delta 0)
    h("m/n1/r", reading(4, {16: 32}), received_at=T0 + 2)             # gas clears
    h("m/n1/r", reading(5, {16: 0, 80: 32}), received_at=T0 + 3)      # flood clears; flood:1
    h("m/n1/r", reading(6, {80: 32}), received_at=T0 + 4)             # flood:1 held
    h("m/n1/r", reading(7, {80: 0}), received_at=T0 + 5)              # flood:1 clears
    events = [json.loads(r["body"]) for r in
              gw.box.query("SELECT body FROM items WHERE kind='event' ORDER BY id")]
    assert [(e["alarm"], e["active"], e["t"]) for e in events] == [
        ("gas", True, T0), ("flood", True, T0 + 1), ("gas", False, T0 + 2),
        ("flood", False, T0 + 3), ("flood:1", True, T0 + 3), ("flood:1", False, T0 + 5)]
    assert [e["detail"] for e in events[:2]] == ["alarms channel = 16", "alarms channel = 48"]
    log = gw.box.query("SELECT alarm, raised_at, cleared_at FROM alarm_log ORDER BY id")
    assert [tuple(r.values()) for r in log] == [
        ("gas", T0, T0 + 2), ("flood", T0 + 1, T0 + 3), ("flood:1", T0 + 3, T0 + 5)]


def test_stale_nodes_raise_once_and_clear_on_the_next_message(tmp_path):
    gw = make_gateway(tmp_path, stale_intervals=3)
    gw.handle_message("m/n1/s", status(on=True, iv=60), received_at=T0)
    gw.ingestor.periodic(T0 + 170)
    gw.ingestor.periodic(T0 + 181)
    gw.ingestor.periodic(T0 + 300)
    gw.handle_message("m/n1/r", reading(1, {1: 1}), received_at=T0 + 301)
    events = [json.loads(r["body"]) for r in
              gw.box.query("SELECT body FROM items WHERE kind='event' ORDER BY id")]
    assert [(e["alarm"], e["active"], e["t"]) for e in events] == [
        ("stale", True, T0 + 181), ("stale", False, T0 + 301)]


def test_a_retried_batch_keeps_its_key_and_items_and_rejects_go_to_dead_letters(tmp_path):
    box = Outbox(tmp_path / "o.db", sinks=["a", "b"])
    with box.transaction():
        for seq in range(5):
            box.add_item("reading", "n1", seq, [{"n": "n1:x", "v": seq, "t": T0}], T0)
    first = box.claim_batch("a", max_records=3, max_bytes=1 << 20)
    box.failed(first, "HTTP 503")
    again = box.claim_batch("a", max_records=3, max_bytes=1 << 20)
    assert (again.key, [i.seq for i in again.items], again.attempts) == \
        (first.key, [0, 1, 2], 1)
    box.dead_letter(again, 400, '{"error": "bad unit"}')
    rest = box.claim_batch("a", max_records=3, max_bytes=1 << 20)
    assert [i.seq for i in rest.items] == [3, 4] and rest.key != first.key
    box.confirm(rest)
    assert box.backlog("a")[0] == 0 and box.backlog("b")[0] == 5  # b is untouched
    dead = box.query("SELECT sink, status, reply, batch_key FROM deadletters")
    assert dead == [{"sink": "a", "status": 400, "reply": '{"error": "bad unit"}',
                     "batch_key": first.key}]


def test_a_confirm_cuts_the_next_full_batch_in_its_commit_which_a_restart_keeps(tmp_path):
    """A draining sink commits once a batch, not twice: the confirm also cuts the next batch
    when the backlog fills one. That batch is handed out as cut, also after a restart before
    it was sent (same key, no attempt counted); a partial tail is not cut early; an item
    leaves the outbox once every sink took it."""
    box = Outbox(tmp_path / "o.db", sinks=["a", "b"])
    with box.transaction():
        for seq in range(8):
            box.add_item("reading", "n1", seq, [{"n": "n1:x", "v": seq, "t": T0}], T0)
    limits = {"max_records": 3, "max_bytes": 1 << 20}
    first = box.claim_batch("a", **limits)
    box.confirm(first, then_cut=(3, 1 << 20))
    assert box.has_open_batch("a") and not box.has_open_batch("b")
    box.close()
    box = Outbox(tmp_path / "o.db", sinks=["a", "b"])
    second = box.claim_batch("a", **limits)
    assert [i.seq for i in second.items] == [3, 4, 5] and second.attempts == 0
    assert second.key != first.key and box.claim_batch("a", **limits).key == second.key
    box.confirm(second, then_cut=(3, 1 << 20))
    assert not box.has_open_batch("a")  # 6 and 7 wait for more or for the batch age
    last = box.claim_batch("a", **limits)
    assert [i.seq for i in last.items] == [6, 7]
    box.confirm(last, then_cut=(3, 1 << 20))
    assert box.backlog("a")[0] == 0 and box.item_count() == 8  # b has them all still
    while (batch := box.claim_batch("b", max_records=5, max_bytes=1 << 20)) is not None:
        box.confirm(batch, then_cut=(5, 1 << 20))
    assert box.backlog("b")[0] == 0 and box.item_count() == 0


def test_file_sink_writes_a_batch_cut_by_a_crash_exactly_once(tmp_path):
    gw = make_gateway(tmp_path)
    for seq in range(1, 4):
        gw.handle_message("m/n1/r", reading(seq, {1: seq, 2: seq}), received_at=T0)
    box = Outbox(gw.config.outbox.path)
    batch = box.claim_batch("file", max_records=10, max_bytes=1 << 20)
    sink = make_sink(gw.config.sink)
    sink.open()
    sink.deliver(batch)
    full = (tmp_path / "readings.jsonl").read_bytes()
    # the crash: only 3 lines and half of the 4th reached the disk, and nothing was confirmed
    cut = full.split(b"\n")
    (tmp_path / "readings.jsonl").write_bytes(b"\n".join(cut[:3]) + b"\n" + cut[3][:10])
    box.close()
    box = Outbox(gw.config.outbox.path)
    batch = box.claim_batch("file", max_records=10, max_bytes=1 << 20)  # handed back
    restarted = make_sink(gw.config.sink)
    restarted.open()
    restarted.deliver(batch)
    box.confirm(batch)
    assert (tmp_path / "readings.jsonl").read_bytes() == full
    assert box.claim_batch("file", max_records=10, max_bytes=1 << 20) is None


def test_file_sink_rotates(tmp_path):
    config = parse_config({"sinks": {"file": {"rotate_bytes": 1024, "keep": 2}},
                           "api": {"enabled": False}}, base_dir=tmp_path)
    gw = Gateway(config)
    for seq in range(40):
        gw.handle_message("m/n1/r", reading(seq, {1: seq}), received_at=T0)
        drain(gw)
    files = sorted(p.name for p in tmp_path.glob("readings.jsonl*"))
    assert files == ["readings.jsonl", "readings.jsonl.1", "readings.jsonl.2"]
    assert all(p.stat().st_size < 1024 + 400 for p in tmp_path.glob("readings.jsonl*"))
    seqs = [x["seq"] for name in reversed(files) for x in lines(tmp_path / name)]
    assert seqs == sorted(seqs) and seqs[-1] == 39


def test_outbox_write_failure_raises_sink_error_only(tmp_path):
    gw = make_gateway(tmp_path)
    gw.box.db.execute("PRAGMA query_only=1")
    with pytest.raises(SinkError):
        gw.handle_message("m/n1/r", reading(1, {1: 1}), received_at=T0)
    with pytest.raises(sqlite3.OperationalError):
        gw.box.db.execute("INSERT INTO gaps VALUES ('x', 1, 2)")


def test_a_bug_on_one_message_quarantines_only_that_message(tmp_path, monkeypatch):
    gw = make_gateway(tmp_path)
    real = gw.ingestor.registry.status

    def status(node, fields, now):
        if node == "boom":
            raise KeyError("a bug")
        return real(node, fields, now)

    monkeypatch.setattr(gw.ingestor.registry, "status", status)
    batch = [Message("m/n1/r", reading(1, {1: 1}), received_at=T0),
             Message("m/boom/s", status_payload := cbor2.dumps({"on": True}), received_at=T0),
             Message("m/n2/s", status_payload, received_at=T0),
             Message("m/n1/r", reading(2, {1: 1}), received_at=T0)]
    assert gw.ingestor.handle_batch(batch) == ["accepted", "internal", "status", "accepted"]
    snap = gw.stats.snapshot()
    assert (snap["received"], snap["accepted_records"], snap["status_messages"]) == (4, 2, 1)
    assert snap["rejected_by_reason"] == {"internal": 1}
    rows = gw.box.query("SELECT topic, reason FROM quarantine")
    assert rows == [{"topic": "m/boom/s", "reason": "internal"}]
    assert gw.box.query("SELECT COUNT(*) AS n FROM items")[0]["n"] == 2


def offline_events(gw: Gateway) -> list[tuple[bool, str | None]]:
    return [(b["active"], b.get("detail")) for b in
            (json.loads(r["body"]) for r in gw.box.query(
                "SELECT body FROM items WHERE kind='event' ORDER BY id"))
            if b["alarm"] == "offline"]


def test_offline_is_raised_only_after_the_grace_and_a_restart_is_not_an_outage(tmp_path):
    """Field trial: every technician action raised and cleared `offline` within 250 ms."""
    gw = make_gateway(tmp_path, offline_grace_s=120)
    h = gw.handle_message
    h("m/n1/s", status(on=True), received_at=T0)
    h("m/n1/s", status(on=False), received_at=T0 + 10)  # Last Will: a technician's reset
    gw.ingestor.periodic(T0 + 11)
    h("m/n1/s", status(on=True), received_at=T0 + 12)   # back 2 s later
    h("m/n1/s", status(on=False, bye="reboot"), received_at=T0 + 20)  # announced
    assert gw.box.query("SELECT state FROM nodes")[0]["state"] == "restarting"
    gw.ingestor.periodic(T0 + 100)
    h("m/n1/s", status(on=True), received_at=T0 + 125)  # a slow restart, inside the grace
    gw.ingestor.periodic(T0 + 300)
    assert offline_events(gw) == [], "no outage happened"

    h("m/n1/s", status(on=False), received_at=T0 + 400)  # gone for good
    gw.ingestor.periodic(T0 + 519)
    assert offline_events(gw) == []
    gw.ingestor.periodic(T0 + 521)
    gw.ingestor.periodic(T0 + 522)
    assert offline_events(gw) == [(True, "Last Will: the connection dropped, 121 s ago")]
    h("m/n1/s", status(on=False, bye="update"), received_at=T0 + 600)  # still raised
    h("m/n1/s", status(on=True), received_at=T0 + 610)
    assert [a for a, _ in offline_events(gw)] == [True, False]

    h("m/n2/s", status(on=False, bye="config"), received_at=T0)  # never came back
    gw.ingestor.periodic(T0 + 121)
    assert offline_events(gw)[-1] == (
        True, "announced a restart (config) and not back, 121 s ago")


def test_a_node_registered_before_it_was_heard_of_gets_first_seen(tmp_path):
    gw = make_gateway(tmp_path)
    with gw.box.transaction():  # what PUT /api/nodes/{id} (meterlink provision) writes
        gw.box.db.execute("INSERT INTO nodes(node, registered, board, sensors, interval_s) "
                          "VALUES ('n7', 1, 'esp32-devkitc', '[]', 60)")
    gw.handle_message("m/n7/r", reading(1, {1: 1}), received_at=T0 + 5)
    assert gw.box.query("SELECT first_seen FROM nodes WHERE node='n7'") == [
        {"first_seen": T0 + 5}]


# ---- a batch from many nodes: the registry's journal (gateway/registry.py) ------------------

def fleet_batch(nodes: int, seq: int, prefix: str = "f") -> list[Message]:
    return [Message(f"m/{prefix}{i}/r", cbor2.dumps([1, seq, T0 + seq, {1: 2000 + i}]),
                    received_at=T0 + seq) for i in range(nodes)]


def node_rows(gw: Gateway) -> dict[str, tuple]:
    return {r["node"]: (r["max_seq"], r["accepted"]) for r in
            gw.box.query("SELECT node, max_seq, accepted FROM nodes WHERE node LIKE 'f%'")}


def test_a_batch_from_many_nodes_keeps_their_dedup_state_in_one_journal_row(tmp_path):
    from gateway.registry import DIRECT_NODES

    gw = make_gateway(tmp_path)
    assert gw.ingestor.handle_batch(fleet_batch(4 * DIRECT_NODES, 7)) == ["accepted"] * 128
    # one journal row for the 128 nodes; their rows are written at the next compaction
    assert gw.box.query("SELECT COUNT(*) AS n FROM node_journal") == [{"n": 1}]
    assert set(node_rows(gw).values()) == {(None, 0)}
    assert gw.ingestor.handle_batch(fleet_batch(128, 7)) == ["duplicate"] * 128
    # a crash now (no compaction): the next start writes the journal into the rows
    path = gw.config.outbox.path
    gw.box.close()
    again = make_gateway(tmp_path)
    assert again.config.outbox.path == path
    assert set(node_rows(again).values()) == {(7, 1)}
    assert again.box.query("SELECT COUNT(*) AS n FROM node_journal") == [{"n": 0}]
    assert again.ingestor.handle_batch(fleet_batch(128, 7)) == ["duplicate"] * 128
    assert again.ingestor.handle_batch(fleet_batch(128, 8)) == ["accepted"] * 128
    with again.box.transaction():
        again.ingestor.registry.compact()
    assert set(node_rows(again).values()) == {(8, 2)}
    assert again.box.query("SELECT COUNT(*) AS n FROM node_journal") == [{"n": 0}]


def test_a_long_compaction_makes_the_next_one_wait_longer(tmp_path, monkeypatch):
    """Writing the journal's nodes into their rows takes about 10 us a node: with a fleet of
    100 000 in a backlog, doing it every 5 s would take a quarter of the ingest thread. So
    the next one waits 20 times as long as the last one took (at least 5 s, at most 60 s);
    the journal keeps the dedup state meanwhile."""
    import gateway.registry as registry

    class Clock:
        now = 1000.0

        def monotonic(self):
            return self.now

    clock = Clock()
    monkeypatch.setattr(registry, "time", clock)
    gw = make_gateway(tmp_path)
    reg = gw.ingestor.registry
    write = reg.nodes.write_hot_many

    def slow_write(rows):  # as long as 100 000 rows take: 1.5 s
        clock.now += 1.5
        write(rows)

    monkeypatch.setattr(reg.nodes, "write_hot_many", slow_write)

    def journal_rows():
        return gw.box.query("SELECT COUNT(*) AS n FROM node_journal")[0]["n"]

    def compact_due(at):
        clock.now = at
        with gw.box.transaction():
            reg.compact(due_only=True)

    gw.ingestor.handle_batch(fleet_batch(128, 7))
    compact_due(1004.0)  # not yet 5 s
    assert journal_rows() == 1
    compact_due(1005.0)  # due: written, in 1.5 s (until 1006.5)
    assert journal_rows() == 0 and set(node_rows(gw).values()) == {(7, 1)}
    gw.ingestor.handle_batch(fleet_batch(128, 8))
    compact_due(1011.0)  # 6 s after the last began: not due after a 1.5 s one (30 s)
    assert journal_rows() == 1
    assert gw.ingestor.handle_batch(fleet_batch(128, 8)) == ["duplicate"] * 128
    compact_due(1034.9)
    assert journal_rows() >= 1
    compact_due(1035.0)
    assert journal_rows() == 0 and set(node_rows(gw).values()) == {(8, 2)}
    monkeypatch.setattr(reg.nodes, "write_hot_many", write)  # a quick one: 5 s again
    gw.ingestor.handle_batch(fleet_batch(128, 9))
    compact_due(1100.0)  # (due: the last period was 30 s)
    gw.ingestor.handle_batch(fleet_batch(128, 10))
    compact_due(1105.0)
    assert journal_rows() == 0 and set(node_rows(gw).values()) == {(10, 4)}


def test_the_journal_of_a_crash_is_read_after_an_upgrade_and_a_bad_row_does_not_stop_the_start(
        tmp_path, caplog):
    """Journal rows are marshal bytes; one left as JSON text by an older version (a crash,
    then an upgrade) is still written into the rows at start, and a row that cannot be read
    is skipped with an error naming it, not a gateway that cannot start."""
    gw = make_gateway(tmp_path)
    assert gw.ingestor.handle_batch(fleet_batch(64, 7)) == ["accepted"] * 64
    with gw.box.transaction():
        gw.box.db.execute("INSERT INTO node_journal(body) VALUES (?)", (json.dumps(
            {"f3": [None, 9, T0 + 9, T0 + 9, 3600, -70, 1, 0]}),))
        gw.box.db.execute("INSERT INTO node_journal(body) VALUES (?)", (b"\x00garbage",))
        gw.box.db.execute("INSERT INTO node_journal(body) VALUES (?)", (json.dumps(
            {"f4": [None, "9", None, None, None, None, 1, 0]}),))
    gw.box.close()
    again = make_gateway(tmp_path)
    rows = node_rows(again)
    assert rows["f3"] == (9, 2)  # the old row's seq 9 and its count on top of the batch's
    assert rows["f4"] == (7, 1) and rows["f5"] == (7, 1)
    assert again.box.query("SELECT COUNT(*) AS n FROM node_journal") == [{"n": 0}]
    unreadable = [str(r.__dict__) for r in caplog.records
                  if r.getMessage() == "journal_row_unreadable"]
    assert len(unreadable) == 2, unreadable
    assert "entry of node 'f4' is not 8 numbers" in " ".join(unreadable)
    assert again.ingestor.handle_batch(fleet_batch(64, 8)) == ["accepted"] * 64


def test_last_values_keep_the_newest_value_of_each_channel(tmp_path):
    """Between writes of the node row the registry keeps each channel's newest wire value:
    within a batch and across batches, messages with other channels, a record sent late
    with an older time, and the largest value the wire takes (pressure, scale 0) land in
    `last_values` as the newest of each channel, never one for another."""
    gw = make_gateway(tmp_path)

    def msg(seq: int, t: int, values: dict) -> Message:
        return Message("m/lv/r", reading(seq, values, t=t), received_at=T0 + 600)

    def last() -> dict:
        text = gw.box.query("SELECT last_values FROM nodes WHERE node='lv'")[0]["last_values"]
        return {label: (vt["v"], vt["t"]) for label, vt in json.loads(text).items()}

    huge = 2**53 - 1  # gateway/wire.py VALUE_LIMIT
    assert gw.ingestor.handle_batch([
        msg(1, T0, {1: 2000, 2: 5000}),
        msg(2, T0 + 60, {1: 2100}),
        msg(3, T0 - 120, {1: 1, 2: 1, 3: 7}),  # late: older than what came before
        msg(4, T0 + 30, {3: huge}),
    ]) == ["accepted"] * 4
    assert last() == {"temperature": (21, T0 + 60), "humidity": (50, T0),
                      "pressure": (huge, T0 + 30)}
    assert gw.ingestor.handle_batch([msg(5, T0 + 120, {3: 5}), msg(6, T0 + 90, {3: huge - 1,
                                                                             2: 4999})]) \
        == ["accepted"] * 2
    assert last() == {"temperature": (21, T0 + 60), "humidity": (49.99, T0 + 90),
                      "pressure": (5, T0 + 120)}


def test_battery_rssi_and_alarm_bits_take_the_newest_value_also_after_a_restart(tmp_path):
    """The channels that drive registry columns and alarms follow the same newest-wins rule
    as `last_values`: a record sent late with an older time changes neither the battery and
    RSSI columns nor the alarm bits, in the same batch, in a later one, and after a restart
    (the cache read back from the node row)."""
    gw = make_gateway(tmp_path, low_battery_mv=3300)

    def msg(seq: int, t: int, values: dict) -> Message:
        return Message("m/bt/r", reading(seq, values, t=t), received_at=T0 + 600)

    def row() -> dict:
        return gw.box.query("SELECT battery_mv, rssi FROM nodes WHERE node='bt'")[0]

    def alarms() -> list:
        return [(e["alarm"], e["active"]) for e in
                (json.loads(r["body"]) for r in
                 gw.box.query("SELECT body FROM items WHERE kind='event' ORDER BY id"))]

    assert gw.ingestor.handle_batch([
        msg(1, T0, {7: 3600, 8: -70, 16: 0}),
        msg(2, T0 - 60, {7: 3100, 8: -90, 16: 1}),  # late: older, low battery, a leak
    ]) == ["accepted"] * 2
    assert row() == {"battery_mv": 3600, "rssi": -70}
    assert alarms() == []
    assert gw.ingestor.handle_batch([msg(3, T0 - 30, {7: 3000, 16: 1})]) == ["accepted"]
    assert row() == {"battery_mv": 3600, "rssi": -70}
    assert alarms() == []
    gw.box.close()

    gw = make_gateway(tmp_path, low_battery_mv=3300)  # a restart: the cache from the row
    assert gw.ingestor.handle_batch([msg(4, T0 - 10, {7: 3000, 8: -95, 16: 1})]) \
        == ["accepted"]
    assert row() == {"battery_mv": 3600, "rssi": -70}
    assert alarms() == []
    assert gw.ingestor.handle_batch([msg(5, T0 + 60, {7: 3200, 8: -80, 16: 1})]) \
        == ["accepted"]
    assert row() == {"battery_mv": 3200, "rssi": -80}
    assert alarms() == [("leak", True), ("low_battery", True)]
    values = json.loads(gw.box.query("SELECT last_values FROM nodes WHERE node='bt'")[0]
                        ["last_values"])
    assert values == {"battery_voltage": {"v": 3.2, "t": T0 + 60},
                      "rssi": {"v": -80, "t": T0 + 60}, "alarms": {"v": 1, "t": T0 + 60}}


def test_last_values_are_json_whatever_the_values():
    """A node row's `last_values` is written by the registry's own formatter; it must read
    back as what the cache held, with `json.dumps`'s answer for anything not a plain
    number."""
    from gateway.registry import _values_out

    cases = [{}, {"temperature": (21.53, T0)}, {"flow:2": (-4, T0 + 0.5)},
             {"battery_voltage": (3.712, T0), "pressure": (101325, T0), "rssi": (-71, T0)},
             {'odd"label\\': (1e-7, 2**60)}, {"x": (None, T0)}, {"x": (1, None)},
             {"x": (True, T0)}, {"x": ("text", T0)}, {"x": (10**30, T0)}]
    for values in cases:
        text = _values_out(values)
        assert json.loads(text) == {label: {"v": v, "t": t} for label, (v, t) in
                                    values.items()}, text
    assert _values_out({"x": (float("nan"), T0)}) == json.dumps({"x": {"v": float("nan"),
                                                                       "t": T0}},
                                                                separators=(",", ":"))


def test_a_rolled_back_batch_from_many_nodes_keeps_the_journaled_dedup_state(tmp_path,
                                                                             monkeypatch):
    """The first pass of a batch that hits a bug is rolled back and the registry's cache
    dropped; the rerun must still know the seqs only the journal holds."""
    from gateway_support import break_readings_of

    gw = make_gateway(tmp_path)
    assert gw.ingestor.handle_batch(fleet_batch(100, 3)) == ["accepted"] * 100
    break_readings_of(monkeypatch, "boom")
    batch = fleet_batch(100, 3) + [Message("m/boom/r", cbor2.dumps([1, 1, T0, {1: 1}]),
                                           received_at=T0)]
    assert gw.ingestor.handle_batch(batch) == ["duplicate"] * 100 + ["internal"]
    assert gw.ingestor.handle_batch(fleet_batch(100, 4)) == ["accepted"] * 100
    with gw.box.transaction():
        gw.ingestor.registry.compact()
    assert set(node_rows(gw).values()) == {(4, 2)}
