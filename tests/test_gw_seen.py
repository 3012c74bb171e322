"""Several gateway instances on one JetStream consumer tell each other the seqs they took
(gateway/seen.py): each instance then has every node's true gaps and drops as a duplicate what
another instance took. Here the ingest path on a real outbox, with the other instance's
summaries handed in as the JetStream source hands them; the whole path on a real NATS cluster
is tests/test_gw_jetstream.py (several instances, a stream leader killed)."""

import json

import cbor2
import pytest

from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.errors import WireError
from gateway.ingest import GAP_ALARM_AFTER_S, Message
from gateway.seen import Took, asker, decode

T0 = 1763712000


def reading(seq: int, *records: dict) -> bytes:
    return cbor2.dumps([1, seq, T0, *(records or ({1: seq},))], canonical=True)


def instance(tmp_path, name="gw-a") -> Gateway:
    config = parse_config({"sinks": {"file": {}}, "api": {"enabled": False},
                           "jetstream": {"servers": ["nats://127.0.0.1:4222"], "instances": 2,
                                         "instance": name}}, base_dir=tmp_path)
    gw = Gateway(config)
    gw.open_storage()
    return gw


def batch(gw: Gateway, *messages: tuple[str, bytes]) -> list[str]:
    return gw.ingestor.handle_batch([Message(t, p, 0, 1, T0) for t, p in messages])


def gap_events(gw: Gateway) -> list[tuple[str, bool]]:
    rows = gw.box.query("SELECT body FROM items WHERE kind='event' ORDER BY id")
    return [(b["alarm"], b["active"]) for b in (json.loads(r["body"]) for r in rows)]


def test_what_another_instance_took_fills_the_gaps_and_is_a_duplicate_here(tmp_path):
    gw = instance(tmp_path)
    assert batch(gw, ("m/n1/r", reading(1)), ("m/n1/r", reading(2)),
                 ("m/n1/r", reading(6))) == ["accepted"] * 3
    assert gw.box.gaps("n1") == [("n1", 3, 5)]
    # gw-b may have taken 3..5, its summary still on the way: the alarm waits for the gap
    # to be GAP_ALARM_AFTER_S old
    gw.ingestor.periodic(T0)
    gw.ingestor.periodic(T0 + GAP_ALARM_AFTER_S - 1)
    assert gap_events(gw) == []
    gw.ingestor.periodic(T0 + GAP_ALARM_AFTER_S)
    assert gap_events(gw) == [("gaps", True)]  # several instances, yet the node's true gaps

    summary = cbor2.dumps({"n1": [3, 5]})
    assert batch(gw, ("$seen/gw-b", summary)) == ["seen"]
    assert gw.box.gaps("n1") == []
    assert gap_events(gw) == [("gaps", True), ("gaps", False)]  # cleared at once
    # gw-b took seq 4: a redelivery of it here is not stored a second time
    assert batch(gw, ("m/n1/r", reading(4))) == ["duplicate"]
    # past the node's highest seq: the seqs between are missing until someone has them
    batch(gw, ("$seen/gw-b", cbor2.dumps({"n1": [9, 9], "n2": [5, 7]})))
    assert gw.box.gaps("n1") == [("n1", 7, 8)]
    assert batch(gw, ("m/n2/r", reading(6)), ("m/n2/r", reading(8))) == ["duplicate",
                                                                         "accepted"]
    assert gw.stats.snapshot()["seen_summaries"] == 2
    assert [r["seq"] for r in gw.box.query("SELECT seq FROM items WHERE kind='records' "
                                           "AND node='n2'")] == [8]


def test_a_batch_reports_every_seq_it_took_stored_or_duplicate(tmp_path):
    gw = instance(tmp_path)
    batch(gw, ("m/n1/r", reading(1)))
    assert gw.ingestor.took.ranges == {"n1": [1, 1]}
    outcomes = batch(gw, ("m/n1/r", reading(1)), ("m/n1/r", reading(2, {1: 2}, {1: 3})),
                     ("m/n1/r", reading(9)), ("m/n2/r", reading(4)), ("m/n2/r", b"\x00"),
                     ("$seen/gw-b", cbor2.dumps({"n3": [1, 2]})))
    assert outcomes == ["duplicate", "accepted", "accepted", "accepted", "rejected", "seen"]
    # the duplicate is reported too: an instance that missed the first summary learns it now
    took = gw.ingestor.took
    assert took.ranges == {"n1": [1, 3, 9, 9], "n2": [4, 4]}
    assert list(decode(took.payload())) == [("n1", 1, 3), ("n1", 9, 9), ("n2", 4, 4)]


@pytest.mark.parametrize("payload, detail", [
    (b"\xa1\x62n", "summary is not CBOR: premature end of stream"),
    (b"\xff", "summary must be a map of node -> ranges"),
    (cbor2.dumps([1, 2]), "summary must be a map of node -> ranges"),
    (cbor2.dumps({5: [1, 2]}), "summary node 5 is not a node id"),
    (cbor2.dumps({"n1": [1]}), "summary ranges of 'n1' must be a non-empty array of first, "
                               "last pairs"),
    (cbor2.dumps({"n1": [1, 2, 9, 3]}), "summary range 1 of 'n1' is not 0 <= first <= last < "
                                        "2^32, at most 65536 seqs: 9..3"),
    (cbor2.dumps({"n1": [0, 70000]}), "at most 65536 seqs: 0..70000"),
    (cbor2.dumps({"n1": [1.5, 2]}), "summary range 0 of 'n1'"),
])
def test_a_bad_summary_is_rejected_whole_with_the_reason_and_the_rest_flows(tmp_path, payload,
                                                                            detail):
    gw = instance(tmp_path)
    good = cbor2.dumps({"n1": [1, 4]})
    bad_then_good = cbor2.dumps({"n1": [5, 5], "n2": "x"})  # n1's range is not applied either
    assert batch(gw, ("$seen/gw-b", payload), ("$seen/gw-b", bad_then_good),
                 ("$seen/gw-b", good), ("m/n1/r", reading(5))) == ["rejected", "rejected",
                                                                    "seen", "accepted"]
    assert gw.stats.snapshot()["rejected_by_reason"] == {"seen_invalid": 2}
    row = gw.box.query("SELECT topic, reason, detail FROM quarantine ORDER BY id")[0]
    assert (row["topic"], row["reason"]) == ("$seen/gw-b", "seen_invalid")
    assert detail in row["detail"]
    with pytest.raises(WireError):
        list(decode(payload))


def test_a_summary_where_instances_do_not_exchange_them_is_rejected(tmp_path):
    config = parse_config({"sinks": {"file": {}}, "api": {"enabled": False}},
                          base_dir=tmp_path)
    gw = Gateway(config)
    assert gw.handle_message("$seen/gw-b", cbor2.dumps({"n1": [1, 4]}),
                             received_at=T0) == "rejected"
    assert gw.stats.snapshot()["rejected_by_reason"] == {"topic": 1}
    assert gw.box.gaps() == []


def test_ranges_below_above_and_across_the_gaps_leave_exactly_the_seqs_nobody_took(tmp_path):
    gw = instance(tmp_path)
    batch(gw, ("m/n1/r", reading(20)), ("m/n1/r", reading(30)), ("m/n1/r", reading(40)))
    assert gw.box.gaps("n1") == [("n1", 21, 29), ("n1", 31, 39)]
    summary = {"n1": [10, 12,        # below the lowest: 13..19 missing
                      25, 33,        # across both gaps
                      38, 38,        # inside one
                      45, 46]}       # above the highest: 41..44 missing
    batch(gw, ("$seen/gw-b", cbor2.dumps(summary)))
    took = {10, 11, 12, 20, 30, 40, 38, 45, 46} | set(range(25, 34))
    want = sorted(s for s in range(10, 47) if s not in took)
    got = sorted(s for _, a, b in gw.box.gaps("n1") for s in range(a, b + 1))
    assert got == want
    assert gw.box.missing_of("n1") == len(want)
    # this instance's node row has the whole range (it survives a restart)
    gw.ingestor.close()
    row = gw.box.query("SELECT min_seq, max_seq FROM nodes WHERE node='n1'")[0]
    assert (row["min_seq"], row["max_seq"]) == (10, 46)


def test_a_gap_that_keeps_moving_raises_no_alarm_one_that_stays_does(tmp_path):
    # two instances taking a node's readings in turn: here every other seq is missing for
    # the moment its summary takes, a gap that closes and opens further on, never old
    gw = instance(tmp_path)
    raised_at = None
    for k in range(50):
        batch(gw, ("m/n1/r", reading(2 * k)))
        gw.ingestor.periodic(T0 + k)
        if raised_at is None and gap_events(gw):
            raised_at = k
        if k != 5:  # seq 11: lost, nobody has it
            batch(gw, ("$seen/gw-b", cbor2.dumps({"n1": [2 * k + 1, 2 * k + 1]})))
    assert gw.box.gaps("n1") == [("n1", 11, 11)]
    assert gap_events(gw) == [("gaps", True)]
    assert raised_at == 6 + GAP_ALARM_AFTER_S  # first noticed at the periodic of k = 6


def test_took_merges_consecutive_messages_into_one_range():
    t = Took()
    for first, last in [(5, 5), (6, 8), (9, 9), (20, 21), (3, 3)]:
        t.add("n1", first, last)
    assert t.ranges == {"n1": [5, 9, 20, 21, 3, 3]}
    assert cbor2.loads(t.payload()) == {"n1": [5, 9, 20, 21, 3, 3]}
    assert not Took()


def test_the_lowest_named_live_instance_asks_and_the_next_takes_over_when_it_goes_quiet():
    heard = {"gw-a": 100.0, "gw-b": 100.0, "gw-c": 100.0}
    assert asker("gw-a", heard, 110.0, 60.0)
    assert not asker("gw-b", heard, 110.0, 60.0)
    heard["gw-b"] = heard["gw-c"] = 150.0  # gw-a quiet since 100
    assert not asker("gw-b", heard, 159.0, 60.0)
    assert asker("gw-b", heard, 161.0, 60.0)
    assert not asker("gw-c", heard, 161.0, 60.0)
    assert asker("gw-z", {}, 0.0, 60.0)  # alone


def test_a_message_a_bug_rolls_back_is_not_reported_taken_nor_its_summary_applied(tmp_path,
                                                                                   monkeypatch):
    gw = instance(tmp_path)
    batch(gw, ("m/n1/r", reading(1)), ("m/n2/r", reading(1)))
    real_reading, real_taken = gw.ingestor.registry.reading, gw.ingestor.registry.taken_elsewhere

    def reading_bug(node, *a, **kw):
        if node == "boom":
            raise KeyError("a bug")
        return real_reading(node, *a, **kw)

    def taken_bug(node, *a, **kw):
        if node == "n2":  # after the summary's ranges went into the outbox and the cache
            raise KeyError("a bug")
        return real_taken(node, *a, **kw)

    monkeypatch.setattr(gw.ingestor.registry, "reading", reading_bug)
    monkeypatch.setattr(gw.ingestor.registry, "taken_elsewhere", taken_bug)
    outcomes = batch(gw, ("m/n1/r", reading(2)), ("m/boom/r", reading(7)),
                     ("$seen/gw-b", cbor2.dumps({"n1": [5, 5], "n2": [4, 4]})),
                     ("m/n1/r", reading(3)))
    assert outcomes == ["accepted", "internal", "internal", "accepted"]
    # boom's seq 7 is stored nowhere: the other instances must not be told it was taken
    assert gw.ingestor.took.ranges == {"n1": [2, 3]}
    # the summary rolled back whole: n1 and n2 as if it never came (no gap to 5, no seq 4)
    assert gw.box.gaps() == []
    monkeypatch.undo()
    assert batch(gw, ("m/n1/r", reading(5)), ("m/n2/r", reading(4))) == ["accepted"] * 2
    assert gw.box.gaps() == [("n1", 4, 4), ("n2", 2, 3)]


def test_the_summaries_of_several_batches_merge_into_one():
    a, b = Took(), Took()
    a.add("n1", 5, 6)
    a.add("n2", 1, 1)
    b.add("n1", 7, 7)
    b.add("n1", 9, 9)
    merged = Took()
    merged.merge(a)
    merged.merge(b)
    assert merged.ranges == {"n1": [5, 7, 9, 9], "n2": [1, 1]}
