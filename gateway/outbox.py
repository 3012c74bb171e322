"""The outbox: the gateway's durable store, one SQLite database in WAL mode.

    box = Outbox(path, sinks=["file", "http"])   # opens, migrates, returns ready
    with box.transaction():
        box.add_reading(node, seq, time, records, now)   # new records of a decoded message
    batch = box.claim_batch("http", max_records=500, max_bytes=1 << 20)
    box.confirm(batch)                             # the sink took it: it leaves the outbox

What it holds (schema in `MIGRATIONS`, version in `PRAGMA user_version`):

    items        what is waiting for delivery: new records of a reading message (kind
                 "records": the decoded records, `seq` its first new record; kind "message",
                 the message's CBOR bytes, from gateways before 2026-12), an alarm event
                 ("event"), or resolved SenML records queued again from a dead letter
                 ("reading")
    pending      one row per (sink, item) not yet confirmed by that sink
    batches      claimed batches with their idempotency key (a retry reuses key and content)
                 and their range of the sink's pending items, `first`..`last`
    gaps         per node, the missing sequence ranges between the lowest and highest seq
                 accepted (`nodes.min_seq`, `nodes.max_seq`): together they are the dedup
                 index, which survives restarts and grows with gaps, not with readings
    quarantine   every rejected message: raw bytes, topic, reason, offset, detail
    deadletters  batches a sink rejected for good (4xx), with the reply body

and, through the table classes it makes on its connection (gateway/store/, which says why):

    nodes, node_log       the registry and each node's status history    `box.nodes`
    node_journal          the registry's hot state per batch, until it is in `nodes`
    alarms, alarm_log     per node and alarm: active or not; each raise   `box.alarms`
    downlinks             config updates and commands sent, and the acks  `box.downlinks`

This module and gateway/store/ are the only code that runs SQL on this database: the
registry, ingest, the API, metrics and the CLI call methods (tests/test_gw_imports.py checks).
`db` (the connection) and `query()` are for tests and tools that inspect the file.

Durability: `synchronous=FULL` in WAL mode, so a committed transaction survives a power cut;
the gateway acknowledges MQTT messages only after the transaction holding them committed.
Many messages share one transaction (the ingest thread batches them), which is what makes
the fsync affordable.

Why SQLite and not a queue library: it is in the standard library, a single file an operator
can inspect with `sqlite3`, and its transactions give dedup, outbox and registry one commit.

Each thread opens its own `Outbox` on the same file (sqlite3 connections are not shared
between threads); WAL lets readers run while one writer commits, and `busy_timeout` makes the
writers wait for each other instead of failing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import marshal
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence


from gateway.channels import ChannelTable, default_table
from gateway.errors import SinkError
from gateway.logfmt import kv
from gateway.store import dicts
from gateway.store.alarms import AlarmTable
from gateway.store.downlinks import DownlinkTable
from gateway.store.nodes import NodeTable
from gateway.errors import WireError
from gateway.wire import Reading, Record, Resolved, Resolver, decode_reading

log = logging.getLogger("meterlink.gateway.outbox")

BUSY_TIMEOUT_MS = 30_000
WAL_LIMIT_BYTES = 16 << 20  # the -wal file is truncated to this after a checkpoint
BEGIN_RETRY_S = 0.0005  # between attempts to begin a write transaction (see `_begin`)

# Versioned migrations: MIGRATIONS[i] takes the schema from version i to i + 1. Never edit a
# released entry; append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE items(
        id INTEGER PRIMARY KEY, kind TEXT NOT NULL, node TEXT NOT NULL, seq INTEGER,
        created REAL NOT NULL, body TEXT NOT NULL);
    CREATE TABLE pending(
        sink TEXT NOT NULL, item INTEGER NOT NULL, batch INTEGER, bytes INTEGER NOT NULL,
        created REAL NOT NULL, PRIMARY KEY(sink, item)) WITHOUT ROWID;
    CREATE INDEX pending_batch ON pending(sink, batch);
    CREATE TABLE batches(
        id INTEGER PRIMARY KEY, sink TEXT NOT NULL, key TEXT NOT NULL UNIQUE,
        created REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT);
    CREATE TABLE seen(
        node TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL,
        PRIMARY KEY(node, seq)) WITHOUT ROWID;
    CREATE INDEX seen_at ON seen(at);
    CREATE TABLE gaps(
        node TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL,
        PRIMARY KEY(node, first)) WITHOUT ROWID;
    CREATE TABLE nodes(
        node TEXT PRIMARY KEY, registered INTEGER NOT NULL DEFAULT 0, board TEXT,
        sensors TEXT, grp TEXT, interval_s INTEGER, first_seen REAL, last_seen REAL,
        last_reading REAL, state TEXT, fw TEXT, boot INTEGER, sleep INTEGER,
        battery_mv INTEGER, rssi INTEGER, q INTEGER, qd INTEGER, iv INTEGER, cv INTEGER,
        max_seq INTEGER, accepted INTEGER NOT NULL DEFAULT 0,
        duplicates INTEGER NOT NULL DEFAULT 0, last_values TEXT, status TEXT);
    CREATE TABLE alarms(
        node TEXT NOT NULL, alarm TEXT NOT NULL, active INTEGER NOT NULL,
        raised_at REAL, cleared_at REAL, detail TEXT, PRIMARY KEY(node, alarm));
    CREATE TABLE quarantine(
        id INTEGER PRIMARY KEY, at REAL NOT NULL, topic TEXT NOT NULL, payload BLOB,
        reason TEXT NOT NULL, offset INTEGER, detail TEXT);
    CREATE TABLE deadletters(
        id INTEGER PRIMARY KEY, at REAL NOT NULL, sink TEXT NOT NULL, batch_key TEXT,
        status INTEGER, reply TEXT, body TEXT NOT NULL);
    CREATE TABLE downlinks(
        id INTEGER PRIMARY KEY, node TEXT NOT NULL, kind TEXT NOT NULL, request_id TEXT,
        body TEXT NOT NULL, sent_at REAL NOT NULL, deadline REAL NOT NULL, acked_at REAL,
        ok INTEGER, reply TEXT);
    CREATE INDEX downlinks_req ON downlinks(node, request_id);
    """,
    # 2: releasing a batch asks "is this item still pending for another sink?" by item
    """
    CREATE INDEX pending_item ON pending(item);
    """,
    # 3: dedup by sequence ranges (min_seq, max_seq and the gaps) instead of one row per
    # record: the index no longer grows with every reading
    """
    ALTER TABLE nodes ADD COLUMN min_seq INTEGER;
    UPDATE nodes SET min_seq = (SELECT MIN(seq) FROM seen WHERE seen.node = nodes.node);
    DROP TABLE seen;
    """,
    # 4: a reading message is stored as it came (kind "message", body: its CBOR payload) and
    # resolved to SenML when a sink claims it; `records` is how many records a pending row
    # holds, which is what `batch_max_records` counts
    """
    ALTER TABLE pending ADD COLUMN records INTEGER NOT NULL DEFAULT 1;
    """,
    # 5: why a dead letter is there: "rejected" (the upstream refused the batch, `status` and
    # `reply` say how) or "unconvertible" (the sink could not put the item in its format,
    # `reply` says why); `replayed` counts the times it was queued again
    """
    ALTER TABLE deadletters ADD COLUMN reason TEXT NOT NULL DEFAULT 'rejected';
    ALTER TABLE deadletters ADD COLUMN replayed INTEGER NOT NULL DEFAULT 0;
    """,
    # 6: a node taken out of service (`retired_at`, with the operator's note): its messages
    # are quarantined as "retired", its dedup state (min_seq, max_seq, gaps) stays
    """
    ALTER TABLE nodes ADD COLUMN retired_at REAL;
    ALTER TABLE nodes ADD COLUMN retired_note TEXT;
    """,
    # 7: the alarms' history (each raise a row, cleared and acknowledged with who, when and a
    # note), a node's status history (state changes, reboots, firmware), and where a node is
    # (coordinates, district, shown on the public page or not)
    """
    CREATE TABLE alarm_log(
        id INTEGER PRIMARY KEY, node TEXT NOT NULL, alarm TEXT NOT NULL,
        raised_at REAL NOT NULL, cleared_at REAL, detail TEXT, acked_at REAL, acked_by TEXT,
        ack_note TEXT);
    CREATE INDEX alarm_log_node ON alarm_log(node, alarm, cleared_at);
    CREATE INDEX alarm_log_raised ON alarm_log(raised_at);
    INSERT INTO alarm_log(node, alarm, raised_at, cleared_at, detail)
        SELECT node, alarm, raised_at, cleared_at, detail FROM alarms
        WHERE raised_at IS NOT NULL ORDER BY raised_at;
    CREATE TABLE node_log(
        id INTEGER PRIMARY KEY, node TEXT NOT NULL, at REAL NOT NULL, event TEXT NOT NULL,
        detail TEXT);
    CREATE INDEX node_log_node ON node_log(node, at);
    ALTER TABLE nodes ADD COLUMN lat REAL;
    ALTER TABLE nodes ADD COLUMN lon REAL;
    ALTER TABLE nodes ADD COLUMN district TEXT;
    ALTER TABLE nodes ADD COLUMN public INTEGER NOT NULL DEFAULT 0;
    """,
    # 8: the registry's hot state (dedup range, last seen, counts) of the nodes a batch
    # touched, as one row per batch; written into `nodes` every few seconds (gateway/
    # registry.py says why), and at start after a crash
    """
    CREATE TABLE node_journal(id INTEGER PRIMARY KEY, body TEXT NOT NULL);
    """,
    # 9: new readings are stored as their decoded records (kind "records", `marshal` bytes),
    # no longer as the message's CBOR bytes (kind "message", still read). Nothing to change
    # in the tables: the version tells an older gateway, which cannot read such items, to
    # stop instead of failing on each batch
    "",
    # 10: a claimed batch is the range `first`..`last` of its sink's pending items (the head
    # of the sink's backlog when it was claimed; no item joins that range later), no longer a
    # `batch` mark on each pending row: claiming wrote every row of the batch and an index
    # that each stored message also paid for. (`pending.batch` stays, unused.)
    """
    ALTER TABLE batches ADD COLUMN first INTEGER;
    ALTER TABLE batches ADD COLUMN last INTEGER;
    UPDATE batches SET
        first = (SELECT MIN(item) FROM pending p WHERE p.sink = batches.sink
                 AND p.batch = batches.id),
        last = (SELECT MAX(item) FROM pending p WHERE p.sink = batches.sink
                AND p.batch = batches.id);
    DROP INDEX pending_batch;
    """,
]


SCHEMA_VERSION = len(MIGRATIONS)
# SenML bytes of one value besides the node id, for batch sizing of stored records:
# {"n":"<node>:temperature","u":"Cel","v":21.53,"t":1763712000}
SENML_BYTES = 48

_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_new = tuple.__new__  # a NamedTuple made without its Python-level __new__ (per record)
_GAP_SQL = "INSERT INTO gaps(node, first, last) VALUES (?, ?, ?)"
_PENDING_SQL = "INSERT INTO pending(sink, item, bytes, created) VALUES (?, ?, ?, ?)"
_MESSAGE_SQL = "INSERT INTO items(id, kind, node, seq, created, body) VALUES "
_MESSAGE_ROW = "(?, 'records', ?, ?, ?, ?)"
_MESSAGE_PENDING_SQL = "INSERT INTO pending(sink, item, bytes, created, records) VALUES "
_MESSAGE_PENDING_ROW = "(?, ?, ?, ?, ?)"
_CHUNKS = (64, 16, 4, 1)  # rows per INSERT statement: few distinct statements to prepare
_MARSHAL = 4  # marshal's format version 4 (Python 3.4 on): every later Python reads it


def _insert_rows(db: sqlite3.Connection, head: str, row: str, rows: list[tuple]) -> None:
    """Inserts `rows` with multi-row INSERT statements of `_CHUNKS` rows.

    One statement for 64 rows instead of `executemany`'s one step per row: the sqlite3
    module lets other threads run around every step, and on the ingest path each such
    hand-over is a thread switch with paho's network thread.
    """
    at = 0
    for size in _CHUNKS:
        sql = None
        while len(rows) - at >= size:
            if sql is None:
                sql = head + ",".join([row] * size)
            db.execute(sql, [v for r in rows[at:at + size] for v in r])
            at += size


class Item(NamedTuple):
    """One thing to deliver: `kind` "reading" (body: list of SenML dicts) or "event".

    A stored "message" item (new records of one reading message) is handed out by
    `claim_batch` as one "reading" item per record, all with the stored item's `id`. (A
    tuple: sinks get one per record.)
    """

    id: int
    kind: str
    node: str
    seq: int | None
    created: float
    body: Any


@dataclass(frozen=True, slots=True)
class Batch:
    """Items claimed by one sink under one idempotency key; `attempts` made so far."""

    id: int
    sink: str
    key: str
    created: float
    attempts: int
    items: tuple[Item, ...]


class Outbox:
    """One connection to the outbox database (use one per thread)."""

    def __init__(self, path: str | Path, *, sinks: Sequence[str] = (),
                 clock=time.time, table: ChannelTable | None = None) -> None:
        self.path = Path(path)
        self.sinks = tuple(sinks)
        self._clock = clock
        self._table = table
        self._resolver: Resolver | None = None
        self._messages: list[tuple[str, int, float, int, Sequence[Record], int]] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30,
                                      check_same_thread=False)
            self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise SinkError(f"outbox {self.path}: cannot use WAL mode (got {mode})")
            self.db.execute("PRAGMA synchronous=FULL")
            # the WAL is reused after each checkpoint; this cuts it back when it grew past it
            self.db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            self._migrate()
        except sqlite3.Error as exc:
            raise SinkError(f"cannot open outbox {self.path}: {exc}") from exc
        self.nodes = NodeTable(self.db)
        self.alarms = AlarmTable(self.db)
        self.downlinks = DownlinkTable(self.db)

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r}, sinks={list(self.sinks)})"

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()

    # ---- schema -----------------------------------------------------------------------------

    def _migrate(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SinkError(f"outbox {self.path} has schema version {version}, this gateway "
                                f"knows up to {SCHEMA_VERSION}: use a newer gateway")
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version={number + 1}")
                log.info("outbox_migrated", extra=kv(path=str(self.path), version=number + 1))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    @property
    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def _begin(self) -> None:
        """BEGIN IMMEDIATE, waiting up to `BUSY_TIMEOUT_MS` for another writer.

        SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20... ms between attempts, so a
        writer that finds the ingest thread or a sink committing often sleeps many times
        longer than the other transaction lasts (tens of ms on the ingest path, with the
        broker waiting for PUBACKs). Here the lock is tried every `BEGIN_RETRY_S` instead.
        """
        db = self.db
        db.execute("PRAGMA busy_timeout=0")
        try:
            deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
            while True:
                try:
                    db.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    busy = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY \
                        or "locked" in str(exc)
                    if not busy or time.monotonic() >= deadline:
                        raise
                time.sleep(BEGIN_RETRY_S)
        finally:
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (BEGIN IMMEDIATE .. COMMIT); SinkError if it cannot commit."""
        try:
            self._begin()
        except sqlite3.Error as exc:
            raise SinkError(f"outbox {self.path}: cannot begin: {exc}") from exc
        try:
            yield
            self.flush_messages()
        except BaseException:
            self._messages.clear()
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            raise
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            raise SinkError(f"outbox {self.path}: cannot commit: {exc}") from exc

    def savepoint(self) -> None:
        """Opens savepoint `m` inside the transaction, after writing the messages collected
        so far (so that rolling back to it touches what came after only). Ingest's careful
        rerun puts one around each message."""
        self.flush_messages()
        self.db.execute("SAVEPOINT m")

    def rollback_savepoint(self) -> None:
        """Undoes what was written since `savepoint()`, and forgets the messages collected
        since; the savepoint stays open (`release_savepoint` ends it)."""
        self.db.execute("ROLLBACK TO m")
        self.drop_messages()

    def release_savepoint(self) -> None:
        self.db.execute("RELEASE m")

    # ---- ingest side (inside a transaction) -------------------------------------------------

    def add_item(self, kind: str, node: str, seq: int | None, body: Any, now: float,
                 sinks: Sequence[str] | None = None) -> int:
        """Stores one item and makes it pending for every sink (or `sinks`)."""
        if self._messages:
            self.flush_messages()  # keep items in the order they came
        text = _encode(body)
        cur = self.db.execute("INSERT INTO items(kind, node, seq, created, body) "
                              "VALUES (?, ?, ?, ?, ?)", (kind, node, seq, now, text))
        item = cur.lastrowid
        targets = sinks or self.sinks
        if len(targets) == 1:
            self.db.execute(_PENDING_SQL, (targets[0], item, len(text), now))
        else:
            self.db.executemany(_PENDING_SQL, [(s, item, len(text), now) for s in targets])
        return item

    def add_reading(self, node: str, seq: int, time_value: int, records: Sequence[Record],
                    now: float) -> int:
        """Stores new records of one reading message of `node`, pending for every sink:
        `records`, a run of the message's records (the record shape `wire.decode_reading`
        made), the first with seq `seq`; `time_value` the message's time as sent. `now` is
        when it came, the anchor of a relative time. Returns how many channel values the
        records hold.

        The body is `marshal` bytes of `(time_value, [(elapsed, {key: value}), ...])`: the
        record shape itself, which the sinks read back without decoding the message again
        (0.4 us a message against 5.6 for the CBOR decoder and its checks), at a cost of
        1-3 us a message here. Rows are written by one statement per batch
        (`flush_messages`, which the transaction runs before its commit), not one per
        message: this is the ingest hot path.
        """
        values = 0
        for rec in records:
            values += len(rec.values)
        self._messages.append((node, seq, now, time_value, records,
                               values * (len(node) + SENML_BYTES)))
        return values

    def flush_messages(self) -> None:
        """Writes the readings `add_reading` collected (inside the transaction)."""
        rows = self._messages
        if not rows:
            return
        self._messages = []
        first = self.db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM items").fetchone()[0]
        dumps = marshal.dumps
        _insert_rows(self.db, _MESSAGE_SQL, _MESSAGE_ROW,
                     [(first + i, node, seq, now,
                       dumps((time_value, [(e, v) for e, v in records]), _MARSHAL))
                      for i, (node, seq, now, time_value, records, _) in enumerate(rows)])
        _insert_rows(self.db, _MESSAGE_PENDING_SQL, _MESSAGE_PENDING_ROW,
                     [(sink, first + i, size, now, len(records))
                      for i, (_, _, now, _, records, size) in enumerate(rows)
                      for sink in self.sinks])

    def drop_messages(self) -> None:
        """Forgets the messages added since the last `flush_messages` (the savepoint they
        belong to was rolled back)."""
        self._messages.clear()

    def accept_seq(self, node: str, seq: int, lo: int | None,
                   hi: int | None) -> tuple[bool, int, int, int]:
        """Dedup and gap tracking for one record of `node`.

        `lo`, `hi`: the lowest and highest seq accepted so far (None: nothing yet); every seq
        between them was accepted unless it lies in one of the node's gaps. Returns
        `(new, lo, hi, change in the count of missing seqs)`; a new seq fills its gap or
        widens the range, recording the seqs it jumps over as a gap.
        """
        if hi is None or lo is None:
            return True, seq, seq, 0
        if seq > hi:
            if seq > hi + 1:
                self.db.execute(_GAP_SQL, (node, hi + 1, seq - 1))
            return True, lo, seq, seq - hi - 1
        if seq < lo:
            if seq < lo - 1:
                self.db.execute(_GAP_SQL, (node, seq + 1, lo - 1))
            return True, seq, hi, lo - seq - 1
        gap = self.db.execute("SELECT first, last FROM gaps WHERE node=? AND first<=? "
                              "ORDER BY first DESC LIMIT 1", (node, seq)).fetchone()
        if gap is None or gap[1] < seq:
            return False, lo, hi, 0  # accepted before: a duplicate
        first, last = gap
        self.db.execute("DELETE FROM gaps WHERE node=? AND first=?", (node, first))
        if first <= seq - 1:
            self.db.execute("INSERT INTO gaps VALUES (?, ?, ?)", (node, first, seq - 1))
        if seq + 1 <= last:
            self.db.execute("INSERT INTO gaps VALUES (?, ?, ?)", (node, seq + 1, last))
        return True, lo, hi, -1

    def take_range(self, node: str, first: int, last: int, lo: int | None,
                   hi: int | None) -> tuple[int, int, int]:
        """Seqs `first`..`last` of `node` were taken by another gateway instance
        (gateway/seen.py): `accept_seq` for a whole range, without readings. Returns `(lo, hi,
        change in the count of missing seqs)`."""
        if hi is None or lo is None:
            return first, last, 0
        delta = 0
        if first > hi + 1:
            self.db.execute(_GAP_SQL, (node, hi + 1, first - 1))
            delta += first - hi - 1
        if last < lo - 1:
            self.db.execute(_GAP_SQL, (node, last + 1, lo - 1))
            delta += lo - last - 1
        if first <= hi and last >= lo:  # inside the range so far: fills what it overlaps
            for a, b in self.db.execute("SELECT first, last FROM gaps WHERE node=? AND "
                                        "first<=? AND last>=?", (node, last, first)).fetchall():
                self.db.execute("DELETE FROM gaps WHERE node=? AND first=?", (node, a))
                if a < first:
                    self.db.execute(_GAP_SQL, (node, a, first - 1))
                if b > last:
                    self.db.execute(_GAP_SQL, (node, last + 1, b))
                delta -= min(b, last) - max(a, first) + 1
        return min(lo, first), max(hi, last), delta

    def add_gap(self, node: str, first: int, last: int) -> None:
        """Seqs `first`..`last` of `node` are missing (ingest: a message past the node's
        highest seq, its dedup state kept in memory)."""
        self.db.execute(_GAP_SQL, (node, first, last))

    def quarantine(self, topic: str, payload: bytes, reason: str, offset: int | None,
                   detail: str, now: float, *, keep: int) -> None:
        self.db.execute("INSERT INTO quarantine(at, topic, payload, reason, offset, detail) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (now, topic, payload, reason, offset,
                                                      detail))
        if keep:
            self.db.execute("DELETE FROM quarantine WHERE id <= "
                            "(SELECT MAX(id) FROM quarantine) - ?", (keep,))

    # ---- sink side --------------------------------------------------------------------------

    def claim_batch(self, sink: str, *, max_records: int, max_bytes: int,
                    after: int | None = None) -> Batch | None:
        """The sink's oldest open batch (a retry: same key, same items; or one cut ahead),
        else a new one, else None.

        With `after` (the id of a batch in flight): the oldest open batch newer than it, else
        a new one cut behind every open batch, only when the backlog fills it (a partial
        batch waits for its age as usual). A sink claims its next batch so while the
        upstream answers the one before (`gateway.batcher`)."""
        with self.transaction():
            row = self.db.execute("SELECT id, key, created, attempts, first, last FROM batches "
                                  "WHERE sink=? AND id>? ORDER BY id LIMIT 1",
                                  (sink, after or 0)).fetchone()
            if row is None:
                row = self._cut(sink, max_records, max_bytes, full_only=after is not None)
                if row is None:
                    return None
            items = self.db.execute(
                "SELECT i.id, i.kind, i.node, i.seq, i.created, i.body, p.records FROM pending p "
                "JOIN items i ON i.id = p.item WHERE p.sink=? AND p.item BETWEEN ? AND ? "
                "ORDER BY p.item", (sink, row[4], row[5])).fetchall()
        out: list[Item] = []
        for r in items:
            if r[1] == "records" or r[1] == "message":
                out.extend(self._resolve(*r))
            else:
                out.append(Item(id=r[0], kind=r[1], node=r[2], seq=r[3], created=r[4],
                                body=json.loads(r[5])))
        return Batch(id=row[0], sink=sink, key=row[1], created=row[2], attempts=row[3],
                     items=tuple(out))

    def _cut(self, sink: str, max_records: int, max_bytes: int, *,
             full_only: bool = False) -> tuple | None:
        """Opens the sink's next batch: the head of its pending items behind its open
        batches, in item order, up to either limit (at least one item). With `full_only`, only
        when that head reaches a limit. Returns the batch row (id, key, created, attempts,
        first, last) or None."""
        # every pending item up to the last open batch's `last` is in an open batch: items
        # only join the outbox at its end (ids grow), and leave it by whole batches
        rows = self.db.execute("SELECT item, bytes, records FROM pending WHERE sink=? AND item>"
                               "(SELECT COALESCE(MAX(last), 0) FROM batches WHERE sink=?) "
                               "ORDER BY item LIMIT ?", (sink, sink, max_records))
        chosen, total, count = [], 0, 0
        full = False
        for item, size, records in rows:  # stepped as read: a batch's items, not the limit's
            if chosen and (total + size > max_bytes or count + records > max_records):
                full = True
                break
            chosen.append(item)
            total += size
            count += records
        rows.close()
        if not chosen or (full_only and not (full or count >= max_records
                                             or total >= max_bytes)):
            return None
        now = self._clock()
        key = uuid.uuid4().hex
        # `chosen` is the head of the sink's pending items behind its open batches, in item
        # order: the batch is their range
        cur = self.db.execute("INSERT INTO batches(sink, key, created, first, last) "
                              "VALUES (?, ?, ?, ?, ?)", (sink, key, now, chosen[0], chosen[-1]))
        return cur.lastrowid, key, now, 0, chosen[0], chosen[-1]

    def _resolve(self, item: int, kind: str, node: str, seq: int, created: float,
                 body: bytes, count: int) -> list[Item]:
        """A stored reading's `count` records from seq `seq` as one "reading" item each,
        resolved to SenML by the gateway's one resolver. A body that cannot be read (a
        damaged file) becomes one item no sink can convert, which the batcher dead-letters
        with the reason: the items behind it go on."""
        if self._resolver is None:
            self._resolver = Resolver(self._table or default_table())
        try:
            if kind == "records":
                time_value, records = marshal.loads(body)
                reading = _new(Reading, (seq, time_value, records))
                if len(records) != count or type(time_value) is not int:
                    raise ValueError(f"{len(records)} records stored, {count} expected")
            else:  # the CBOR bytes of the message (gateways before 2026-12)
                reading = decode_reading(body, self._resolver.table)
                if seq != reading.seq or count != len(reading.records):  # a run of its records
                    first = seq - reading.seq
                    reading = reading._replace(seq=seq,
                                               records=reading.records[first:first + count])
            senml = self._resolver.records(node, reading, received_at=int(created))
        except (WireError, ValueError, TypeError, EOFError, KeyError, AttributeError) as exc:
            problem = f"stored item {item} ({kind}) cannot be read: {type(exc).__name__}: {exc}"
            log.error("outbox_item_unreadable", extra=kv(item=item, node=node, seq=seq,
                                                         error=problem))
            stored = body.hex() if isinstance(body, bytes) else repr(body)[:4096]
            return [Item(item, "reading", node, seq, created,
                         {"unreadable": problem, "stored": stored})]
        return [_new(Item, (item, "reading", node, seq + i, created, records))
                for i, records in enumerate(senml)]

    def _release(self, batch: Batch) -> None:
        span = self.db.execute("SELECT first, last FROM batches WHERE id=?",
                               (batch.id,)).fetchone()
        if span is None:
            return
        self.db.execute("DELETE FROM pending WHERE sink=? AND item BETWEEN ? AND ?",
                        (batch.sink, *span))
        self.db.execute("DELETE FROM batches WHERE id=?", (batch.id,))
        # an item is stored with its pending rows in one transaction: one in the batch's range
        # that no sink has pending any more is done
        self.db.execute("DELETE FROM items WHERE id BETWEEN ? AND ? AND NOT EXISTS "
                        "(SELECT 1 FROM pending WHERE item=items.id)", span)

    def confirm(self, batch: Batch, poison: Sequence[tuple[Item, str]] = (), *,
                then_cut: tuple[int, int] | None = None) -> None:
        """The sink took the batch: it leaves the outbox for that sink. `poison` are the
        items the sink could not convert (left out of what it sent): dead letters, each with
        its reason, in the same transaction.

        `then_cut` (max_records, max_bytes): when the sink's backlog already fills a next
        batch, that batch is cut in the same transaction, and `claim_batch` hands it out. A
        draining sink then commits once a batch instead of twice: each commit waits for the
        disk (synchronous=FULL), 0.25 ms on a server's SSD and several ms on an SD card."""
        with self.transaction():
            self._poison(batch, poison)
            self._release(batch)
            if then_cut is not None:
                self._cut(batch.sink, *then_cut, full_only=True)

    def failed(self, batch: Batch, error: str) -> None:
        """A transient failure: count the attempt, keep the batch (same key) for the retry."""
        with self.transaction():
            self.db.execute("UPDATE batches SET attempts=attempts+1, last_error=? WHERE id=?",
                            (error[:500], batch.id))

    def dead_letter(self, batch: Batch, status: int | None, reply: str,
                    poison: Sequence[tuple[Item, str]] = ()) -> None:
        """A permanent reject: the batch moves to `deadletters` with the reply (its `poison`
        items, which were never sent, each to a letter of its own)."""
        bad = {id(item) for item, _ in poison}
        with self.transaction():
            self._poison(batch, poison)
            self._letter(batch, [it for it in batch.items if id(it) not in bad], "rejected",
                         status, reply)
            self._release(batch)

    def _poison(self, batch: Batch, poison: Sequence[tuple[Item, str]]) -> None:
        for item, reason in poison:
            self._letter(batch, [item], "unconvertible", None, reason)

    def _letter(self, batch: Batch, items: Sequence[Item], reason: str, status: int | None,
                reply: str) -> None:
        if not items:
            return
        body = json.dumps([{"kind": it.kind, "node": it.node, "seq": it.seq,
                            "body": it.body.records() if type(it.body) is Resolved else it.body}
                           for it in items], separators=(",", ":"))
        self.db.execute("INSERT INTO deadletters(at, sink, batch_key, status, reply, body, "
                        "reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (self._clock(), batch.sink, batch.key, status, reply[:65536], body,
                         reason))

    def replay(self, letter: int, *, again: bool = False,
               sinks: Sequence[str] | None = None) -> tuple[str, int]:
        """Queues dead letter `letter` again for its sink (the platform was fixed): its items
        go back to the outbox, pending for that sink only, and the letter is marked replayed.
        Returns (sink, items queued). KeyError when there is no such letter; ValueError when
        its sink is not among `sinks` (the configured ones), when it was replayed before (unless `again`: the platform then sees its records twice and
        must dedup them by `rid`) or holds a value JSON cannot carry."""
        with self.transaction():
            row = self.db.execute("SELECT sink, body, replayed FROM deadletters WHERE id=?",
                                  (letter,)).fetchone()
            if row is None:
                raise KeyError(letter)
            sink, body, replayed = row
            if sinks is not None and sink not in sinks:
                raise ValueError(f"dead letter {letter} is for sink {sink!r}, which is not "
                                 f"configured (sinks: {', '.join(sinks)})")
            if replayed and not again:
                raise ValueError(f"dead letter {letter} was replayed {replayed} time(s) "
                                 "already; replaying it again sends its records twice")
            now = self._clock()
            items = json.loads(body)
            for it in items:
                self.add_item(it["kind"], it["node"], it["seq"], it["body"], now, sinks=[sink])
            self.db.execute("UPDATE deadletters SET replayed=replayed+1 WHERE id=?", (letter,))
        return sink, len(items)

    def has_open_batch(self, sink: str) -> bool:
        """A batch claimed by `sink` and not yet confirmed, failed for good or released."""
        return self.db.execute("SELECT 1 FROM batches WHERE sink=? LIMIT 1",
                               (sink,)).fetchone() is not None

    def backlog(self, sink: str, *, head: int | None = None) -> tuple[int, int, float | None]:
        """(records, bytes, created time of the oldest) waiting for `sink` (an event counts
        as one record); with `head`, of its first `head` unclaimed items only, which is what
        deciding to cut a batch needs, and costs the same however long the backlog is."""
        if head is None:
            row = self.db.execute("SELECT COALESCE(SUM(records), 0), COALESCE(SUM(bytes), 0), "
                                  "MIN(created) FROM pending WHERE sink=?", (sink,)).fetchone()
        else:
            row = self.db.execute(
                "SELECT COALESCE(SUM(records), 0), COALESCE(SUM(bytes), 0), MIN(created) "
                "FROM (SELECT records, bytes, created FROM pending WHERE sink=? AND item > "
                "(SELECT COALESCE(MAX(last), 0) FROM batches WHERE sink=?) ORDER BY item "
                "LIMIT ?)", (sink, sink, head)).fetchone()
        return row[0], row[1], row[2]

    # ---- inspection -------------------------------------------------------------------------

    def size_bytes(self) -> int:
        """Bytes of data the outbox holds: its pages in use, as this connection sees the
        database (the WAL's newer pages included). What `[outbox] max_bytes` bounds. SQLite
        reuses the pages of deleted rows and never shrinks the file by itself, so the file's
        size (`file_bytes`) stays at its largest and would keep a drained outbox "full"."""
        return self.db.execute(
            "SELECT (c.page_count - f.freelist_count) * s.page_size FROM pragma_page_count() c, "
            "pragma_freelist_count() f, pragma_page_size() s").fetchone()[0]

    def file_bytes(self) -> int:
        """Disk taken by the database file and its WAL."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    def query(self, sql: str,
              args: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        """Rows of any statement as dicts: for tests and tools inspecting the file, not for
        the gateway's modules (they call the methods)."""
        return dicts(self.db.execute(sql, args))

    def gaps(self, node: str | None = None) -> list[tuple[str, int, int]]:
        if node is None:
            return self.db.execute("SELECT node, first, last FROM gaps ORDER BY node, first"
                                   ).fetchall()
        return self.db.execute("SELECT node, first, last FROM gaps WHERE node=? ORDER BY first",
                               (node,)).fetchall()

    def missing(self) -> dict[str, int]:
        """How many seqs of each node with gaps are missing."""
        return missing_per_node(self.gaps())

    def missing_of(self, node: str) -> int:
        """How many seqs of `node` are missing (in its gaps)."""
        return self.db.execute("SELECT COALESCE(SUM(last-first+1), 0) FROM gaps "
                               "WHERE node=?", (node,)).fetchone()[0]

    def item_count(self) -> int:
        """Items not yet delivered to every sink (a stored message is one item)."""
        return self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def backlogs(self) -> list[tuple[str, int, float]]:
        """(sink, records waiting, created time of the oldest) of every sink with a backlog."""
        return self.db.execute("SELECT sink, COALESCE(SUM(records), 0), MIN(created) "
                               "FROM pending GROUP BY sink").fetchall()

    def quarantine_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]

    def dead_letter_counts(self) -> list[tuple[str, int]]:
        """(sink, dead letters)."""
        return self.db.execute("SELECT sink, COUNT(*) FROM deadletters GROUP BY sink").fetchall()

    def quarantined(self, limit: int, *, reason: str | None = None, row_id: int | None = None,
                    before: int | None = None) -> list[dict[str, Any]]:
        """Quarantine rows, newest first: of one `reason`, or the one with id `row_id`; `before`:
        only ids below it (the next page)."""
        column, value = ("id", row_id) if row_id is not None else ("reason", reason)
        return self._listing("quarantine", limit, column, value, before)

    def dead_letters(self, limit: int, *, sink: str | None = None,
                     before: int | None = None) -> list[dict[str, Any]]:
        """Dead letters (`body`: the items as JSON text), newest first: of one `sink` or
        all; `before`: only ids below it (the next page)."""
        return self._listing("deadletters", limit, "sink", sink, before)

    def _listing(self, table: str, limit: int, column: str, value: Any,
                 before: int | None) -> list[dict[str, Any]]:
        where, args = ("", []) if value is None else (f"WHERE {column}=?", [value])
        if before is not None:
            where, args = f"{where} {'AND' if where else 'WHERE'} id<?", [*args, before]
        return dicts(self.db.execute(f"SELECT * FROM {table} {where} ORDER BY id DESC LIMIT ?",
                                     (*args, limit)))

    def dead_letter_ids(self, *, sink: str | None = None,
                        replayed: bool = True) -> list[int]:
        """Ids of the dead letters (of one `sink`), oldest first; without the ones replayed
        before unless `replayed`."""
        where, values = ("WHERE sink=?", [sink]) if sink else ("", [])
        cond = "" if replayed else ("AND " if where else "WHERE ") + "replayed=0"
        return [r[0] for r in self.db.execute(f"SELECT id FROM deadletters {where} {cond} "
                                              "ORDER BY id", values)]


def missing_per_node(gaps: Iterable[tuple[str, int, int]]) -> dict[str, int]:
    """How many seqs of each node are missing, out of gaps rows (node, first, last) as
    `Outbox.gaps` reads them."""
    out: dict[str, int] = {}
    for node, first, last in gaps:
        out[node] = out.get(node, 0) + last - first + 1
    return out
