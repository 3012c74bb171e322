"""The `history` sink: a bounded history of every node's channels, for plots and consumption.

    [sinks.history]
    path = "history.db"      # its own SQLite file beside the outbox
    raw_days = 7             # every value, kept this long
    hourly_days = 366        # hourly aggregates (mean, min, max, first, last), kept this long

    store = History(path)                                  # the API's read side
    store.series("w1", ["water_volume"], t0, t1, step=3600)

Why a sink: history is fed from the outbox like every other consumer, by its own thread, in
batches, into its own database file. Ingest does nothing more than queue the item for one more
sink (one `pending` row), so a slow disk under the history never slows the acknowledgements
to the nodes, and a gateway crash loses nothing the history has not confirmed.

Exactly once: a raw value is keyed by (node, channel, t), so a batch delivered twice writes
each value once. An hour's aggregate is recomputed from the raw values of that hour every time
the hour gets a value, never added to, so a retried batch cannot count twice. A value older
than `raw_days` is too late to change its hour (the raw values behind it are gone): it is
counted as `history_too_late` and left out.

Meter totals (`water_volume`, `gas_volume`, `heat_energy`) are monotonic counters, so the
hourly `first` and `last` values give the consumption of any period as a difference of
totals (`consumption`), never a sum of deltas: a lost reading moves no litre.

Queries choose the raw table when the whole range is within `raw_days` and the step is below
an hour, the hourly table otherwise; points are bucket means (time-weighted by count for
hourly buckets) at the bucket's start time.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
import threading
import time
from pathlib import Path
from typing import Sequence

from gateway.errors import DeliveryFailed, SinkError
from gateway.logfmt import kv
from gateway.outbox import Batch
from gateway.sinks.base import Sink, convert_each

log = logging.getLogger("meterlink.gateway.sink.history")

HOUR = 3600
DAY = 86400
TOTALS = ("water_volume", "gas_volume", "heat_energy")
PRUNE_EVERY_S = 600.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS raw(
    node TEXT NOT NULL, channel TEXT NOT NULL, t REAL NOT NULL, v REAL NOT NULL,
    PRIMARY KEY (node, channel, t)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hourly(
    node TEXT NOT NULL, channel TEXT NOT NULL, hour INTEGER NOT NULL,
    n INTEGER NOT NULL, mean REAL NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL,
    first REAL NOT NULL, last REAL NOT NULL,
    PRIMARY KEY (node, channel, hour)) WITHOUT ROWID;
"""


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # the outbox keeps what a power cut would lose
    db.executescript(SCHEMA)
    return db


def channel_of(name: str) -> str:
    """`node:temperature:2` -> `temperature:2` (the channel with its instance)."""
    return name.split(":", 1)[1] if ":" in name else name


def _tidy(v: float) -> float:
    """`v` to 12 significant digits: a mean or a difference without float noise (0.1 + 0.2),
    whatever the unit's scale (PM in kg/m³ is 1e-9 per µg/m³: decimal places would erase it)."""
    return float(f"{v:.12g}")


class History:
    """Reads the history database (the API's side; one connection, used under a lock)."""

    def __init__(self, path: Path, *, raw_days: float = 7, clock=time.time) -> None:
        self.db = connect(Path(path))
        self.raw_days = raw_days
        self.clock = clock
        self.lock = threading.Lock()

    def close(self) -> None:
        self.db.close()

    def channels(self, node: str) -> list[str]:
        with self.lock:
            rows = self.db.execute("SELECT DISTINCT channel FROM hourly WHERE node=? "
                                   "ORDER BY channel", (node,)).fetchall()
        return [r[0] for r in rows]

    def series(self, node: str, channels: Sequence[str], t0: float, t1: float,
               step: int) -> dict[str, list[list[float]]]:
        """{channel: [[t, mean], ...]} over [t0, t1), one point per `step` seconds that
        holds data (a gap is a gap, never an interpolated point)."""
        raw = step < HOUR and t0 >= self.clock() - self.raw_days * DAY
        out: dict[str, list[list[float]]] = {}
        with self.lock:
            for ch in channels:
                if raw:
                    rows = self.db.execute(
                        "SELECT CAST(t / ? AS INTEGER) * ? AS b, AVG(v) FROM raw "
                        "WHERE node=? AND channel=? AND t >= ? AND t < ? GROUP BY b ORDER BY b",
                        (step, step, node, ch, t0, t1)).fetchall()
                else:
                    rows = self.db.execute(
                        "SELECT (hour / ?) * ? AS b, SUM(mean * n) / SUM(n) FROM hourly "
                        "WHERE node=? AND channel=? AND hour >= ? AND hour < ? "
                        "GROUP BY b ORDER BY b",
                        (max(step, HOUR), max(step, HOUR), node, ch,
                         int(t0 // HOUR * HOUR), t1)).fetchall()
                out[ch] = [[b, _tidy(v)] for b, v in rows]
        return out

    def consumption(self, node: str, channel: str, t0: float, t1: float,
                    period: int = DAY) -> list[list[float]]:
        """[[period start, used], ...]: the difference of the meter's total between the end of
        one period and the end of the one before (the last total seen up to then), so a
        reading lost in between changes nothing but where the step shows."""
        with self.lock:
            rows = self.db.execute(
                "SELECT hour, last FROM hourly WHERE node=? AND channel=? AND hour < ? "
                "ORDER BY hour", (node, channel, t1)).fetchall()
        out = []
        previous = None
        ends: dict[int, float] = {}
        for hour, last in rows:
            ends[int(hour // period * period)] = last  # the last total of each period
        for start in sorted(ends):
            if previous is not None and start >= t0:
                out.append([start, _tidy(ends[start] - previous)])
            previous = ends[start]
        return out


class HistorySink(Sink):
    """Writes readings into the history database; see the module docstring."""

    name = "history"
    background = True  # plots can wait a second; the nodes' acknowledgements cannot

    def __init__(self, config, *, clock=time.time) -> None:
        super().__init__(config)
        o = config.options
        self.path = Path(o["path"])
        self.raw_days = o["raw_days"]
        self.hourly_days = o["hourly_days"]
        self.clock = clock
        self.db: sqlite3.Connection | None = None
        self._pruned = 0.0
        self.too_late = 0

    def open(self) -> None:
        try:
            self.db = connect(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise SinkError(f"cannot open history {self.path}: {exc}") from exc

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    @staticmethod
    def convert(item) -> list[tuple[str, str, float, float]]:
        """(node, channel, t, v) of each numeric value of a reading item; alarm events and
        boolean or text values have no place in a plot."""
        if item.kind != "reading":
            return []
        out = []
        for rec in item.body:
            v, t = rec.get("v"), rec["t"]
            if type(v) not in (int, float) or not math.isfinite(v):
                if "v" in rec:
                    raise ValueError(f"{rec['n']}: v {v!r} is not a finite number")
                continue
            if type(t) not in (int, float) or not math.isfinite(t):
                raise ValueError(f"{rec['n']}: t {t!r} is not a time")
            out.append((item.node, channel_of(rec["n"]), float(t), float(v)))
        return out

    def deliver(self, batch: Batch) -> None:
        if self.db is None:
            self.open()
        rows = [r for rows in convert_each(batch, self.convert) for r in rows]
        now = self.clock()
        oldest = now - self.raw_days * DAY
        fresh = [r for r in rows if r[2] >= oldest]
        if len(fresh) < len(rows):
            self.too_late += len(rows) - len(fresh)
            log.warning("history_too_late", extra=kv(values=len(rows) - len(fresh),
                                                     raw_days=self.raw_days))
        hours = {(node, ch, int(t // HOUR * HOUR)) for node, ch, t, _ in fresh}
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR IGNORE INTO raw(node, channel, t, v) VALUES (?, ?, ?, ?)",
                           fresh)
            for node, ch, hour in hours:
                self._aggregate(node, ch, hour)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise DeliveryFailed(f"history {self.path}: {exc}") from exc
        if now - self._pruned >= PRUNE_EVERY_S:
            self.prune(now)

    def _aggregate(self, node: str, ch: str, hour: int) -> None:
        """The hour's aggregate, recomputed from its raw values (idempotent)."""
        self.db.execute(
            "INSERT OR REPLACE INTO hourly(node, channel, hour, n, mean, lo, hi, first, last) "
            "SELECT ?, ?, ?, COUNT(*), AVG(v), MIN(v), MAX(v), "
            "(SELECT v FROM raw WHERE node=?1 AND channel=?2 AND t >= ?3 AND t < ?3 + 3600 "
            " ORDER BY t LIMIT 1), "
            "(SELECT v FROM raw WHERE node=?1 AND channel=?2 AND t >= ?3 AND t < ?3 + 3600 "
            " ORDER BY t DESC LIMIT 1) "
            "FROM raw WHERE node=?1 AND channel=?2 AND t >= ?3 AND t < ?3 + 3600",
            (node, ch, hour))

    def prune(self, now: float) -> None:
        """Raw values past `raw_days`, hourly aggregates past `hourly_days`."""
        self._pruned = now
        try:
            raw = self.db.execute("DELETE FROM raw WHERE t < ?",
                                  (now - self.raw_days * DAY,)).rowcount
            hourly = self.db.execute("DELETE FROM hourly WHERE hour < ?",
                                     (now - self.hourly_days * DAY,)).rowcount
        except sqlite3.Error as exc:
            log.warning("history_prune_failed", extra=kv(error=str(exc)))
            return
        if raw or hourly:
            log.info("history_pruned", extra=kv(raw=raw, hourly=hourly))
