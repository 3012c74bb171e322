"""When the gateway asks a node for the readings of a gap again (gateway/replay.py): not before
the gap is `replay_after_s` old, again only after RETRY_S, at most ATTEMPTS times, never once the
node said it no longer keeps them, and a closed gap is forgotten; an ask an awake node never
answered is sent again sooner. The whole path, a real
broker that loses acknowledged readings and the real firmware sending them again, is
tests/test_node_runtime.py::test_readings_the_broker_acknowledged_and_lost_are_asked_again_and_arrive_once."""

from gateway.replay import ATTEMPTS, LOST_ASKS, MAX_RANGE, RETRY_S, Replayer

T = 1_800_000_000.0


def test_a_gap_is_asked_for_once_old_enough_then_every_retry_up_to_the_attempts():
    r = Replayer(after_s=10)
    gaps = [("n1", 6, 11)]
    assert r.due(gaps, T) == []
    assert r.due(gaps, T + 9) == []
    assert r.due(gaps, T + 10) == [("n1", 6, 11)]
    assert r.due(gaps, T + 11) == []  # asked: not again before RETRY_S
    asked = 1
    t = T + 10
    while True:
        t += RETRY_S
        got = r.due(gaps, t)
        if not got:
            break
        assert got == [("n1", 6, 11)]
        asked += 1
    assert asked == ATTEMPTS


def test_a_closed_gap_is_forgotten_and_a_new_one_waits_its_own_time():
    r = Replayer(after_s=10)
    assert r.due([("n1", 6, 11)], T + 10) == []  # first noticed now
    assert r.due([], T + 20) == []  # the readings came: closed
    assert r.due([("n1", 6, 11)], T + 25) == []  # the same range again is a new gap
    assert r.due([("n1", 6, 11)], T + 35) == [("n1", 6, 11)]


def test_a_gap_that_shrank_keeps_its_age_and_is_asked_for_what_is_left():
    r = Replayer(after_s=10)
    r.due([("n1", 6, 11)], T)
    assert r.due([("n1", 6, 8)], T + 10) == [("n1", 6, 8)]


def test_no_more_asks_once_the_node_keeps_nothing_of_the_gap():
    r = Replayer(after_s=0)
    assert r.due([("n1", 6, 11), ("n2", 6, 11)], T) == [("n1", 6, 11), ("n2", 6, 11)]
    r.on_ack("n1", {"cmd": "replay", "ok": True, "kept": 40})  # gone from the node
    r.on_ack("n2", {"cmd": "replay", "ok": True, "kept": 3})  # still there: sent again
    r.on_ack("n2", {"cmd": "diag", "ok": True})
    assert r.due([("n1", 6, 11), ("n2", 6, 11)], T + RETRY_S) == [("n2", 6, 11)]


def test_a_huge_gap_is_asked_for_in_a_bounded_range():
    r = Replayer(after_s=0)
    assert r.due([("n1", 100, 100 + 10 * MAX_RANGE)], T) == [("n1", 100, 100 + MAX_RANGE - 1)]


def test_an_ask_an_awake_node_never_answered_is_sent_again_sooner_without_using_an_attempt():
    """A downlink can be lost in the same election as the readings: an ask an online node
    has not answered after `unanswered_s` is sent again then (up to LOST_ASKS times), not
    after RETRY_S; an asleep node's waits RETRY_S (it gets the command at its next wake), and
    an answered ask is not sent again early."""
    online = {"n1", "n3"}
    r = Replayer(after_s=0, unanswered_s=20)
    gaps = [("n1", 6, 11), ("n2", 6, 11), ("n3", 6, 11)]
    assert r.due(gaps, T, online.__contains__) == gaps
    r.on_ack("n3", {"cmd": "replay", "ok": False, "err": "busy"})  # answered
    assert r.due(gaps, T + 19, online.__contains__) == []
    t = T
    for _ in range(LOST_ASKS):
        t += 20
        assert r.due(gaps, t, online.__contains__) == [("n1", 6, 11)]
    assert r.due(gaps, t + 20, online.__contains__) == []  # lost asks used up: RETRY_S now
    assert r.due(gaps, T + RETRY_S, online.__contains__) == [("n2", 6, 11), ("n3", 6, 11)]
    # the lost asks were not attempts: n1 still gets ATTEMPTS - 1 more, RETRY_S apart
    asked = sum(("n1", 6, 11) in r.due(gaps, t + k * RETRY_S, online.__contains__)
                for k in range(1, 10))
    assert asked == ATTEMPTS - 1
