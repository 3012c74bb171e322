"""`make bench`: what the reading history (`[sinks.history]`) costs and how fast it serves.

1. Ingest with the history on, as a ratio of ingest with it off, in the same run: N reading
   messages queued at a real Mosquitto, drained by the real gateway (QoS 1, committed in the
   outbox) with the file sink, and with the file and history sinks; rounds alternate off/on
   and the ratio is the median of the rounds' ratios. Target >= 0.9. Also printed: how long
   after the last commit the history holds every value.
2. A year of hourly aggregates for 1000 nodes (8.8 million rows in the history database),
   one node's 30 days served as a plot (`GET /api/nodes/{id}/series`, step one hour, over the
   gateway's real HTTP API): the median of 30 requests for random nodes, next to a plain
   SQLite query of the same rows on the same file. Target: under 200 ms.
"""

from __future__ import annotations

import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gateway import (SENML_PER_MESSAGE, drop_session, queue_messages,  # noqa: E402
                           register_session)
from gateway.webapp import ApiServer  # noqa: E402
from gateway.config import parse_config  # noqa: E402
from gateway.daemon import Gateway  # noqa: E402
from gateway.logfmt import configure_logging  # noqa: E402
from gateway.sinks.history import HOUR, connect  # noqa: E402
from host_tools.broker import Mosquitto  # noqa: E402

MESSAGES = 20_000
ROUNDS = 3
NODES = 1000
DAYS = 366
QUERIES = 30


def ingest_rate(broker: Mosquitto, work: Path, n: int, client_id: str,
                history: bool) -> tuple[float, float]:
    """(msg/s committed in the outbox, seconds from the last commit until the history holds
    every value; 0 without history)."""
    mqtt_cfg = {"host": broker.host, "port": broker.port, "client_id": client_id}
    sinks = {"file": {"path": "readings.jsonl"}}
    if history:
        sinks["history"] = {"path": "history.db", "raw_days": 3000}  # T0 is 2025
    config = parse_config({"mqtt": mqtt_cfg, "sinks": sinks, "api": {"enabled": False}},
                          base_dir=work)
    register_session(broker, client_id)
    queue_messages(broker, n)
    gw = Gateway(config)
    t0 = time.perf_counter()
    gw.start()
    try:
        while gw.stats.snapshot()["accepted_messages"] < n:
            time.sleep(0.005)
        committed = time.perf_counter()
        lag = 0.0
        if history:
            while gw.stats.snapshot()["sink_records"].get("history", 0) < n * SENML_PER_MESSAGE:
                time.sleep(0.01)
            lag = time.perf_counter() - committed
    finally:
        gw.stop()
        gw.shutdown()
        drop_session(broker, client_id)
    if history:
        db = sqlite3.connect(work / "history.db")
        stored = db.execute("SELECT COUNT(*) FROM raw").fetchone()[0]
        db.close()
        if stored != distinct_values(n):
            raise RuntimeError(f"history holds {stored} values, not {distinct_values(n)}")
    return n / (committed - t0), lag


def distinct_values(n: int) -> int:
    """The values the history keeps of bench_gateway's messages: one per node, channel and
    time (the second record of a message, 60 s later, meets the first record of the message
    60 seqs on: same node, channel and second, which the history keeps once)."""
    keys = set()
    for i in range(n):
        node, s = i % 10, i // 10 * 2
        keys.update((node, ch, s) for ch in (1, 2, 3, 7))
        keys.add((node, 1, s + 60))
    return len(keys)


def year_of_hours(path: Path, now: int) -> None:
    """NODES x DAYS x 24 hourly aggregates of one channel, as the history sink writes them."""
    db = connect(path)
    db.execute("PRAGMA synchronous=OFF")
    first = (now - DAYS * 86400) // HOUR * HOUR
    rng = random.Random(1)
    db.execute("BEGIN")
    for node in range(NODES):
        name = f"n{node:04d}"
        base = rng.uniform(5, 25)
        db.executemany(
            "INSERT INTO hourly(node, channel, hour, n, mean, lo, hi, first, last) "
            "VALUES (?, 'temperature', ?, 12, ?, ?, ?, ?, ?)",
            ((name, h, base + (h % 86400) / 8640, base, base + 10, base, base + 10)
             for h in range(first, now, HOUR)))
    db.execute("COMMIT")
    db.close()


def serve_times(work: Path, now: int) -> tuple[list[float], list[float], int]:
    config = parse_config({"sinks": {"history": {"path": "history.db"}},
                           "api": {"port": 0, "token": "bench"}}, base_dir=work)
    gw = Gateway(config)
    gw.open_storage()
    with gw.box.transaction():
        gw.box.db.executemany("INSERT INTO nodes(node) VALUES (?)",
                              [(f"n{i:04d}",) for i in range(NODES)])
    api = ApiServer(gw)
    api.start()
    rng = random.Random(2)
    served, plain, points = [], [], 0
    raw = sqlite3.connect(work / "history.db")
    try:
        for _ in range(QUERIES):
            node = f"n{rng.randrange(NODES):04d}"
            t0, t1 = now - 30 * 86400, now
            req = urllib.request.Request(
                f"http://127.0.0.1:{api.port}/api/nodes/{node}/series?channels=temperature"
                f"&from={t0}&to={t1}&step=3600", headers={"Authorization": "Bearer bench"})
            start = time.perf_counter()
            with urllib.request.urlopen(req, timeout=30) as reply:
                body = json.loads(reply.read())
            served.append(time.perf_counter() - start)
            points = len(body["series"]["temperature"])
            start = time.perf_counter()
            rows = raw.execute("SELECT hour, mean FROM hourly WHERE node=? AND "
                               "channel='temperature' AND hour >= ? AND hour < ? ORDER BY hour",
                               (node, t0 // HOUR * HOUR, t1)).fetchall()
            plain.append(time.perf_counter() - start)
            if len(rows) != points:
                raise RuntimeError(f"{node}: {points} points served, {len(rows)} rows stored")
    finally:
        raw.close()
        api.stop()
        gw.box.close()
    return served, plain, points


def main() -> int:
    configure_logging("ERROR")
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        work = Path(tmp)
        offs, ons, lags = [], [], []
        with Mosquitto(work / "broker") as broker:
            for r in range(ROUNDS):
                offs.append(ingest_rate(broker, work / f"off{r}", MESSAGES, f"b-off-{r}",
                                        False)[0])
                rate, lag = ingest_rate(broker, work / f"on{r}", MESSAGES, f"b-on-{r}", True)
                ons.append(rate)
                lags.append(lag)
        ratios = [on / off for on, off in zip(ons, offs)]
        print(f"ingest with the history on, as a ratio of ingest with it off ({MESSAGES} "
              f"queued messages, {SENML_PER_MESSAGE} values each, real Mosquitto, median of "
              f"{ROUNDS} rounds):")
        print(f"  history off (file sink)      {statistics.median(offs):9.0f} msg/s   rounds "
              + " ".join(f"{x:.0f}" for x in offs))
        print(f"  history on (file + history)  {statistics.median(ons):9.0f} msg/s   rounds "
              + " ".join(f"{x:.0f}" for x in ons))
        print(f"  ratio on / off               {statistics.median(ratios):9.2f}   rounds "
              + " ".join(f"{x:.2f}" for x in ratios) + "   (target >= 0.90)")
        print(f"  history complete after the last commit: {statistics.median(lags):.2f} s "
              f"(median; {MESSAGES * SENML_PER_MESSAGE} values)")
        now = int(time.time()) // HOUR * HOUR
        start = time.perf_counter()
        year_of_hours(work / "h" / "history.db", now)
        built = time.perf_counter() - start
        served, plain, points = serve_times(work / "h", now)
        print(f"30-day plot of one node out of a year of hourly data for {NODES} nodes "
              f"({NODES * DAYS * 24 / 1e6:.1f} M rows, built in {built:.0f} s), {QUERIES} "
              "requests for random nodes:")
        print(f"  GET /api/nodes/{{id}}/series   {statistics.median(served) * 1000:7.1f} ms "
              f"median, {max(served) * 1000:.1f} ms max, {points} points   (target < 200 ms)")
        print(f"  plain SQLite query, same rows {statistics.median(plain) * 1000:7.1f} ms "
              f"median   ratio {statistics.median(served) / statistics.median(plain):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
