"""The reading history (`[sinks.history]`): raw values and hourly aggregates in their own SQLite
file, fed from the outbox; time series and daily meter consumption over the API.

The expected numbers are worked out by hand from the readings each test writes.
"""

from __future__ import annotations

import random
import sqlite3
import time

import cbor2
import pytest

from gateway.config import parse_config
from gateway.outbox import Outbox
from gateway.sinks import make_sink
from gateway.sinks.history import History
from gateway_support import GatewayProcess, publish, wait_for

HOUR, DAY = 3600, 86400
NOW = 1763712000 + 12 * HOUR  # a fixed "now" for the sink's and the reader's clocks


def history_sink(tmp_path, **keys):
    config = parse_config({"sinks": {"history": keys}}, base_dir=tmp_path).sinks[0]
    sink = make_sink(config)
    sink.clock = lambda: NOW
    sink.open()
    return sink


def outbox_batch(tmp_path, readings, name="o.db"):
    """readings: (node, seq, [(channel, unit, value, t), ...])."""
    box = Outbox(tmp_path / name, sinks=["history"])
    with box.transaction():
        for node, seq, values in readings:
            box.add_item("reading", node, seq, [{"n": f"{node}:{ch}", "u": u, "v": v, "t": t}
                                                for ch, u, v, t in values], NOW)
    return box.claim_batch("history", max_records=10000, max_bytes=1 << 30)


def rows(path, sql):
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_raw_values_once_and_hourly_aggregates_recomputed_on_a_retry(tmp_path):
    h0 = NOW - 2 * HOUR  # an hour boundary
    sink = history_sink(tmp_path)
    first = outbox_batch(tmp_path, [
        ("w1", 1, [("temperature", "Cel", 20.0, h0 + 60), ("water_volume", "m3", 10.0, h0 + 60)]),
        ("w1", 2, [("temperature", "Cel", 22.0, h0 + 1800),
                   ("water_volume", "m3", 10.5, h0 + 1800)]),
        ("w1", 3, [("temperature", "Cel", 27.0, h0 + 3599)]),
    ])
    sink.deliver(first)
    sink.deliver(first)  # the same batch again (a crash before the outbox heard of it)
    later = outbox_batch(tmp_path, [
        ("w1", 4, [("temperature", "Cel", 19.0, h0 + HOUR + 10)]),
        ("w1", 2, [("temperature", "Cel", 22.0, h0 + 1800)]),  # a node's resend
    ], name="o2.db")
    sink.deliver(later)
    sink.close()
    db = tmp_path / "history.db"
    assert rows(db, "SELECT COUNT(*) FROM raw")[0][0] == 6
    got = rows(db, "SELECT channel, hour, n, mean, lo, hi, first, last FROM hourly "
                   "ORDER BY channel, hour")
    assert got == [("temperature", h0, 3, 23.0, 20.0, 27.0, 20.0, 27.0),
                   ("temperature", h0 + HOUR, 1, 19.0, 19.0, 19.0, 19.0, 19.0),
                   ("water_volume", h0, 2, 10.25, 10.0, 10.5, 10.0, 10.5)]


def test_a_value_older_than_raw_days_is_left_out_and_old_rows_are_pruned(tmp_path):
    sink = history_sink(tmp_path, raw_days=2, hourly_days=30)
    sink.deliver(outbox_batch(tmp_path, [
        ("w1", 1, [("temperature", "Cel", 5.0, NOW - 3 * DAY)]),   # too late for its hour
        ("w1", 2, [("temperature", "Cel", 6.0, NOW - DAY)])]))
    assert sink.too_late == 1
    db = tmp_path / "history.db"
    assert rows(db, "SELECT t, v FROM raw") == [(NOW - DAY, 6.0)]
    # a year later both tables are pruned to their spans
    sink.prune(NOW + 365 * DAY)
    assert rows(db, "SELECT COUNT(*) FROM raw")[0][0] == 0
    assert rows(db, "SELECT COUNT(*) FROM hourly")[0][0] == 0
    sink.close()


def test_series_from_raw_values_and_from_hourly_aggregates_with_gaps_kept(tmp_path):
    sink = history_sink(tmp_path)
    h0 = NOW - 6 * HOUR
    values = [("w1", i + 1, [("temperature", "Cel", float(i), h0 + i * 600)])
              for i in range(6)]                       # hour h0: 0..5 every 10 minutes
    values += [("w1", 10, [("temperature", "Cel", 30.0, h0 + 3 * HOUR + 5)])]  # 2 hours gap
    sink.deliver(outbox_batch(tmp_path, values))
    sink.close()
    store = History(tmp_path / "history.db", raw_days=7, clock=lambda: NOW)
    try:
        raw = store.series("w1", ["temperature"], h0, h0 + 4 * HOUR, 1200)["temperature"]
        assert raw == [[h0, 0.5], [h0 + 1200, 2.5], [h0 + 2400, 4.5], [h0 + 3 * HOUR, 30.0]]
        hourly = store.series("w1", ["temperature"], h0, h0 + 4 * HOUR, HOUR)["temperature"]
        assert hourly == [[h0, 2.5], [h0 + 3 * HOUR, 30.0]]
        two_hours = store.series("w1", ["temperature"], h0, h0 + 4 * HOUR, 2 * HOUR)
        assert two_hours["temperature"] == [[h0, 2.5], [h0 + 2 * HOUR, 30.0]]
        assert store.series("w1", ["humidity"], h0, NOW, 60) == {"humidity": []}
        assert store.channels("w1") == ["temperature"]
    finally:
        store.close()


def test_means_keep_their_digits_whatever_the_units_scale(tmp_path):
    """PM is stored in kg/m³: 1 µg/m³ is 1e-9, so a mean of 1 and 2 µg/m³ must stay 1.5e-9
    (rounding to decimal places once made it 2e-9), and 0.1 + 0.2 shows no float noise."""
    sink = history_sink(tmp_path)
    h0 = NOW - 2 * HOUR
    sink.deliver(outbox_batch(tmp_path, [
        ("a1", 1, [("pm2_5", "kg/m3", 1e-9, h0), ("temperature", "Cel", 0.1, h0)]),
        ("a1", 2, [("pm2_5", "kg/m3", 2e-9, h0 + 60), ("temperature", "Cel", 0.2, h0 + 60)])]))
    sink.close()
    store = History(tmp_path / "history.db", raw_days=7, clock=lambda: NOW)
    try:
        for step in (600, HOUR):
            got = store.series("a1", ["pm2_5", "temperature"], h0, NOW, step)
            assert got == {"pm2_5": [[h0, 1.5e-9]], "temperature": [[h0, 0.15]]}, step
    finally:
        store.close()


def test_daily_consumption_is_a_difference_of_totals_and_a_lost_reading_moves_nothing(tmp_path):
    """Totals (m3) every 6 hours over three days; the reading at day 2 06:00 never arrived.
    Day 1 used 1.2 - 1.0, day 2 1.9 - 1.2, day 3 2.0 - 1.9: the lost reading changes nothing."""
    d0 = (NOW - 3 * DAY) // DAY * DAY
    totals = {d0 + 0: 0.8, d0 + 18 * HOUR: 1.0,                       # day 0 ends at 1.0
              d0 + DAY + 6 * HOUR: 1.05, d0 + DAY + 18 * HOUR: 1.2,     # day 1 ends at 1.2
              d0 + 2 * DAY + 12 * HOUR: 1.6, d0 + 2 * DAY + 23 * HOUR: 1.9,
              d0 + 3 * DAY + 1 * HOUR: 2.0}
    sink = history_sink(tmp_path)
    sink.clock = lambda: d0 + 3 * DAY + 2 * HOUR
    sink.deliver(outbox_batch(tmp_path, [("w1", i + 1, [("water_volume", "m3", v, t)])
                                         for i, (t, v) in enumerate(sorted(totals.items()))]))
    sink.close()
    store = History(tmp_path / "history.db")
    try:
        used = store.consumption("w1", "water_volume", d0 + DAY, d0 + 4 * DAY)
    finally:
        store.close()
    assert used == [[d0 + DAY, 0.2], [d0 + 2 * DAY, 0.7], [d0 + 3 * DAY, 0.1]]


@pytest.mark.slow
def test_history_through_a_real_gateway_killed_while_it_writes(tmp_path, broker):
    """600 readings of two channels into a gateway with the history sink, SIGKILL at random
    moments while it writes, restarts: every value once in the history, and the API serves
    the series and the consumption."""
    base = int(time.time()) - 2 * DAY
    extra = (f'[sinks.history]\npath = "{tmp_path / "gw" / "history.db"}"\n'
             'batch_max_records = 50\nbatch_max_age_s = 0.05\n')
    gw = GatewayProcess(tmp_path / "gw", broker, extra=extra)
    rng = random.Random(7)
    try:
        gw.wait_subscribed()
        sent = []
        for seq in range(1, 601):
            t = base + seq * 120
            sent.append(("m/m1/r", cbor2.dumps([1, seq, t, {1: 2000 + seq % 50, 4: 1000 + seq}])))
        for chunk in range(3):
            publish(broker, sent[chunk * 200:(chunk + 1) * 200])
            time.sleep(rng.uniform(0.05, 0.4))
            gw.kill()
            gw.start()
            wait_for(lambda: gw.log().count("event=subscribed") == chunk + 2, 30,
                     "the gateway back")
        db = tmp_path / "gw" / "history.db"
        wait_for(lambda: db.exists() and rows(db, "SELECT COUNT(*) FROM raw WHERE "
                                                  "channel='water_volume'")[0][0] == 600,
                 60, "600 totals in the history",
                 lambda: str(rows(db, "SELECT channel, COUNT(*) FROM raw GROUP BY 1")))
        assert rows(db, "SELECT COUNT(*), COUNT(DISTINCT t) FROM raw WHERE "
                        "channel='temperature'")[0] == (600, 600)
        assert rows(db, "SELECT SUM(n) FROM hourly WHERE channel='water_volume'")[0][0] == 600
        wait_for(lambda: gw.counters().get("api_port"), 30, "the API")
        status, reply = gw.api(f"/api/nodes/m1/series?channels=temperature,water_volume"
                               f"&from={base}&to={base + 601 * 120}&step=3600")
        assert status == 200, reply
        # expected from what was sent: the totals (m3) by hour and by day
        totals = {base + s * 120: (1000 + s) / 1000 for s in range(1, 601)}
        by_hour: dict[int, list[float]] = {}
        last_of_day: dict[int, float] = {}
        for t in sorted(totals):
            by_hour.setdefault(t // HOUR * HOUR, []).append(totals[t])
            last_of_day[t // DAY * DAY] = totals[t]
        got = reply["series"]["water_volume"]
        assert [t for t, _ in got] == sorted(by_hour)
        for t, mean in got:
            assert abs(mean - sum(by_hour[t]) / len(by_hour[t])) < 1e-9, t
        status, reply = gw.api(f"/api/nodes/m1/consumption?from={base - DAY}")
        assert status == 200, reply
        days = sorted(last_of_day)
        want = [[d, last_of_day[d] - last_of_day[p]] for p, d in zip(days, days[1:])]
        assert len(reply["days"]) == len(want)
        for (d, used), (wd, wused) in zip(reply["days"], want):
            assert d == wd and abs(used - wused) < 1e-9
        assert gw.api("/api/nodes/nobody/series")[0] == 404
        assert gw.api("/api/nodes/m1/consumption?channel=temperature")[0] == 400
    finally:
        gw.stop()


def test_the_history_yields_to_a_busy_ingest_but_is_never_starved(tmp_path, monkeypatch):
    """A background sink waits for ingest to go quiet, but not longer than MAX_DEFER_S: under
    an ingest that never rests, the values still reach the history."""
    from gateway import batcher
    from gateway.stats import Stats

    monkeypatch.setattr(batcher, "MAX_DEFER_S", 1.0)
    config = parse_config({"sinks": {"history": {"batch_max_age_s": 0}}},
                          base_dir=tmp_path).sinks[0]
    box = Outbox(tmp_path / "outbox.db", sinks=["history"])
    t = time.time() - 60
    with box.transaction():
        box.add_item("reading", "w1", 1, [{"n": "w1:temperature", "u": "Cel", "v": 1.5, "t": t}],
                     time.time())
    worker = batcher.SinkWorker(make_sink(config), config, tmp_path / "outbox.db", Stats())
    worker.ingest_quiet = lambda: 0.0  # ingest handled a batch just now, always
    started = time.monotonic()
    worker.start()
    try:
        db = tmp_path / "history.db"
        wait_for(lambda: db.exists() and rows(db, "SELECT v FROM raw") == [(1.5,)], 10,
                 "the value in the history despite a busy ingest")
    finally:
        worker.stop()
    assert time.monotonic() - started >= 0.9, "it waited for a quiet moment first"
