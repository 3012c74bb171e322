"""10 000 malformed, truncated, oversized and hostile messages through the real ingest path
(outbox on disk), with valid traffic interleaved: every bad one is rejected with a known
reason and quarantined with its bytes, nothing crashes, every valid reading is delivered."""

import json
import random

import cbor2

from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.ingest import Message
from gateway.outbox import Outbox
from gateway.sinks import make_sink
from gateway.wire import REASONS

T0 = 1763712000
KNOWN_REASONS = set(REASONS) | {"topic", "topic_length", "internal"}


def valid(seq: int) -> bytes:
    return cbor2.dumps([1, seq, T0 + seq, {1: 2100, 2: 4500}, {0: 60, 1: 3}], canonical=True)


def hostile_corpus(rng: random.Random) -> list[tuple[str, bytes, bool]]:
    """(topic, payload, must_reject) items; mutations may happen to be valid, the rest not."""
    base = [valid(s) for s in range(5)]
    fixed = [
        b"", b"\x00", b"\xff", b"\x9f\x01\x02\xff", b"\xbf\xff",                 # indefinite
        b"\x84\x01\x01\x01\xa1\x01\xfb\x40\x09\x21\xfb\x54\x44\x2d\x18",        # float value
        cbor2.dumps([1, 2**40, T0, {1: 1}]), cbor2.dumps([1, -1, T0, {1: 1}]),
        cbor2.dumps([1, 1, T0, {1: 2**60}]), cbor2.dumps([1, 1, T0, {99: 1}]),
        cbor2.dumps([1, 1, T0, {1: "x"}]), cbor2.dumps([1, 1, T0]), cbor2.dumps({"a": 1}),
        cbor2.dumps([2, 1, T0, {1: 1}]), cbor2.dumps([1, 1, T0, {}]),
        cbor2.dumps([1, 1, T0] + [{1: 1}] * 65), b"\x84" + b"\x81" * 3000,        # deep nesting
        b"\xc2\x49" + b"\x01" * 9, b"\x5b" + b"\xff" * 8, b"\x9b" + b"\xff" * 8,  # huge lengths
        bytes(5000), valid(1) + b"\x00",
    ]
    items: list[tuple[str, bytes, bool]] = [("m/fz/r", p, True) for p in fixed]
    for b in base:
        items += [("m/fz/r", b[:cut], True) for cut in range(len(b))]          # truncations
    topics = ["m/fz", "m//r", "m/fz/r/x", "x/fz/r", "m/FZ/r", "m/" + "a" * 40 + "/r",
              "m/fz/" + "r" * 3, "m/f z/r", "m/\u00e9/r", "m/" + "z" * 300 + "/r"]
    items += [(t, valid(1), True) for t in topics]
    while len(items) < 10_000:
        kind = rng.random()
        if kind < 0.4:                                   # bit flips: may stay valid
            b = bytearray(rng.choice(base))
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            items.append(("m/fz/r", bytes(b), False))
        elif kind < 0.7:                                 # random bytes
            items.append(("m/fz/r", rng.randbytes(rng.randint(1, 80)), False))
        elif kind < 0.8:                                 # oversized
            items.append(("m/fz/r", rng.randbytes(rng.randint(4097, 20000)), True))
        elif kind < 0.9:                                 # hostile status / ack
            kind_topic = rng.choice(["m/fz/s", "m/fz/a"])
            items.append((kind_topic, rng.randbytes(rng.randint(0, 1500)), False))
        else:                                            # spliced
            a, b = rng.choice(base), rng.choice(base)
            items.append(("m/fz/r", a[:rng.randrange(1, len(a))] + b[rng.randrange(len(b)):],
                          False))
    rng.shuffle(items)
    return items


def test_ten_thousand_hostile_messages_with_valid_traffic_interleaved(tmp_path):
    config = parse_config({"sinks": {"file": {}}, "api": {"enabled": False},
                           "outbox": {"quarantine_keep": 0}}, base_dir=tmp_path)
    gw = Gateway(config)
    gw.open_storage()
    rng = random.Random(8428)
    corpus = hostile_corpus(rng)
    messages, good_seqs = [], []
    seq = 1000
    for i, (topic, payload, must_reject) in enumerate(corpus):
        messages.append((Message(topic, payload, received_at=T0), must_reject))
        if i % 50 == 0:
            messages.append((Message("m/good/r", valid(seq), received_at=T0), None))
            good_seqs += [seq, seq + 1]
            seq += 2
    outcomes = []
    for start in range(0, len(messages), 200):
        chunk = messages[start:start + 200]
        outcomes += gw.ingestor.handle_batch([m for m, _ in chunk])
    assert len(outcomes) == len(messages)
    for (msg, must_reject), outcome in zip(messages, outcomes):
        if must_reject is None:
            assert outcome == "accepted", msg
        elif must_reject:
            assert outcome == "rejected", msg
        assert outcome != "internal", msg
    snap = gw.stats.snapshot()
    assert set(snap["rejected_by_reason"]) <= KNOWN_REASONS, snap["rejected_by_reason"]
    assert sum(snap["rejected_by_reason"].values()) == outcomes.count("rejected") >= 8000
    quarantined = gw.box.query("SELECT topic, payload FROM quarantine")
    assert len(quarantined) == outcomes.count("rejected")
    rejected = [(m.topic, bytes(m.payload)) for (m, _), o in zip(messages, outcomes)
                if o == "rejected"]
    assert sorted((q["topic"], q["payload"]) for q in quarantined) == sorted(rejected)

    box = Outbox(config.outbox.path)
    sink = make_sink(config.sink)
    sink.open()
    while (batch := box.claim_batch("file", max_records=500, max_bytes=1 << 22)) is not None:
        sink.deliver(batch)
        box.confirm(batch)
    lines = [json.loads(x) for x in (tmp_path / "readings.jsonl").read_text().splitlines()]
    assert sorted({x["seq"] for x in lines if x["node"] == "good"}) == good_seqs
